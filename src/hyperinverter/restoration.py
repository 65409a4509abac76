"""E2Style's applications through any inversion method: restoration of degraded images and face swapping.

- :func:`restore`: an encoder trained on degraded inputs (``hyperinverter train e2style`` with ``task:``) maps a
  degraded image to the codes of its clean version; ``simulate=True`` first degrades a clean image with the
  model's task (seeded), to see what the model does with a known target.
- :func:`face_swap`: the source's face region is pasted into the target with a feathered elliptical mask, and the
  composite is inverted: the generator's prior blends the seams (the paper's face swapping; the official repository
  ships no script for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.degradations import get_degradation
from .losses.identity import FFHQ_CROP, CropBox, crop_for_align_scale
from .methods import InversionResult
from .pipeline import InversionPipeline


@dataclass
class Restoration:
    """``degraded``: what the model read; ``result``: its inversion (``result.image`` is the restored image)."""

    degraded: torch.Tensor
    result: InversionResult


def restoration_task(pipe: InversionPipeline, method: str | None = None) -> str | None:
    """The restoration task ``method`` (default: the pipeline's) was trained for, or None."""
    return getattr(pipe.inverter(method), "task", None)


def restore(pipe: InversionPipeline, images: torch.Tensor, *, method: str | None = None, simulate: bool = False,
            seed: int = 0, **options) -> Restoration:
    """Restore ``images`` ``[B,C,R,R]`` in [-1, 1] with a model trained for a restoration task.

    ``simulate``: the images are clean; degrade them first with the model's task (generator seeded by ``seed``).
    """
    task = restoration_task(pipe, method)
    if task is None:
        name = method or pipe.default_method
        raise ValueError(f"{name} of this model was not trained for a restoration task; train one with "
                         "`hyperinverter train e2style` and `task: sr4` (or inpainting, colorization, ...)")
    x = images.to(pipe.device)
    if simulate:
        x = get_degradation(task)(x, torch.Generator().manual_seed(seed))
    return Restoration(degraded=x, result=pipe.invert(x, method=method, **options))


def face_mask(size: int, *, crop: CropBox = FFHQ_CROP, align_scale: float = 1.0, feather: float = 0.08,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """``[1,1,size,size]`` in [0, 1]: an ellipse inscribed in the face box of the model's framing (the FFHQ crop at
    ``align_scale``), with edges feathered over ``feather`` of the image size."""
    top, bottom, left, right = crop_for_align_scale(crop, align_scale)
    coords = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cy, cx = (top + bottom) / 2, (left + right) / 2
    ry, rx = (bottom - top) / 2, (right - left) / 2
    radius = (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2).sqrt()  # 1 on the ellipse
    width = feather / min(ry, rx)
    mask = ((1 + width / 2 - radius) / width).clamp(0, 1)
    return mask[None, None]


@dataclass
class FaceSwap:
    """``composite``: the target with the source's face pasted in; ``result``: its inversion."""

    composite: torch.Tensor
    mask: torch.Tensor
    result: InversionResult


def face_swap(pipe: InversionPipeline, source: torch.Tensor, target: torch.Tensor, *, method: str | None = None,
              feather: float = 0.08, **options) -> FaceSwap:
    """The face of ``source`` on ``target`` (both ``[B,C,R,R]`` aligned in the model's framing, in [-1, 1]):
    paste, then invert the composite with ``method``."""
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    mask = face_mask(source.shape[-1], align_scale=pipe.align_scale, feather=feather, device=pipe.device)
    composite = torch.lerp(target.to(pipe.device), source.to(pipe.device), mask)
    return FaceSwap(composite=composite, mask=mask, result=pipe.invert(composite, method=method, **options))
