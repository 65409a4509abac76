"""W+ encoders: pSp's ``GradualStyleEncoder`` and e4e's ``Encoder4Editing``, one code row per generator layer.

Both are the feature encoder's FPN with heads that end in a vector: each head halves its level's map down to 1x1
and applies an equalised linear (``styles.{i}.linear``). They share one key set and differ in the forward:

- ``psp``: row ``i`` is head ``i`` of its level (rows ``[0, coarse_end)`` from c3, ``[coarse_end, middle_end)``
  from p2, the rest from p1);
- ``e4e``: head 0 (on c3) gives one w for every row, and heads ``1..stage`` add their deltas to their rows. The
  progressive ``stage`` (``progressive_stage``) is how many deltas are active; ``None`` is every one (inference).

The codes are offsets: the caller adds ``latent_avg`` (released encoders carry their own) or the generator's w_avg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..stylegan2.layers import FullyConnectedLayer
from .backbones import TrunkConfig
from .feature_encoder import FeatureEncoder, FeatureEncoderConfig

StyleCodeMode = Literal["psp", "e4e"]


@dataclass(frozen=True)
class StyleCodeEncoderConfig(FeatureEncoderConfig):
    """The feature encoder's config with ``feature_size`` 1; ``w_dim`` the code size (512); ``mode`` ``psp`` or
    ``e4e`` (the forward); ``own_latent_avg``: the encoder carries the ``[n_styles, w_dim]`` average its codes
    start from (released encoders), else the generator's w_avg is used."""

    feature_size: int = 1
    w_dim: int = 512
    mode: StyleCodeMode = "psp"
    own_latent_avg: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_size != 1:
            raise ValueError(f"a style-code encoder's heads end at 1x1, got feature_size={self.feature_size}")
        if self.mode not in ("psp", "e4e"):
            raise ValueError(f"mode must be 'psp' or 'e4e', got {self.mode!r}")

    @classmethod
    def from_dict(cls, data: dict) -> StyleCodeEncoderConfig:
        return super().from_dict(TrunkConfig.nest(data))


class StyleCodeEncoder(FeatureEncoder):
    """``[B,in_channels,R,R]`` in [-1,1] -> code offsets ``[B,n_styles,w_dim]``.

    Keys: the feature encoder's (``input_layer``, ``body``, ``latlayer1/2``, ``styles.{i}.convs``) plus
    ``styles.{i}.linear``, as pSp's and e4e's ``encoder.*``; ``latent_avg`` when ``own_latent_avg``.
    """

    config_class = StyleCodeEncoderConfig

    def __init__(self, config: StyleCodeEncoderConfig) -> None:
        super().__init__(config)
        for head in self.styles:
            head.linear = FullyConnectedLayer(config.feature_channels, config.w_dim)
        if config.own_latent_avg:
            self.register_buffer("latent_avg", torch.zeros(config.n_styles, config.w_dim))
        # e4e's progressive training stage: rows 1..stage get their deltas (None: all of them). Not a weight.
        self.progressive_stage: int | None = None

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    def _code(self, index: int, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        head = self.styles[index]
        return head.linear(head(maps[self.levels[index]]).flatten(1))

    def active_deltas(self) -> int:
        """How many e4e delta rows are active (rows ``1..active``)."""
        n = self.config.n_styles - 1
        return n if self.progressive_stage is None else max(0, min(self.progressive_stage, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        maps = self.level_maps(x)
        if c.mode == "psp":
            codes = torch.stack([self._code(i, maps) for i in range(c.n_styles)], dim=1)
        else:
            w0 = self._code(0, maps)
            active = self.active_deltas()
            rows = [w0] + [w0 + self._code(i, maps) if i <= active else w0 for i in range(1, c.n_styles)]
            codes = torch.stack(rows, dim=1)
        assert codes.shape == (x.shape[0], c.n_styles, c.w_dim), f"codes {tuple(codes.shape)}"
        return codes
