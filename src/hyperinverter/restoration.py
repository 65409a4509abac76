"""E2Style's applications through any inversion method: restoration of degraded images and face swapping.

- :func:`restore`: an encoder trained on degraded inputs (``hyperinverter train e2style`` with ``task:``) maps a
  degraded image to the codes of its clean version; ``simulate=True`` first degrades a clean image with the
  model's task (seeded), to see what the model does with a known target.
- :func:`restore_photo`: the same for a photo, whole or face by face (aligned, then pasted back into it).
- :func:`face_swap`: the source's face region is pasted into the target with a feathered elliptical mask, and the
  composite is inverted: the generator's prior blends the seams (the paper's face swapping; the official repository
  ships no script for it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .data.degradations import degrade_at
from .losses.identity import FFHQ_CROP, CropBox, crop_for_align_scale
from .methods import InversionResult
from .pipeline import InversionPipeline

if TYPE_CHECKING:
    from .inversion.batch import Picture


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

    ``simulate``: the images are clean; degrade them first with the model's task (generator seeded by ``seed``), at
    the size its encoder reads, as it was trained (``degrade_at``): ``degraded`` is then at that size. Degraded
    images may come at that size too (256 px for an official model), or at the generator's.
    """
    task = restoration_task(pipe, method)
    if task is None:
        name = method or pipe.default_method
        raise ValueError(f"{name} of this model was not trained for a restoration task; train one with "
                         "`hyperinverter train e2style` and `task: sr4` (or inpainting, colorization, ...)")
    inverter = pipe.inverter(method)
    x, encoder_size = images.to(pipe.device), inverter.encoder_resolution
    if simulate:
        x = degrade_at(x, task, encoder_size, torch.Generator().manual_seed(seed), antialias=inverter.encoder_antialias)
    at_encoder_size = x.shape[-1] == encoder_size != pipe.generator.resolution
    return Restoration(degraded=x, result=pipe.invert(x, method=method, at_encoder_size=at_encoder_size, **options))


@dataclass
class PhotoRestoration:
    """``pictures``: what was restored (the photo's centred square, or each aligned face, with its placement);
    ``restoration``: theirs, in the same order; ``photo``: with a detector, the photo with every restored face
    pasted back, else None."""

    pictures: list[Picture]
    restoration: Restoration
    photo: Image.Image | None


def restore_photo(pipe: InversionPipeline, photo: Image.Image, *, name: str = "photo",
                  source: str | os.PathLike = "photo", detector=None, simulate: bool = False,
                  **options) -> PhotoRestoration:
    """:func:`restore` for a photo: its centred square or, with a face ``detector`` (e.g.
    :class:`hyperinverter.align.Dlib68Detector`), every face aligned at the pipeline's ``align_scale``, restored
    together and pasted back. Raises ``NoFaceFoundError`` (naming ``source``) if the detector finds none."""
    from .inversion.batch import photo_pictures
    from .io.images import tensor_to_pil

    G = pipe.generator
    pictures = photo_pictures(photo, name, source, resolution=G.resolution, channels=G.config.img_channels,
                              detector=detector, align_scale=pipe.align_scale, content_rows=pipe.content_rows)
    # (read from the photo, in [-1, 1]: a bright one, no pixel below mid-grey, is not floats in [0, 1] by mistake.)
    # A degraded photo smaller than the generator is read from its own pixels, as invert reads it (not from their
    # enlargement); a simulated one is degraded from the clean image as before.
    originals = {} if simulate else {"originals": [p.original for p in pictures]}
    restoration = restore(pipe, torch.cat([p.image for p in pictures]), simulate=simulate, warn_unsigned=False,
                          **originals, **options)
    if detector is None:
        return PhotoRestoration(pictures, restoration, None)
    from .align import paste_back_placements

    faces = [face.convert("RGB") for face in tensor_to_pil(restoration.result.image.cpu())]
    photo = paste_back_placements(photo, faces, [picture.placement for picture in pictures])
    return PhotoRestoration(pictures, restoration, photo)


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

    def pasted(self, photo: Image.Image, placement: dict, index: int = 0) -> Image.Image:
        """Sample ``index``'s result in the target's ``photo``, aligned at ``placement``: only the face ellipse goes
        back, since around it the photo is sharper than the model's reconstruction."""
        from .align import paste_back_placement
        from .io.images import tensor_to_pil

        face = tensor_to_pil(self.result.image[index : index + 1].cpu())[0].convert("RGB")
        mask = tensor_to_pil(self.mask.cpu() * 2 - 1)[0].convert("L")
        return paste_back_placement(photo, face, placement, mask=mask)


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
