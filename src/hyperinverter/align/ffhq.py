"""FFHQ-style face alignment from 68 landmarks, with the transform kept for pasting edits back.

The crop is the FFHQ recipe: an oriented square centred a little below the eyes, sized from the
eye-to-eye and eye-to-mouth distances, rotated so that the eyes are level. Where it reaches outside the photo,
the photo is padded as FFHQ's script pads it: by reflection, blurred and faded to the median colour towards the
padded edges (plain reflection showed sharp mirrored copies of the face there). The crop samples where FFHQ's
script does (its quad moved by half a pixel into Pillow's coordinates), with a bicubic warp where the script warps
bilinearly: at ``supersample`` times the size, then reduced (FFHQ's script: 4x; pSp's: 1x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..errors import InputError


class NoFaceFoundError(InputError):
    """No face was detected in an image."""


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and where it came from.

    ``quad``: the crop's corners in the source photo (top-left, bottom-left, bottom-right, top-right),
    ``[4, 2]`` in the landmarks' pixel coordinates. ``affine``: the 2x3 matrix that maps a crop point ``(u, v, 1)``
    to the source (see :func:`quad_affine`). ``source_size``: ``(width, height)`` of the photo. ``landmarks``:
    ``[68, 2]`` in the photo.
    """

    image: Image.Image
    quad: np.ndarray
    affine: np.ndarray
    source_size: tuple[int, int]
    landmarks: np.ndarray

    def placement(self) -> dict:
        """What :func:`paste_back` needs, as plain JSON-able data (kept in inversion files)."""
        return {"quad": self.quad.tolist(), "source_size": list(self.source_size)}


def ffhq_quad(landmarks: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """68 landmarks ``[68, 2]`` (x, y) -> the FFHQ crop quad ``[4, 2]``.

    ``scale`` < 1 crops tighter around the same centre: models trained on faces framed tighter than FFHQ
    (our faces-64) store the scale that matches their training crops.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 (x, y) landmarks, got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x: the crop's horizontal half-axis; tilted by both the eye line and the face's vertical axis.
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * scale
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_affine(quad: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 map from crop coordinates (0..size) to source coordinates for ``quad``, both continuous as Pillow's
    transforms take them (pixel i spans i..i+1). ``quad`` is in the landmarks' pixel coordinates (pixel i at i), so
    its corners are moved by half a pixel, as FFHQ's script moves them (``quad + 0.5``)."""
    top_left, bottom_left, _, top_right = np.asarray(quad, dtype=np.float64) + 0.5
    ex = (top_right - top_left) / size
    ey = (bottom_left - top_left) / size
    return np.array([[ex[0], ey[0], top_left[0]], [ex[1], ey[1], top_left[1]]])


def align_from_landmarks(photo: Image.Image, landmarks: np.ndarray, *, size: int = 1024,
                         scale: float = 1.0, supersample: int = 1) -> AlignedFace:
    """Warp ``photo`` so that the face with ``landmarks`` fills a ``size`` x ``size`` FFHQ-style crop.

    ``supersample``: warp at that many times ``size``, then reduce (Lanczos), as FFHQ's script (4) does so that the
    warp does not alias; 1 warps at the size, as pSp's script does.
    """
    if not (isinstance(supersample, int) and supersample >= 1):
        raise ValueError(f"supersample must be a whole number >= 1, got {supersample!r}")
    photo = photo.convert("RGB")
    quad = ffhq_quad(landmarks, scale=scale)
    affine = quad_affine(quad, size)
    # Shrink first when the crop is much larger than the output (the output's size, not the warp's, as FFHQ's script
    # measures it: a crop of 4x to 16x the output was warped from the full photo, and fine stripes became moiré).
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(side / size * 0.5))
    source, scale = photo, 1.0
    if shrink > 1:
        scale = 1.0 / shrink
        source = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                              Image.LANCZOS)
    arr, q = _ffhq_padded(np.asarray(source), quad * scale, side * scale)
    padded = Image.fromarray(arr)
    warp = size * supersample
    local = quad_affine(q, warp)
    crop = padded.transform((warp, warp), Image.AFFINE, tuple(local.flatten()), resample=Image.BICUBIC)
    if warp != size:
        crop = crop.resize((size, size), Image.LANCZOS)
    return AlignedFace(image=crop, quad=quad, affine=affine, source_size=photo.size,
                       landmarks=np.asarray(landmarks, dtype=np.float64))


