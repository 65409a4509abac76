"""HyperStyle's hypernetwork (Alaluf et al., CVPR 2022): ``cat(x, ŷ) -> multiplicative offsets Δ``.

A ResNet-34 trunk without max-pool reads the target and the current reconstruction (6 channels, target first) and
gives one feature map; one refinement block per tuned generator layer turns it into that layer's Δ:

* the *shared* layers (the full-width 3x3 convs at 4-64 px of the official generator) use a
  :class:`HyperRefinementBlock`: convs down to 1x1, an equalised linear to a code z, then one
  :class:`SharedWeightsHypernet` whose parameters are shared by all of them and predicts a full 3x3 kernel;
* the other 3x3 convs use a :class:`RefinementBlock` that predicts one value per (out, in) pair, repeated over the
  9 taps; ToRGB layers (k = 1) one value per (3, in);
* the separable variant (:class:`RefinementBlockSeparable`) predicts a full kernel per tap with a rank-1 outer
  product followed by channel mixing.

Layers are numbered as the official code numbers them (conv1, to_rgb1, then up-conv, conv, to_rgb per
resolution), which is also the forward order of our synthesis network; their shapes are read from the generator.
State-dict keys are the official ones (``conv1``, ``bn1``, ``relu``, ``body.*``, ``refinement_blocks.{i}.*``,
``shared_weight_hypernet.*``), so released weights load after stripping ``hypernet.``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config_base import SerializableConfig
from ..ops.matmul import addmm, transposed_storage
from ..precision import full_precision
from . import init
from .encoders.backbones import TrunkConfig, TrunkHost
from .stylegan2.generator import Generator
from .stylegan2.layers import FullyConnectedLayer
from .weight_delta import WeightDelta

# The official default ``layers_to_tune``: every modulated 3x3 conv of a 1024-px generator, no ToRGB.
OFFICIAL_LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24)
# The layers that go through the shared hypernetwork when tuned: the 512->512 3x3 convs at 4-64 px.
OFFICIAL_SHARED = (0, 2, 3, 5, 6, 8, 9, 11, 12)


@dataclass(frozen=True)
class HyperStyleTarget(SerializableConfig):
    """A tuned layer: its official ``index``, the synthesis parameter ``name``, its ``shape`` ``[out, in, k, k]``,
    and whether the shared hypernetwork predicts it."""

    index: int
    name: str
    shape: tuple[int, ...]
    shared: bool

    def __post_init__(self) -> None:
        if self.index < 0 or len(self.shape) != 4 or min(self.shape) < 1:
            raise ValueError(f"{self.name}: needs an index >= 0 and a conv's shape [O, I, k, k] of positive sizes, "
                             f"got index {self.index} and shape {list(self.shape)}")


def hyperstyle_targets(generator: Generator, layers: tuple[int, ...] | None = None) -> tuple[HyperStyleTarget, ...]:
    """The tuned layers, shapes read from ``generator``.

    ``layers``: official indices; None takes the official default kept to the layers this generator has; ``()``
    tunes every layer, ToRGB included. A layer is shared when the official code shares it and its kernel is the
    3x3 one of ``b4.conv1`` (so a narrower generator still shares only its full-width low-resolution convs).
    """
    infos = generator.synthesis.layers()
    if layers is None:
        layers = tuple(i for i in OFFICIAL_LAYERS if i < len(infos))
    elif not layers:
        layers = tuple(range(len(infos)))
    bad = sorted(i for i in layers if not 0 <= i < len(infos))
    if bad:
        raise ValueError(f"layers {bad} do not exist: a {generator.resolution}-px generator has layers "
                         f"0..{len(infos) - 1}")
    shared_shape = infos[0].weight_shape
    return tuple(HyperStyleTarget(i, f"{infos[i].name}.weight", infos[i].weight_shape,
                                  i in OFFICIAL_SHARED and infos[i].weight_shape == shared_shape)
                 for i in sorted(set(layers)))


def trunk_reads_input_size(input_size: int) -> bool:
    """Whether the trunk reads ``input_size``-wide inputs: 16 x a power of two >= 2 (features of 2x2 or more)."""
    side = input_size // 16
    return input_size % 16 == 0 and side >= 2 and side & (side - 1) == 0


def input_height_problem(input_size: int, input_height: int) -> str | None:
    """Why a trunk of ``input_size``-wide inputs cannot read ``input_height``-high ones (None if it can): the
    refinement blocks bring the trunk's features down to 1x1, and must bring their height there too."""
    side, height = input_size // 16, input_height // 16
    for _ in range(max(side, 1).bit_length() - 1):  # the blocks' stride-2 convs round heights up: 12 -> 6, 3, 2, 1
        height = (height + 1) // 2
    if input_height % 16 or height != 1:
        return (f"input_height {input_height} does not come down to 1x1 features with the {side}-wide ones of "
                f"input_size {input_size}")
    return None


