"""The contract all inversion methods share, so editing, metrics and benchmarks treat them alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..models.weight_delta import WeightDelta


@dataclass
class InversionResult:
    """What an inverter returns for a batch of B images.

    ``ws``: ``[B, num_ws, w_dim]`` codes (W-space methods repeat one w over all layers).
    ``weight_delta``: per-sample generator offsets, or None for pure latent methods.
    ``image``: the reconstruction ``[B, C, R, R]`` in [-1, 1]; ``w_image``: the image of ``ws`` alone
    (HyperInverter's Phase I result), when the method has one. ``timings``: seconds per stage.
    """

    ws: torch.Tensor
    image: torch.Tensor
    weight_delta: WeightDelta | None = None
    w_image: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.ws.shape[0]
        assert self.ws.ndim == 3, f"ws must be [B,num_ws,w_dim], got {tuple(self.ws.shape)}"
        assert self.image.shape[0] == b, "image and ws disagree on the batch size"
        if self.weight_delta is not None:
            assert self.weight_delta.batch_size == b, "weight_delta and ws disagree on the batch size"

    def __len__(self) -> int:
        return self.ws.shape[0]

    def select(self, index: int | slice) -> InversionResult:
        """Samples at ``index`` (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return InversionResult(
            ws=self.ws[index],
            image=self.image[index],
            weight_delta=self.weight_delta.select(index) if self.weight_delta is not None else None,
            w_image=self.w_image[index] if self.w_image is not None else None,
            timings=dict(self.timings),
        )

    @staticmethod
    def cat(results: list[InversionResult]) -> InversionResult:
        deltas = [r.weight_delta for r in results]
        w_images = [r.w_image for r in results]
        timings: dict[str, float] = {}
        for r in results:
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        return InversionResult(
            ws=torch.cat([r.ws for r in results]),
            image=torch.cat([r.image for r in results]),
            weight_delta=WeightDelta.cat(deltas) if all(d is not None for d in deltas) else None,
            w_image=torch.cat(w_images) if all(w is not None for w in w_images) else None,
            timings=timings,
        )

    def to(self, device: torch.device | str) -> InversionResult:
        return InversionResult(
            ws=self.ws.to(device), image=self.image.to(device),
            weight_delta=self.weight_delta.to(device) if self.weight_delta is not None else None,
            w_image=self.w_image.to(device) if self.w_image is not None else None,
            timings=dict(self.timings),
        )


@runtime_checkable
class Inverter(Protocol):
    """An inversion method: images ``[B, C, H, W]`` in [-1, 1] -> ``InversionResult``."""

    def invert(self, images: torch.Tensor) -> InversionResult: ...
