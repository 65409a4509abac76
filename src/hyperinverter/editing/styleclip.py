"""StyleCLIP latent-mapper edits as a :class:`~hyperinverter.editing.directions.Direction`.

The edit is ``w + α·M(w)`` on the W+ code, as in the official inference script (``α = 0.1`` there);
HyperInverter's own demo sweeps ``α``. Like every direction here it moves the codes only, so an inversion keeps its
generator offsets (Δθ) when it is rendered.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..models.styleclip import StyleCLIPMapper

DEFAULT_STRENGTH = 0.1  # the official inference script's multiplier


class StyleCLIPDirection:
    """``apply(ws, α) = ws + α·mapper(ws)`` for ``ws [B, 18, 512]``; other codes are a ``ValueError``, since the
    mapper's level split (rows 0-3 / 4-7 / 8-17) is defined for a 1024-px, 512-d StyleGAN2 only."""

    def __init__(self, mapper: StyleCLIPMapper, *, name: str = "styleclip",
                 default_strength: float = DEFAULT_STRENGTH) -> None:
        if not math.isfinite(default_strength):
            raise ValueError(f"the strength of {name!r} must be finite, got {default_strength}")
        self.mapper = mapper.eval().requires_grad_(False)
        self.name = name
        self.default_strength = float(default_strength)

    def __repr__(self) -> str:
        return (f"StyleCLIPDirection(name={self.name!r}, levels={list(self.mapper.levels)}, "
                f"default_strength={self.default_strength})")

    def apply(self, ws: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        strength = self.default_strength if strength is None else strength
        StyleCLIPMapper.check_codes(ws, f"StyleCLIP mapper {self.name!r}")
        if next(self.mapper.parameters()).device != ws.device:
            self.mapper.to(ws.device)
        delta = self.mapper(ws.float())
        return ws + strength * delta.to(ws.dtype)


def load_styleclip_direction(path: str | os.PathLike, name: str | None = None,
                             strength: float = DEFAULT_STRENGTH) -> StyleCLIPDirection:
    """An official StyleCLIP mapper ``.pt`` as a direction named ``name`` (default: the file's stem), applied
    with ``strength`` unless a call gives another."""
    from ..convert.styleclip import load_styleclip_mapper

    return StyleCLIPDirection(load_styleclip_mapper(path), name=name or Path(path).stem, default_strength=strength)
