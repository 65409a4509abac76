"""Phase II hypernetworks: one ``WeightRegressor`` per target generator parameter (HyperInverter §3.3).

For target ℓ with feature index i(ℓ): fuse the two 8x8 maps (features of the Phase I image first, then of
the input) with 1x1 conv + InstanceNorm + ReLU, reduce them with a small conv stack to a D-dim code z, and map z
through the factorised linear mapper ``(z @ w1 + b1).view(B, I, D) @ w2 + b2`` to a full residual ``Δθ_ℓ``.
The final ``view`` to ``[B, O, I, k, k]`` is the official raw reshape (not a permute), so released weights give
identical Δθ. Targets, shapes and routing are read from the generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config_base import MAX_STYLES, SerializableConfig, check_count
from ..ops.matmul import addmm, transposed_storage
from ..precision import full_precision
from . import init
from .stylegan2.generator import Generator, SynthesisNetwork
from .weight_delta import WeightDelta

TargetSet = Literal["conv_without_bias", "conv_without_bias_without_torgb", "all_without_bias"]
TARGET_SETS: tuple[str, ...] = ("conv_without_bias", "conv_without_bias_without_torgb", "all_without_bias")


@dataclass(frozen=True)
class TargetSpec(SerializableConfig):
    """A parameter the hypernetwork predicts: synthesis name, shape, and which feature map drives it."""

    name: str
    shape: tuple[int, ...]
    feature_index: int

    def __post_init__(self) -> None:
        """Checked as it is read: a negative index read the last map, a negative size was a math domain error."""
        if len(self.shape) not in (2, 4) or min(self.shape) < 1:
            raise ValueError(f"{self.name}: shape must be a conv's [O, I, k, k] or a linear [O, I] of positive "
                             f"sizes, got {list(self.shape)}")
        check_count(f"{self.name}: feature_index", self.feature_index, MAX_STYLES - 1, low=0)


def feature_index(layer_name: str, resolution: int) -> int:
    """Feature routing of the official code: b4.conv1 -> 0, b4.torgb -> 1; at R >= 8 conv0 -> 2·log2R-4,
    conv1 and torgb -> 2·log2R-3. (Not the generator's own w index, which differs for conv0.)"""
    kind = layer_name.split(".")[1]
    if resolution == 4:
        return 0 if kind == "conv1" else 1
    log2 = int(math.log2(resolution))
    return 2 * log2 - 4 if kind == "conv0" else 2 * log2 - 3


def targets_from_generator(synthesis: SynthesisNetwork, targets: TargetSet = "conv_without_bias") -> list[TargetSpec]:
    """The official target sets, with shapes read from the synthesis network's parameters."""
    if targets not in TARGET_SETS:
        raise ValueError(f"unknown target set {targets!r}; known: {list(TARGET_SETS)}")
    shapes = synthesis.offsettable_parameters()
    specs = []
    for layer in synthesis.layers():
        if targets == "conv_without_bias_without_torgb" and layer.kind == "torgb":
            continue
        index = feature_index(layer.name, layer.resolution)
        specs.append(TargetSpec(f"{layer.name}.weight", shapes[f"{layer.name}.weight"], index))
        if targets == "all_without_bias":
            specs.append(TargetSpec(f"{layer.name}.affine.weight", shapes[f"{layer.name}.affine.weight"], index))
    return specs


class WeightRegressor(nn.Module):
    """Two feature maps ``[B,C,S,S]`` -> a residual for one parameter ``[B, *shape]``.

    Conv weights ``[O,I,k,k]`` and affine weights ``[O,I]`` (treated as k = 1) are both supported.
    """

    def __init__(self, *, shape: Sequence[int], feature_channels: int = 512, feature_size: int = 8,
                 hidden_dim: int = 128, inner_channels: int = 64) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) == 4:
            out_ch, in_ch, kh, kw = shape
            assert kh == kw, f"square kernels only, got {shape}"
        elif len(shape) == 2:
            (out_ch, in_ch), kw = shape, 1
        else:
            raise ValueError(f"can only regress conv [O,I,k,k] or linear [O,I] weights, got {shape}")
        n_down = int(math.log2(feature_size))
        if feature_size < 2 or 2**n_down != feature_size:
            raise ValueError(f"feature_size must be a power of two >= 2, got {feature_size}")
        self.shape, self.in_ch, self.out_ch, self.k = shape, in_ch, out_ch, kw
        self.feature_channels, self.feature_size, self.hidden_dim = feature_channels, feature_size, hidden_dim
        self.fusion = nn.Sequential(nn.Conv2d(2 * feature_channels, feature_channels, 1),
                                    nn.InstanceNorm2d(feature_channels), nn.ReLU())
        layers: list[nn.Module] = [nn.Conv2d(feature_channels, inner_channels, 3, padding=1), nn.ReLU()]
        for i in range(n_down):  # each stride-2 4x4 conv halves S; the last one emits the D-dim code
            out = hidden_dim if i == n_down - 1 else inner_channels
            layers += [nn.Conv2d(inner_channels, out, 4, stride=2, padding=1), nn.ReLU()]
        self.feature_extractor = nn.Sequential(*layers)
        # nn.init.kaiming_normal_'s values (fan-in, gain √2), cheap to build for loading (models.init)
        w1 = init.randn(hidden_dim, in_ch * hidden_dim, times=math.sqrt(2 / (in_ch * hidden_dim)))
        # A code times w1 reads all of it (up to 33.5 MB per layer). Stored transposed, as a linear layer's [I·D, D]
        # weight with the official [D, I·D] shape and values (checkpoints are unchanged), it is read by oneDNN on
        # every core where sgemv read it on one (ops.matmul).
        self.w1 = nn.Parameter(transposed_storage(w1))
        self.b1 = nn.Parameter(torch.zeros(in_ch * hidden_dim))
        self.w2 = nn.Parameter(init.randn(hidden_dim, out_ch * kw * kw, times=math.sqrt(2 / (out_ch * kw * kw))))
        self.b2 = nn.Parameter(torch.zeros(out_ch * kw * kw))

    def forward(self, image_features: torch.Tensor, input_features: torch.Tensor) -> torch.Tensor:
        b = image_features.shape[0]
        fused = self.fusion(torch.cat([image_features, input_features], dim=1))
        z = self.feature_extractor(fused).flatten(1)  # [B, D]
        assert z.shape == (b, self.hidden_dim), f"feature extractor gave {tuple(z.shape)}"
        # Bias adds inside the matrix products (addmm): one pass less over Δθ, the largest tensor made here.
        a = addmm(self.b1, z, self.w1).view(b * self.in_ch, self.hidden_dim)
        m = addmm(self.b2, a, self.w2)  # [B·I, O·k·k]: oneDNN's kernel for large layers on CPUs (ops.matmul)
        return m.view(b, *self.shape)  # the official raw view: the "I" axis is not re-ordered


