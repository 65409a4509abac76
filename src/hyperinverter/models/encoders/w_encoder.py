"""E1, the Phase I encoder: one image -> one offset in W (pSp ``...EncoderUsingLastLayerIntoW``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config_base import SerializableConfig
from ..stylegan2.layers import FullyConnectedLayer
from .backbones import TrunkConfig, TrunkHost


@dataclass(frozen=True)
class WEncoderConfig(SerializableConfig):
    trunk: TrunkConfig = TrunkConfig()
    in_channels: int = 3
    w_dim: int = 512
    # A released encoder trained against its own average code (pSp/e4e/HyperStyle ``latent_avg``) keeps it as the
    # buffer ``latent_avg``; otherwise its codes are offsets from the generator's ``w_avg``.
    own_latent_avg: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> WEncoderConfig:
        return super().from_dict(TrunkConfig.nest(data))


class WEncoder(TrunkHost):
    """Trunk -> global average pool -> equalised-lr ``linear`` -> w offset ``[B,w_dim]``; caller adds w_avg.

    State-dict keys are the official ones, so a pSp/HyperInverter W-encoder's ``encoder.*`` keys load after
    stripping the prefix: ``input_layer``, ``body``, ``linear`` (``backbone="ir_se"``, pSp
    ``BackboneEncoderUsingLastLayerIntoW``) or ``conv1``, ``bn1``, ``relu``, ``body``, ``linear``
    (``backbone="resnet"``, ``ResNetEncoderUsingLastLayerIntoW``).

    The config: the ``trunk`` (see :class:`TrunkConfig`); ``in_channels`` image channels (3; 1 for grayscale data;
    6 for image pairs); ``w_dim`` the size of W (512 for the official generators); ``own_latent_avg``: the
    encoder carries the average code its offsets start from (released encoders), else the generator's is used.
    """

    config_class = WEncoderConfig

    def __init__(self, config: WEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self._adopt_trunk(c.trunk, c.in_channels)
        self.linear = FullyConnectedLayer(self.backbone.out_channels, c.w_dim)
        if c.own_latent_avg:
            self.register_buffer("latent_avg", torch.zeros(c.w_dim))

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B,in_channels,H,W]`` in [-1,1], H and W multiples of 16 (official 256) -> ``[B,w_dim]``."""
        features = self.backbone(x)  # [B,C,H/16,W/16]
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        w = self.linear(pooled)
        assert w.shape == (x.shape[0], self.w_dim), f"w {tuple(w.shape)}"
        return w
