"""Convolutional trunks for the encoders: IR-SE (ArcFace / pSp layout) and ResNet without max-pool.

Parameter names are those of the public checkpoints, so foreign weights map without renaming:

* ``IRSEBackbone``: ``input_layer.{0,1,2}``, ``body.{n}.shortcut_layer.*``, ``body.{n}.res_layer.*``
  and, for the ArcFace network, ``output_layer.{0,3,4}`` (TreB1eN ``model_ir_se50.pth``, pSp's ``Backbone``).
* ``ResNetBackbone``: ``conv1``, ``bn1``, ``relu`` (a PReLU), ``body.{n}`` = torchvision ``BasicBlock`` keys
  (pSp's ``ResNet*EncoderUsingLastLayerIntoW`` and HyperInverter's church encoders).

Both have four stages whose outputs have strides 2, 4, 8 and 16 w.r.t. the input, and both expose the
outputs of the last three stages as the FPN taps ``c1`` (stride 4), ``c2`` (stride 8) and ``c3`` (stride 16,
the final feature). For the official 256 px configs these are body indices 6, 20, 23 (IR-SE50) and 6, 12, 15
(ResNet-34), derived here from the stage structure so that tiny variants get the right taps too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config_base import MAX_LAYERS, SerializableConfig, check_count

BackboneKind = Literal["ir_se", "resnet"]

# Units per stage for the IR / IR-SE networks (pSp ``get_blocks``; 100 is CurricularFace's IR-101).
IR_UNITS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
# BasicBlocks per stage for torchvision ResNets.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
DEFAULT_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
DEFAULT_DEPTH: dict[str, int] = {"ir_se": 50, "resnet": 34}


class BackboneFeatures(NamedTuple):
    """The FPN taps of a backbone for an input ``[B,C,H,W]`` (``H``, ``W`` multiples of 16).

    ``c1: [B,C1,H/4,W/4]``, ``c2: [B,C2,H/8,W/8]``, ``c3: [B,C3,H/16,W/16]``; ``c3`` is the final trunk
    output. For a 256 input that is 64², 32² and 16².
    """

    c1: torch.Tensor
    c2: torch.Tensor
    c3: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        """The trunk's final feature ``[B,C3,H/16,W/16]`` (the same tensor as ``c3``)."""
        return self.c3