@dataclass(frozen=True)
class HyperNetworkConfig(SerializableConfig):
    targets: tuple[TargetSpec, ...]
    feature_channels: int = 512
    feature_size: int = 8
    hidden_dim: int = 128
    inner_channels: int = 64

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a hypernetwork needs at least one target")


class HyperNetwork(nn.Module):
    """All regressors: ``(F(x_w), F(x))``, each ``[B,n,C,S,S]`` -> ``WeightDelta`` (additive)."""

    config_class = HyperNetworkConfig

    def __init__(self, config: HyperNetworkConfig) -> None:
        super().__init__()
        self.config = c = config
        self.weight_regressors = nn.ModuleDict({
            t.name.replace(".", "_"): WeightRegressor(shape=t.shape, feature_channels=c.feature_channels,
                                                      feature_size=c.feature_size, hidden_dim=c.hidden_dim,
                                                      inner_channels=c.inner_channels)
            for t in c.targets
        })

    @property
    def targets(self) -> tuple[TargetSpec, ...]:
        return self.config.targets

    @property
    def num_features(self) -> int:
        """How many feature maps it reads (one more than the highest ``feature_index``)."""
        return max(t.feature_index for t in self.config.targets) + 1

    @classmethod
    def from_generator(cls, generator: Generator | SynthesisNetwork, *, targets: TargetSet = "conv_without_bias",
                       feature_channels: int = 512, feature_size: int = 8, hidden_dim: int = 128,
                       inner_channels: int = 64) -> HyperNetwork:
        synthesis = generator.synthesis if isinstance(generator, Generator) else generator
        return cls(HyperNetworkConfig(tuple(targets_from_generator(synthesis, targets)), feature_channels,
                                      feature_size, hidden_dim, inner_channels))

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def forward(self, image_features: torch.Tensor, input_features: torch.Tensor) -> WeightDelta:
        c = self.config
        expected = (self.num_features, c.feature_channels, c.feature_size, c.feature_size)
        for name, f in (("image_features", image_features), ("input_features", input_features)):
            assert f.ndim == 5 and tuple(f.shape[1:]) >= (self.num_features,) and tuple(f.shape[2:]) == expected[1:], (
                f"{name} must be [B,>={self.num_features},{c.feature_channels},{c.feature_size},{c.feature_size}], "
                f"got {tuple(f.shape)}"
            )
        assert image_features.shape == input_features.shape
        deltas = {}
        # Δθ in fp32 under reduced precision: it cost a tenth of the bf16 gain and a sixth of its error at full
        # size (benchmarks/results/precision-*.md; hyperinverter.precision).
        with full_precision(image_features.device):
            image_features, input_features = image_features.float(), input_features.float()
            for t in self.targets:
                regressor = self.weight_regressors[t.name.replace(".", "_")]
                deltas[t.name] = regressor(image_features[:, t.feature_index], input_features[:, t.feature_index])
        return WeightDelta(deltas, mode="add")