@dataclass(frozen=True)
class HyperStyleConfig(SerializableConfig):
    """``targets``: the tuned layers. ``trunk``: the ResNet trunk (reads ``2·image_channels``: target and current
    image; 6 for RGB). ``input_size``: the side of
    the trunk's input (256 officially; its features are 1/16 of it). ``code_dim``: the code of the shared
    hypernetwork (the trunk's width, 512). ``hyper_inner`` / ``refine_inner``: widths inside the refinement blocks
    (128 / 256). ``separable``: the separable variant of the non-shared blocks."""

    targets: tuple[HyperStyleTarget, ...]
    trunk: TrunkConfig = TrunkConfig("resnet", 34)
    input_size: int = 256
    code_dim: int = 512
    hyper_inner: int = 128
    refine_inner: int = 256
    separable: bool = False
    image_channels: int = 3
    input_height: int | None = None  # where the input is not square (cars: 192 x 256); input_size is its width

    def __post_init__(self) -> None:
        if not trunk_reads_input_size(self.input_size):
            raise ValueError(f"input_size must be 16 x a power of two >= 2 (features of 2x2 or more), got "
                             f"{self.input_size}")
        if self.input_height is not None:
            problem = input_height_problem(self.input_size, self.input_height)
            if problem is not None:
                raise ValueError(problem)
        if not self.targets:
            raise ValueError("HyperStyle needs at least one tuned layer")

    @property
    def feature_size(self) -> int:
        return self.input_size // 16

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the trunk's input."""
        return (self.input_height or self.input_size), self.input_size

    @property
    def feature_channels(self) -> int:
        return self.trunk.widths[-1]


