"""The feature encoder (E2 in the paper), Phase II's encoder: one ``[C,S,S]`` feature map per style slot.

It is pSp's ``GradualStyleEncoder`` without the map-to-vector ends: FPN over the trunk taps, then one
``StyleBlock`` per style slot that halves the resolution down to ``feature_size`` with stride-2 convs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...config_base import MAX_STYLES, SerializableConfig, check_count
from .backbones import TrunkConfig, TrunkHost

logger = logging.getLogger(__name__)

Level = Literal["coarse", "middle", "fine"]
# Stride of the map each level's heads read, relative to the input: c3, p2, p1.
_LEVEL_STRIDE: dict[str, int] = {"coarse": 16, "middle": 8, "fine": 4}


class StyleBlock(nn.Module):
    """``num_convs`` x (Conv3x3 stride 2 with bias, LeakyReLU(0.01)); keys ``convs.0``, ``convs.2``, ...

    ``[B,C,S·2^n,S·2^n] -> [B,C,S,S]`` with ``n = num_convs``.
    """

    def __init__(self, *, channels: int, num_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.num_convs = num_convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear (``align_corners=True``, as pSp) resize of ``x`` to ``y``'s size, plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


def check_style_groups(coarse_end: int, middle_end: int) -> None:
    """The coarse, middle and fine style heads' bounds (``coarse_end``, ``middle_end``): in order, from 0."""
    if not 0 <= coarse_end <= middle_end:
        raise ValueError(f"need 0 <= coarse_end <= middle_end, got {coarse_end}, {middle_end}")


