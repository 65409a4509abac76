"""A perceptual distance that works offline: LPIPS-style comparison of the domain's own discriminator features.

ImageNet backbones for LPIPS cannot be downloaded on offline machines, but every domain we train has a
pretrained StyleGAN2 discriminator, whose features are tuned to exactly that domain's image statistics.
Following LPIPS, each block's features are unit-normalised over channels, differences are squared,
averaged over space and summed over blocks. The discriminator is a frozen copy: the adversarial stage
fine-tunes its own discriminator, and a drifting metric would make the loss meaningless over time.
See docs/losses.md for the trade-offs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..models.stylegan2 import Discriminator
from .lpips import unit_normalise


class DiscriminatorFeatureLoss(nn.Module):
    """``(x, y) -> [B]`` distances; ``x``, ``y``: ``[B,C,R,R]`` in [-1,1] at the discriminator's resolution."""

    def __init__(self, discriminator: Discriminator, *, blocks: Sequence[int] | None = None) -> None:
        super().__init__()
        self.discriminator = copy.deepcopy(discriminator).eval().requires_grad_(False)
        n = len(self.discriminator.config.block_resolutions)
        self.blocks = tuple(range(n)) if blocks is None else tuple(blocks)
        if not self.blocks or min(self.blocks) < 0 or max(self.blocks) >= n:
            raise ValueError(f"blocks must index the {n} discriminator blocks, got {self.blocks}")

    def train(self, mode: bool = True) -> DiscriminatorFeatureLoss:
        super().train(mode)
        self.discriminator.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape == y.shape, f"{tuple(x.shape)} != {tuple(y.shape)}"
        feats = self.discriminator.features(torch.cat([x, y]))
        total = x.new_zeros(x.shape[0])
        for i in self.blocks:
            fx, fy = feats[i].chunk(2)
            total = total + (unit_normalise(fx) - unit_normalise(fy)).square().sum(dim=1).mean(dim=[1, 2])
        return total