def _conv_stack(channels: list[int], first_stride: int = 2) -> nn.Sequential:
    """Conv3x3 + LeakyReLU(0.01) through ``channels`` (keys ``0``, ``2``, ...); stride 2 except maybe the first."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=first_stride if i == 0 else 2, padding=1), nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)


class SharedWeightsHypernet(nn.Module):
    """A code ``z [B, z]`` -> a full kernel ``[B, out, in, f, f]``: ``h = (z w2 + b2)`` viewed ``[B, in, z]``, then
    ``h w1 + b1`` viewed raw as ``[B, out, in, f, f]`` (the official reshape of ``[B, in, out·f·f]``)."""

    def __init__(self, *, z_dim: int, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.z_dim, self.in_channels, self.out_channels, self.k = z_dim, in_channels, out_channels, kernel_size
        # z times w2 reads all of w2 (512 MB at z = in = 512), 45 times per full-size image: stored transposed, with
        # the official shape and values, oneDNN reads it on every core (ops.matmul; as HyperInverter's w1).
        # The official init is torch.fmod(torch.randn(...) / 40, 2): torch.randn never reaches ±80 (its Box-Muller
        # draws stay below 9 in size), so the fmod changes nothing, and leaving it out keeps loading cheap
        # (models.init).
        self.w2 = nn.Parameter(transposed_storage(init.randn(z_dim, in_channels * z_dim, over=40)))
        self.b2 = nn.Parameter(init.randn(in_channels * z_dim, over=40))
        self.w1 = nn.Parameter(init.randn(z_dim, out_channels * kernel_size**2, over=40))
        self.b1 = nn.Parameter(init.randn(out_channels * kernel_size**2, over=40))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        h = addmm(self.b2, z, self.w2).view(b * self.in_channels, self.z_dim)
        kernel = addmm(self.b1, h, self.w1)  # [B·in, out·f·f]: oneDNN's kernel for large layers on CPUs (ops.matmul)
        return kernel.view(b, self.out_channels, self.in_channels, self.k, self.k)


class HyperRefinementBlock(nn.Module):
    """Features ``[B, C, s, s]`` -> convs down to 1x1 -> equalised linear -> code -> the shared hypernetwork."""

    def __init__(self, hypernet: SharedWeightsHypernet, *, channels: int, inner: int, side: int) -> None:
        super().__init__()
        n_down = int(math.log2(side))
        self.convs = _conv_stack([channels, inner] + [inner] * (n_down - 1) + [hypernet.z_dim], first_stride=1)
        self.linear = FullyConnectedLayer(hypernet.z_dim, hypernet.z_dim)
        self.hypernet = hypernet

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.hypernet(self.linear(self.convs(features).flatten(1)))


class RefinementBlock(nn.Module):
    """Features -> one value per (out, in) pair of a layer, repeated over its k x k taps -> ``[B, out, in, k, k]``.

    3x3 layers: stride-2 convs down to 2x2, average pool, 1x1 conv to ``in·out``; 1x1 (ToRGB) layers: stride-2 convs
    down to 1x1, 1x1 conv. The official code knows the 16-px trunk only (three convs for 3x3 layers); on a 4-px trunk
    (the bundled 64-px models) this is one conv, where the official formula carried there would build two.
    """

    def __init__(self, shape: tuple[int, ...], *, channels: int, inner: int, side: int) -> None:
        super().__init__()
        self.out_channels, self.in_channels, self.k = shape[0], shape[1], shape[2]
        n_down = int(math.log2(side)) - (1 if self.k == 3 else 0)
        widths = [channels] + [inner] * max(n_down - 1, 0) + [channels]
        self.convs = _conv_stack(widths if n_down >= 1 else [channels, channels])
        head = nn.Conv2d(channels, self.in_channels * self.out_channels, 1)
        self.output = nn.Sequential(nn.AdaptiveAvgPool2d(1), head) if self.k == 3 else nn.Sequential(head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b = features.shape[0]
        values = self.output(self.convs(features)).view(b, self.out_channels, self.in_channels, 1, 1)
        return values.expand(-1, -1, -1, self.k, self.k)


class SeparableBlock(nn.Module):
    """A code ``[B, C]`` -> a full kernel: per tap a rank-1 ``out x in`` matrix, then mixing of in and out."""

    def __init__(self, shape: tuple[int, ...], *, channels: int) -> None:
        super().__init__()
        self.out_channels, self.in_channels, self.k = shape[0], shape[1], shape[2]
        k2 = self.k**2
        self.make_kernel_in = nn.Linear(channels, k2 * self.in_channels)
        self.make_kernel_out = nn.Linear(channels, k2 * self.out_channels)
        self.kernel_linear_in = nn.Linear(self.in_channels, self.in_channels)
        self.kernel_linear_out = nn.Linear(self.out_channels, self.out_channels)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        b, k = code.shape[0], self.k
        kernel_in = self.make_kernel_in(code).view(b, k, k, 1, self.in_channels)
        kernel_out = self.make_kernel_out(code).view(b, k, k, self.out_channels, 1)
        kernel = self.kernel_linear_in(kernel_out @ kernel_in)  # [B, k, k, out, in], in mixed
        kernel = self.kernel_linear_out(kernel.transpose(-1, -2))  # [B, k, k, in, out], out mixed
        return kernel.permute(0, 4, 3, 1, 2)  # [B, out, in, k, k]


class RefinementBlockSeparable(nn.Module):
    """Features -> stride-2 convs down to 1x1 -> ``[B, out, in, k, k]``: a :class:`SeparableBlock` for 3x3 layers, and
    for 1x1 (ToRGB) layers a 1x1 conv to ``in·out``, as :class:`RefinementBlock`'s (the official code)."""

    def __init__(self, shape: tuple[int, ...], *, channels: int, inner: int, side: int) -> None:
        super().__init__()
        self.out_channels, self.in_channels, self.k = shape[0], shape[1], shape[2]
        n_down = int(math.log2(side))
        self.convs = _conv_stack([channels] + [inner] * (n_down - 1) + [channels])
        head = (SeparableBlock(shape, channels=channels) if self.k == 3
                else nn.Conv2d(channels, self.in_channels * self.out_channels, 1))
        self.output = nn.Sequential(head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        code = self.convs(features)
        if self.k == 3:
            return self.output(code.flatten(1))
        return self.output(code).view(code.shape[0], self.out_channels, self.in_channels, self.k, self.k)


class HyperStyleNet(TrunkHost):
    """``cat(x, ŷ)`` ``[B, 6, H, S]`` (``S = input_size``, ``H`` its height: ``S`` unless ``input_height``) ->
    multiplicative offsets for every tuned layer."""

    config_class = HyperStyleConfig

    def __init__(self, config: HyperStyleConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.trunk.backbone != "resnet":
            raise ValueError(f"HyperStyle's trunk is a ResNet, got {c.trunk.backbone!r}")
        self._adopt_trunk(c.trunk, 2 * c.image_channels)
        channels, side = c.feature_channels, c.feature_size
        shared = [t for t in c.targets if t.shared]
        self.shared_weight_hypernet = None
        if shared:
            out_channels, in_channels, k, _ = shared[0].shape
            self.shared_weight_hypernet = SharedWeightsHypernet(z_dim=c.code_dim, in_channels=in_channels,
                                                                out_channels=out_channels, kernel_size=k)
        blocks: dict[str, nn.Module] = {}
        for t in c.targets:
            if t.shared:
                blocks[str(t.index)] = HyperRefinementBlock(self.shared_weight_hypernet, channels=channels,
                                                            inner=c.hyper_inner, side=side)
            elif c.separable:
                blocks[str(t.index)] = RefinementBlockSeparable(t.shape, channels=channels, inner=c.refine_inner,
                                                                side=side)
            else:
                blocks[str(t.index)] = RefinementBlock(t.shape, channels=channels, inner=c.refine_inner, side=side)
        self.refinement_blocks = nn.ModuleDict(blocks)

    @classmethod
    def from_generator(cls, generator: Generator, *, layers: tuple[int, ...] | None = None,
                       trunk: TrunkConfig = TrunkConfig("resnet", 34), input_size: int = 256, code_dim: int | None = None,
                       hyper_inner: int = 128, refine_inner: int = 256, separable: bool = False,
                       input_height: int | None = None) -> HyperStyleNet:
        return cls(HyperStyleConfig(hyperstyle_targets(generator, layers), trunk, input_size,
                                    code_dim or trunk.widths[-1], hyper_inner, refine_inner, separable,
                                    generator.config.img_channels, input_height))

    def forward(self, pair: torch.Tensor) -> WeightDelta:
        c = self.config
        (h, s), n = c.input_shape, 2 * c.image_channels
        assert pair.ndim == 4 and pair.shape[1:] == (n, h, s), (
            f"expected [B,{n},{h},{s}] (x, ŷ), got {tuple(pair.shape)}"
        )
        features = self.backbone(pair)
        assert features.shape[1:] == (c.feature_channels, h // 16, c.feature_size), (
            f"trunk features {tuple(features.shape)}"
        )
        with full_precision(features.device):  # Δθ in fp32 under reduced precision, as HyperInverter's
            features = features.float()
            deltas = {t.name: self.refinement_blocks[str(t.index)](features) for t in c.targets}
        for t in c.targets:
            assert deltas[t.name].shape[1:] == t.shape, f"{t.name}: {tuple(deltas[t.name].shape)} vs {t.shape}"
        return WeightDelta(deltas, mode="scale")
