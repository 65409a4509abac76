"""FFHQ-style face alignment from 68 landmarks, with the transform kept for pasting edits back.

The crop is the FFHQ recipe: an oriented square centred a little below the eyes, sized from the
eye-to-eye and eye-to-mouth distances, rotated so that the eyes are level. Regions outside the photo
are filled by reflection (FFHQ additionally blurs them; we keep plain reflection).
"""

from __future__ import annotations

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
    ``[4, 2]`` in pixels. ``affine``: the 2x3 matrix that maps a crop pixel ``(u, v, 1)`` to source
    coordinates. ``source_size``: ``(width, height)`` of the photo. ``landmarks``: ``[68, 2]`` in the photo.
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
    """The 2x3 map from crop pixels (0..size) to source coordinates for ``quad``."""
    top_left, bottom_left, _, top_right = np.asarray(quad, dtype=np.float64)
    ex = (top_right - top_left) / size
    ey = (bottom_left - top_left) / size
    return np.array([[ex[0], ey[0], top_left[0]], [ex[1], ey[1], top_left[1]]])


def align_from_landmarks(photo: Image.Image, landmarks: np.ndarray, *, size: int = 1024,
                         scale: float = 1.0) -> AlignedFace:
    """Warp ``photo`` so that the face with ``landmarks`` fills a ``size`` x ``size`` FFHQ-style crop."""
    photo = photo.convert("RGB")
    quad = ffhq_quad(landmarks, scale=scale)
    affine = quad_affine(quad, size)
    # Shrink first when the crop is much larger than the output, so the warp does not alias.
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(side / size * 0.5))
    source, scale = photo, 1.0
    if shrink > 1:
        scale = 1.0 / shrink
        source = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                              Image.LANCZOS)
    # Reflect-pad enough that the whole quad lies inside the padded image.
    q = quad * scale
    pad = int(np.ceil(max(0.0, -q.min(), q[:, 0].max() - source.width, q[:, 1].max() - source.height))) + 2
    arr = np.asarray(source)
    if pad > 0:
        arr = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")  # numpy repeats reflections as needed
        q = q + pad
    padded = Image.fromarray(arr)
    local = quad_affine(q, size)
    crop = padded.transform((size, size), Image.AFFINE, tuple(local.flatten()), resample=Image.BICUBIC)
    return AlignedFace(image=crop, quad=quad, affine=affine, source_size=photo.size,
                       landmarks=np.asarray(landmarks, dtype=np.float64))


def paste_back(photo: Image.Image, edited: Image.Image, face: AlignedFace, *, feather: float = 0.05,
               mask: Image.Image | None = None) -> Image.Image:
    """Put an edited aligned crop back into the photo it came from: the whole crop with a feathered border, or where
    ``mask`` (an "L" image of the crop's size) says, e.g. only the face a swap replaced."""
    photo = photo.convert("RGB")
    size = edited.width
    if edited.size != (size, size):
        raise ValueError(f"edited crops must be square, got {edited.size}")
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
    # Source pixel -> crop pixel: the inverse of the crop's affine (rescaled to the edited crop's size).
    forward = quad_affine(face.quad, size)
    matrix = np.vstack([forward, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(matrix)[:2]
    warped = edited.transform(photo.size, Image.AFFINE, tuple(inverse.flatten()), resample=Image.BICUBIC)
    mask = mask.transform(photo.size, Image.AFFINE, tuple(inverse.flatten()), resample=Image.BILINEAR)
    return Image.composite(warped, photo, mask)


def paste_back_placement(photo: Image.Image, edited: Image.Image, placement: dict, *,
                         feather: float = 0.05, mask: Image.Image | None = None) -> Image.Image:
    """:func:`paste_back` from a stored :meth:`AlignedFace.placement` (the photo must be the one aligned)."""
    if tuple(placement["source_size"]) != photo.size:
        raise ValueError(f"the photo is {photo.size[0]}x{photo.size[1]}, but the face was aligned in a "
                         f"{placement['source_size'][0]}x{placement['source_size'][1]} photo")
    quad = np.asarray(placement["quad"], dtype=np.float64)
    assert quad.shape == (4, 2), f"a placement quad is [4, 2], got {quad.shape}"
    face = AlignedFace(image=edited, quad=quad, affine=quad_affine(quad, edited.width), source_size=photo.size,
                       landmarks=np.zeros((68, 2)))
    return paste_back(photo, edited, face, feather=feather, mask=mask)