def _stage_config(
    units: Sequence[int] | None,
    widths: Sequence[int],
    table: dict[int, tuple[int, int, int, int]],
    depth: int | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if units is None:
        if depth not in table:
            raise ValueError(f"unknown depth {depth}; known: {sorted(table)} (or pass units=...)")
        units = table[depth]
    units, widths = tuple(int(u) for u in units), tuple(int(w) for w in widths)
    # Four stages give the strides 2/4/8/16 the FPN taps and the heads are built for.
    if len(units) != 4 or len(widths) != 4:
        raise ValueError(f"need exactly 4 stages, got units={units}, widths={widths}")
    check_count("units", units, MAX_LAYERS)
    if min(widths) < 1:
        raise ValueError(f"widths must be positive, got {widths}")
    return units, widths


class Backbone(nn.Module):
    """Common interface: a stem, a flat ``body`` of residual units, four stages, three FPN taps.

    Attributes: ``in_channels``; ``tap_indices`` (body indices after which c1, c2, c3 are taken);
    ``tap_channels`` (C1, C2, C3); ``out_channels`` (= C3); ``stride`` (16, the final feature's stride).
    """

    stride = 16
    body: nn.Sequential

    def _init_stages(self, *, in_channels: int, units: tuple[int, ...], widths: tuple[int, ...]) -> None:
        self.in_channels = in_channels
        self.units = units
        self.widths = widths
        stage_ends = [end - 1 for end in itertools.accumulate(units)]
        self.tap_indices: tuple[int, int, int] = (stage_ends[1], stage_ends[2], stage_ends[3])
        self.tap_channels: tuple[int, int, int] = (widths[1], widths[2], widths[3])
        self.out_channels = widths[3]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """``x: [B,in_channels,H,W]`` with ``H``, ``W`` positive multiples of 16."""
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected [B,{self.in_channels},H,W], got {tuple(x.shape)}"
        )
        h, w = x.shape[2:]
        assert h >= self.stride and w >= self.stride and h % self.stride == 0 and w % self.stride == 0, (
            f"input size {h}x{w} must be a positive multiple of {self.stride}"
        )

    def forward_taps(self, x: torch.Tensor) -> BackboneFeatures:
        """``x: [B,in_channels,H,W]`` -> ``BackboneFeatures``: c1 ``[B,C1,H/4,W/4]``, c2 /8, c3 /16."""
        self.check_input(x)
        x = self.stem(x)
        taps = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.tap_indices:
                taps.append(x)
        features = BackboneFeatures(*taps)
        b, _, h, w = features.c3.shape
        assert features.c3.shape == (b, self.out_channels, h, w), f"c3 {tuple(features.c3.shape)}"
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B,in_channels,H,W]`` -> final feature ``[B,out_channels,H/16,W/16]``."""
        self.check_input(x)
        return self.body(self.stem(x))


# ----------------------------------------------------------------------------------------------------------
# IR-SE


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (``fc1``, ``fc2``: 1x1 convs without bias)."""

    def __init__(self, *, channels: int, reduction: int = 16) -> None:
        super().__init__()
        # max(1, ..) keeps tiny widths (e.g. 8 channels) valid; equals channels // 16 for the official widths.
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class IRUnit(nn.Module):
    """One ``bottleneck_IR`` / ``bottleneck_IR_SE`` unit: ``res_layer(x) + shortcut_layer(x)``.

    ``res_layer`` = BN, conv3x3, PReLU, conv3x3 (stride ``stride``), BN[, SE]. The shortcut is a
    parameter-free ``MaxPool2d(1, stride)`` when the width is unchanged, else a strided 1x1 conv + BN. At stride 1
    that pool is the identity, and runs as one: as a pool it copied the map (full-size HyperInverter's E1 and E2 on a
    CPU: 15 ms less per image, alternating in one process).
    """

    def __init__(
        self, *, in_channels: int, out_channels: int, stride: int, se: bool = True, se_reduction: int = 16
    ) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if se:
            layers.append(SEModule(channels=out_channels, reduction=se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEBackbone(Backbone):
    """IR-SE trunk (ArcFace / pSp ``Backbone``): ``input_layer`` + ``body.{0..N-1}`` [+ ``output_layer``].

    ``input_layer`` is conv3x3 (``in_channels``->widths[0], stride 1, no bias), BN, PReLU; every stage starts
    with a stride-2 unit, so the final feature of a ``[B,C,256,256]`` input is ``[B,widths[3],16,16]``.

    With ``output_layer=True`` this is the ArcFace identity network (``model_ir_se50.pth``): BN2d, Dropout,
    Flatten, Linear(widths[3]·s·s -> embedding_dim) with ``s = embedding_input_size // 16``, BN1d; use
    :meth:`embed` on ``[B,3,112,112]`` faces. ``se=False`` gives the plain IR network (CurricularFace IR-101
    is ``depth=100, se=False, output_affine=False``).
    """

    def __init__(
        self,
        *,
        depth: int | None = 50,
        units: Sequence[int] | None = None,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        in_channels: int = 3,
        se: bool = True,
        se_reduction: int = 16,
        output_layer: bool = False,
        embedding_input_size: int = 112,
        embedding_dim: int = 512,
        drop_ratio: float = 0.6,
        output_affine: bool = True,
    ) -> None:
        super().__init__()
        units_t, widths_t = _stage_config(units, widths, IR_UNITS, depth)
        self._init_stages(in_channels=in_channels, units=units_t, widths=widths_t)
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, widths_t[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths_t[0]),
            nn.PReLU(widths_t[0]),
        )
        body: list[nn.Module] = []
        previous = widths_t[0]
        for n_units, width in zip(units_t, widths_t, strict=True):
            for i in range(n_units):
                body.append(
                    IRUnit(
                        in_channels=previous,
                        out_channels=width,
                        stride=2 if i == 0 else 1,
                        se=se,
                        se_reduction=se_reduction,
                    )
                )
                previous = width
        self.body = nn.Sequential(*body)

        self.embedding_input_size = embedding_input_size
        self.embedding_dim = embedding_dim
        if output_layer:
            assert embedding_input_size % self.stride == 0, "embedding_input_size must be a multiple of 16"
            side = embedding_input_size // self.stride
            self.output_layer: nn.Sequential | None = nn.Sequential(
                nn.BatchNorm2d(self.out_channels),
                nn.Dropout(drop_ratio),
                nn.Flatten(),
                nn.Linear(self.out_channels * side * side, embedding_dim),
                nn.BatchNorm1d(embedding_dim, affine=output_affine),
            )
        else:
            self.output_layer = None

    @classmethod
    def arcface(cls, *, depth: int = 50, drop_ratio: float = 0.6) -> IRSEBackbone:
        """The ArcFace identity network of ``model_ir_se50.pth`` (random weights; 112 px RGB faces, 512-d)."""
        return cls(depth=depth, output_layer=True, embedding_input_size=112, drop_ratio=drop_ratio)

    @classmethod
    def curricularface(cls) -> IRSEBackbone:
        """The CurricularFace identity network of ``CurricularFace_Backbone.pth`` (IR-101 without SE, output BN1d
        without affine; random weights; 112 px RGB faces, 512-d): the papers' identity metric."""
        return cls(depth=100, se=False, output_layer=True, embedding_input_size=112, drop_ratio=0.4,
                   output_affine=False)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_layer(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """ArcFace embedding: ``x: [B,in_channels,s,s]`` (``s = embedding_input_size``) -> unit ``[B,D]``."""
        assert self.output_layer is not None, "built without output_layer; pass output_layer=True"
        s = self.embedding_input_size
        assert x.shape[1:] == (self.in_channels, s, s), (
            f"expected [B,{self.in_channels},{s},{s}], got {tuple(x.shape)}"
        )
        e = self.output_layer(self.forward(x))
        # Plain x/|x| (no eps), as the original l2_norm.
        return e / e.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------
# ResNet


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock`` (same keys): conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetBackbone(Backbone):
    """ResNet trunk without max-pool (pSp / HyperInverter church encoders): ``conv1``, ``bn1``, ``relu``,
    ``body``.

    ``conv1`` is 7x7 stride 2 (``in_channels``->widths[0], no bias), ``relu`` a PReLU(widths[0]); ``body.{n}``
    are the torchvision ``layer1..layer4`` BasicBlocks flattened in order (stage 1 stride 1, the others 2).
    ``[B,C,256,256]`` -> final feature ``[B,widths[3],16,16]``.
    """

    def __init__(
        self,
        *,
        depth: int | None = 34,
        units: Sequence[int] | None = None,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        units_t, widths_t = _stage_config(units, widths, RESNET_BLOCKS, depth)
        self._init_stages(in_channels=in_channels, units=units_t, widths=widths_t)
        self.conv1 = nn.Conv2d(in_channels, widths_t[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths_t[0])
        self.relu = nn.PReLU(widths_t[0])
        body: list[nn.Module] = []
        previous = widths_t[0]
        for stage, (n_units, width) in enumerate(zip(units_t, widths_t, strict=True)):
            for i in range(n_units):
                stride = 2 if (i == 0 and stage > 0) else 1
                body.append(BasicBlock(in_channels=previous, out_channels=width, stride=stride))
                previous = width
        self.body = nn.Sequential(*body)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def stage_of(self, index: int) -> tuple[int, int]:
        """``body`` index -> (stage, block in stage); ResNet-34: 7 -> (2, 0), torchvision ``layer3.0``."""
        start = 0
        for stage, n in enumerate(self.units):
            if index < start + n:
                return stage, index - start
            start += n
        raise IndexError(f"body index {index} out of range (body has {start} units)")


def build_backbone(
    *,
    kind: BackboneKind,
    depth: int | None = None,
    units: Sequence[int] | None = None,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    in_channels: int = 3,
) -> Backbone:
    """An encoder trunk by kind (``"ir_se"``/``"resnet"``); depth defaults to 50 / 34, units override it."""
    if kind == "ir_se":
        return IRSEBackbone(
            depth=depth or DEFAULT_DEPTH[kind], units=units, widths=widths, in_channels=in_channels
        )
    if kind == "resnet":
        return ResNetBackbone(
            depth=depth or DEFAULT_DEPTH[kind], units=units, widths=widths, in_channels=in_channels
        )
    raise ValueError(f"unknown backbone kind {kind!r}; expected 'ir_se' or 'resnet'")


@dataclass(frozen=True)
class TrunkConfig(SerializableConfig):
    """An encoder trunk: ``backbone`` ``"ir_se"`` (faces) or ``"resnet"`` (churches); ``depth`` 50/100/152 for IR-SE,
    18/34 for ResNet (None: 50 / 34; ignored when ``units`` is given); ``units`` residual units per stage (4
    stages, e.g. ``(1, 1, 1, 1)`` for tiny models); ``widths`` channels per stage (officially 64..512)."""

    backbone: BackboneKind = "ir_se"
    depth: int | None = None
    units: tuple[int, ...] | None = None
    widths: tuple[int, ...] = DEFAULT_WIDTHS

    def __post_init__(self) -> None:
        """Checked as it is read (a config's ``trunk.units=[1,1]`` failed later, naming neither file nor key)."""
        if self.backbone not in DEFAULT_DEPTH:
            raise ValueError(f"unknown backbone kind {self.backbone!r}; expected 'ir_se' or 'resnet'")
        table = IR_UNITS if self.backbone == "ir_se" else RESNET_BLOCKS
        _stage_config(self.units, self.widths, table, self.depth or DEFAULT_DEPTH[self.backbone])

    def build(self, in_channels: int) -> Backbone:
        return build_backbone(kind=self.backbone, depth=self.depth, units=self.units, widths=self.widths,
                              in_channels=in_channels)

    @staticmethod
    def nest(data: dict) -> dict:
        """An encoder config's dict with the trunk fields at the top (files written before the trunk was a
        section of its own) -> the nested layout."""
        flat = {k: data[k] for k in ("backbone", "depth", "units", "widths") if k in data}
        if not flat:
            return data
        return {**{k: v for k, v in data.items() if k not in flat}, "trunk": flat}


class TrunkHost(nn.Module):
    """Base for encoders whose state-dict keys are the trunk's own, without a ``backbone.`` prefix.

    The official checkpoints store ``input_layer.*``/``body.*`` (or ``conv1``/``bn1``/``relu``/``body``) at
    the top level next to the encoder's heads, so the trunk's children are registered directly on the host.
    ``backbone`` stays reachable (same module objects, not a registered child) to run its forward.
    """

    backbone: Backbone

    def _adopt_trunk(self, trunk: TrunkConfig, in_channels: int) -> None:
        self._adopt_backbone(trunk.build(in_channels))

    def _adopt_backbone(self, backbone: Backbone) -> None:
        object.__setattr__(self, "backbone", backbone)  # not registered: its children are, below
        for name, child in backbone.named_children():
            self.add_module(name, child)
        assert not list(backbone.named_parameters(recurse=False)) and not list(
            backbone.named_buffers(recurse=False)
        )

    def train(self, mode: bool = True) -> TrunkHost:
        super().train(mode)
        self.backbone.training = mode  # children already follow; keep the (unregistered) trunk consistent
        return self