@dataclass(frozen=True)
class FeatureEncoderConfig(SerializableConfig):
    trunk: TrunkConfig = TrunkConfig()
    in_channels: int = 3
    input_size: int = 256
    input_height: int | None = None  # where the input is not square (cars: 192 x 256); input_size is its width
    n_styles: int = 18
    feature_channels: int = 512
    feature_size: int = 8
    coarse_end: int = 3
    middle_end: int = 7

    def __post_init__(self) -> None:
        check_style_groups(self.coarse_end, self.middle_end)
        check_count("n_styles", self.n_styles, MAX_STYLES)
        if self.input_size % 16 != 0 or self.input_size < 16:
            raise ValueError(f"input_size must be a positive multiple of 16, got {self.input_size}")
        if self.input_height is not None and (self.input_height % 16 != 0 or self.input_height < 16):
            raise ValueError(f"input_height must be a positive multiple of 16, got {self.input_height}")

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the input."""
        return (self.input_height or self.input_size), self.input_size

    @classmethod
    def from_dict(cls, data: dict) -> FeatureEncoderConfig:
        return super().from_dict(TrunkConfig.nest(data))


class FeatureEncoder(TrunkHost):
    """Trunk + FPN + ``n_styles`` heads: ``[B,in_channels,R,R] -> [B,n_styles,C,S,S]``.

    Head ``i`` reads ``c3`` (stride 16) if ``i < coarse_end``, ``p2 = up(c3) + latlayer1(c2)`` (stride 8)
    if ``i < middle_end``, else ``p1 = up(p2) + latlayer2(c1)`` (stride 4), and halves it down to ``S``. The
    official config (R=256, C=512, S=8, split 3/7) thus has 1, 2 and 3 convs per coarse, middle and fine head;
    with fewer styles the split is simply cut off (e.g. 8 styles: 3 coarse, 4 middle, 1 fine).

    Keys: trunk keys (see ``WEncoder``), ``latlayer1`` (1x1, C2->C), ``latlayer2`` (1x1, C1->C),
    ``styles.{i}.convs.{0,2,4}``. Two deviations, both absent from the official configs so their keys stay
    identical: when the trunk's ``c3`` width differs from ``C`` (tiny trunks) a 1x1 ``c3_proj`` maps it to
    ``C`` before the FPN; and a lateral layer is only built if some head reads its level (no unused
    parameters).

    The config: the ``trunk`` and ``in_channels``, as for ``WEncoder``;
    ``input_size`` R, the input side (its width where ``input_height`` is given: cars are 192 x 256), a multiple
    of 16, which fixes the number of convs per head; every stride-2 conv rounds a height up (12 -> 6 -> 3 -> 2 -> 1);
    ``n_styles`` the number of heads (``2·log2(G resolution) - 2``: 18 for 1024 px, 14 for 256 px);
    ``feature_channels`` C, the channels of every output map (512); ``feature_size`` S, the side of every output
    map (8); ``coarse_end``, ``middle_end``: heads ``[0, coarse_end)`` are coarse, ``[coarse_end, middle_end)``
    middle.
    """

    config_class = FeatureEncoderConfig

    def __init__(self, config: FeatureEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self._adopt_trunk(c.trunk, c.in_channels)
        self.levels: tuple[Level, ...] = tuple(self.level_of(i) for i in range(c.n_styles))
        c1_channels, c2_channels, c3_channels = self.backbone.tap_channels
        if c3_channels != c.feature_channels:
            self.c3_proj: nn.Conv2d | None = nn.Conv2d(c3_channels, c.feature_channels, kernel_size=1)
            logger.debug("c3 has %d channels, heads take %d: adding c3_proj", c3_channels, c.feature_channels)
        else:
            self.c3_proj = None
        uses_p2 = any(level != "coarse" for level in self.levels)
        uses_p1 = "fine" in self.levels
        self.latlayer1 = nn.Conv2d(c2_channels, c.feature_channels, kernel_size=1) if uses_p2 else None
        self.latlayer2 = nn.Conv2d(c1_channels, c.feature_channels, kernel_size=1) if uses_p1 else None

        self.styles = nn.ModuleList()
        for level in self.levels:
            side = c.input_size // _LEVEL_STRIDE[level]
            ratio = side // c.feature_size
            if side % c.feature_size != 0 or ratio < 1 or ratio & (ratio - 1):
                raise ValueError(
                    f"{level} heads read {side}x{side} maps, which cannot be halved down to "
                    f"{c.feature_size}x{c.feature_size} (input_size={c.input_size})"
                )
            num_convs = int(math.log2(ratio))
            height = c.input_shape[0] // _LEVEL_STRIDE[level]
            for _ in range(num_convs):
                height = (height + 1) // 2
            if height != c.feature_size:
                raise ValueError(f"{level} heads read maps {c.input_shape[0] // _LEVEL_STRIDE[level]} high, which "
                                 f"{num_convs} halvings take to {height}, not {c.feature_size} (input {c.input_shape})")
            self.styles.append(StyleBlock(channels=c.feature_channels, num_convs=num_convs))

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    def level_of(self, index: int) -> Level:
        """Which FPN level head ``index`` reads: ``"coarse"`` (c3), ``"middle"`` (p2) or ``"fine"`` (p1)."""
        if index < self.config.coarse_end:
            return "coarse"
        return "middle" if index < self.config.middle_end else "fine"

    def level_maps(self, x: torch.Tensor) -> dict[Level, torch.Tensor]:
        """The FPN maps the heads read: ``coarse`` (c3), ``middle`` (p2) and ``fine`` (p1) where some head reads
        them; ``x: [B,in_channels,H,R]`` (``R = input_size``, ``H`` its height: ``R`` unless ``input_height``)."""
        c = self.config
        h, r = c.input_shape
        assert x.ndim == 4 and x.shape[1:] == (c.in_channels, h, r), (
            f"expected [B,{c.in_channels},{h},{r}], got {tuple(x.shape)}"
        )
        c1, c2, c3 = self.backbone.forward_taps(x)
        if self.c3_proj is not None:
            c3 = self.c3_proj(c3)
        maps: dict[Level, torch.Tensor] = {"coarse": c3}
        if self.latlayer1 is not None:
            maps["middle"] = _upsample_add(c3, self.latlayer1(c2))
        if self.latlayer2 is not None:
            maps["fine"] = _upsample_add(maps["middle"], self.latlayer2(c1))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B,in_channels,R,R]`` in [-1,1] (``R = input_size``) -> ``[B,n_styles,C,S,S]``."""
        c = self.config
        maps = self.level_maps(x)
        out = torch.stack(
            [head(maps[level]) for head, level in zip(self.styles, self.levels, strict=True)], dim=1
        )
        s = c.feature_size
        assert out.shape == (x.shape[0], c.n_styles, c.feature_channels, s, s), (
            f"features {tuple(out.shape)}"
        )
        return out