def _ffhq_padded(photo: np.ndarray, quad: np.ndarray, quad_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``photo`` (``[H, W, 3]`` uint8) around ``quad`` that the crop samples, padded where the quad
    reaches outside it, and the quad in its coordinates: FFHQ's recipe, from the quad's side ``quad_size``. The
    box of the quad plus a border of a tenth of its side is cut out; where that box leaves the photo, every side is
    reflect-padded by at least 0.3 of the side, the padding (and a third of its width inside) is blurred with a
    Gaussian of 0.02 of the side, and the padding fades to the median colour towards its edge."""
    height, width = photo.shape[:2]
    border = max(int(np.rint(quad_size * 0.1)), 3)
    low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    x0, y0 = max(low[0] - border, 0), max(low[1] - border, 0)
    x1, y1 = min(high[0] + border, width), min(high[1] + border, height)
    if x0 < x1 and y0 < y1 and (x1 - x0 < width or y1 - y0 < height):  # (a quad beyond the photo keeps it all)
        photo, quad, low, high = photo[y0:y1, x0:x1], quad - (x0, y0), low - (x0, y0), high - (x0, y0)
    height, width = photo.shape[:2]
    # (left, top, right, bottom): how far the quad and its border reach outside
    pads = np.maximum([border - low[0], border - low[1], high[0] - width + border, high[1] - height + border], 0)
    if pads.max() <= border - 4:
        return np.ascontiguousarray(photo), quad
    left, top, right, bottom = np.maximum(pads, max(int(np.rint(quad_size * 0.3)), 1))
    image = np.pad(photo.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    y, x = np.arange(h, dtype=np.float32)[:, None, None], np.arange(w, dtype=np.float32)[None, :, None]
    # 1 at the padded image's edges, 0 where the photo begins, negative inside it
    mask = np.maximum(1.0 - np.minimum(x / left, (w - 1 - x) / right), 1.0 - np.minimum(y / top, (h - 1 - y) / bottom))
    image += (_gaussian_blurred(image, quad_size * 0.02) - image) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    image += (np.median(image, axis=(0, 1)) - image) * np.clip(mask, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(image), 0, 255)), quad + (left, top)


def _gaussian_blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` ``[H, W, C]`` blurred over H and W by a Gaussian of ``sigma`` px, truncated at 4 sigma, with
    mirrored edges (SciPy's ``gaussian_filter`` defaults, without SciPy)."""
    import torch
    import torch.nn.functional as F

    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return image.copy()
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = torch.from_numpy((taps / taps.sum()).astype(np.float32))
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[:, None]  # [C, 1, H, W]
    x = F.conv2d(F.conv2d(x, kernel.reshape(1, 1, -1, 1)), kernel.reshape(1, 1, 1, -1))
    return x[:, 0].permute(1, 2, 0).numpy()


def paste_back(photo: Image.Image, edited: Image.Image, face: AlignedFace, *, feather: float = 0.05,
               mask: Image.Image | None = None) -> Image.Image:
    """Put an edited aligned crop back into the photo it came from: the whole crop with a feathered border, or where
    ``mask`` (an "L" image of the crop's size) says, e.g. only the face a swap replaced. The result is in the photo's
    own kind: a grayscale photo stays grayscale, and a photo's alpha is kept."""
    grey, alpha = Image.getmodebase(photo.mode) == "L", photo.getchannel("A") if "A" in photo.getbands() else None
    photo = photo.convert("RGB")
    size = edited.width
    if edited.size != (size, size):
        raise ValueError(f"edited crops must be square, got {edited.size}")
    feathered = mask is None
    if mask is None:
        mask = Image.new("L", (size, size), 0)
        border = max(1, int(size * feather))
        mask.paste(255, (border, border, size - border, size - border))
        mask = mask.filter(ImageFilter.GaussianBlur(border / 2))
    elif mask.mode != "L" or mask.size != (size, size):
        raise ValueError(f"a paste-back mask must be an 'L' image of the crop's {size}x{size}, got {mask.mode} "
                         f"{mask.size[0]}x{mask.size[1]}")
    edited = edited.convert("RGB")
    # A crop larger than the face's place in the photo is first reduced with an antialiasing filter, as alignment
    # reduces the photo: one bicubic warp folded its finer detail (hair) into moiré.
    side = int(np.ceil(np.hypot(*(np.asarray(face.quad[3]) - np.asarray(face.quad[0])))))
    if side < size:
        size = max(side, 1)
        edited, mask = edited.resize((size, size), Image.LANCZOS), mask.resize((size, size), Image.BILINEAR)
    if feathered:  # (the blur's tail reached the crop's edge, 12/255 at 64 px, where the photo takes over: a seam)
        edge = int(np.asarray(mask).max(initial=0, where=_outer_ring(size)))
        mask = mask.point([max(0, round((v - edge) * 255 / (255 - edge))) for v in range(256)]) if edge else mask
    # Source pixel -> crop pixel: the inverse of the crop's affine (rescaled to the edited crop's size).
    forward = quad_affine(face.quad, size)
    matrix = np.vstack([forward, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(matrix)[:2]
    warped = edited.transform(photo.size, Image.AFFINE, tuple(inverse.flatten()), resample=Image.BICUBIC)
    mask = mask.transform(photo.size, Image.AFFINE, tuple(inverse.flatten()), resample=Image.BILINEAR)
    pasted = Image.composite(warped, photo, mask)
    # (a black-and-white photo came back in colour, the model's face a tinted patch in it; a cut-out lost its alpha)
    if grey:
        pasted = pasted.convert("L")
    if alpha is not None:
        pasted.putalpha(alpha)
    return pasted


def _outer_ring(size: int) -> np.ndarray:
    """``[size, size]`` bool: a square image's outermost pixels."""
    ring = np.ones((size, size), dtype=bool)
    ring[1:-1, 1:-1] = False
    return ring


def check_placement(photo: Image.Image, placement: dict) -> None:
    """``ValueError`` unless ``placement`` (:meth:`AlignedFace.placement`) can be a face of ``photo``: its size, and
    a quad that covers a pixel or more."""
    if tuple(placement["source_size"]) != photo.size:
        raise ValueError(f"the photo is {photo.size[0]}x{photo.size[1]}, but the face was aligned in a "
                         f"{placement['source_size'][0]}x{placement['source_size'][1]} photo")
    (x0, y0), (x1, y1), _, (x3, y3) = np.asarray(placement["quad"], dtype=np.float64)
    # (corners on one point or line have no inverse warp: the whole run stopped with "error: Singular matrix")
    if abs((x3 - x0) * (y1 - y0) - (y3 - y0) * (x1 - x0)) < 1:
        raise ValueError(f"the face's quad {placement['quad']} covers less than a pixel")


def paste_back_placement(photo: Image.Image, edited: Image.Image, placement: dict, *,
                         feather: float = 0.05, mask: Image.Image | None = None) -> Image.Image:
    """:func:`paste_back` from a stored :meth:`AlignedFace.placement` (the photo must be the one aligned)."""
    check_placement(photo, placement)
    quad = np.asarray(placement["quad"], dtype=np.float64)
    assert quad.shape == (4, 2), f"a placement quad is [4, 2], got {quad.shape}"
    face = AlignedFace(image=edited, quad=quad, affine=quad_affine(quad, edited.width), source_size=photo.size,
                       landmarks=np.zeros((68, 2)))
    return paste_back(photo, edited, face, feather=feather, mask=mask)


def paste_back_placements(photo: Image.Image, edited: Sequence[Image.Image], placements: Sequence[dict], *,
                          feather: float = 0.05) -> Image.Image:
    """Several faces of one photo pasted back into it (:func:`paste_back_placement`, each feathered), in the order
    given: where two crops overlap, a later face goes over an earlier one. Every placement is checked against the
    photo (:func:`check_placement`) before any is pasted."""
    if len(edited) != len(placements):
        raise ValueError(f"{len(edited)} edited crops for {len(placements)} placements")
    for placement in placements:
        check_placement(photo, placement)
    for face, placement in zip(edited, placements):
        photo = paste_back_placement(photo, face, placement, feather=feather)
    return photo
