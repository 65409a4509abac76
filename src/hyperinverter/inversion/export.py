"""Bake one image's Δθ into a standalone generator that any StyleGAN2 tool can read."""

from __future__ import annotations

import copy

import torch

from ..models.stylegan2 import Generator
from ..models.weight_delta import WeightDelta


@torch.no_grad()
def bake_weight_delta(G: Generator, delta: WeightDelta | None) -> Generator:
    """A copy of ``G`` whose synthesis parameters (and noise buffers) are θ+Δθ (or θ·(1+Δθ)) for the single sample
    in ``delta`` (None: an unchanged copy, for methods without offsets). Rendered with ``noise_mode="const"``, the
    copy makes exactly the inversion's image."""
    baked = copy.deepcopy(G)
    if delta is None:
        return baked
    if delta.batch_size != 1:
        raise ValueError(f"bake one image's offsets at a time, got a batch of {delta.batch_size}")
    params = {**dict(baked.synthesis.named_parameters()), **dict(baked.synthesis.named_buffers())}
    for name in delta:
        if name not in params:
            raise ValueError(f"the generator has no synthesis parameter {name!r}")
        params[name].copy_(delta.apply(name, params[name])[0])
    return baked
