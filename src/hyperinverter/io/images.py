"""Image <-> tensor conversion. The one place that knows value ranges: tensors are [-1, 1], NCHW."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoints import atomic_write_bytes

logger = logging.getLogger(__name__)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N,C,H,W]`` in [-1,1] -> ``uint8 [N,H,W,C]``."""
    assert images.ndim == 4, f"expected [N,C,H,W], got {tuple(images.shape)}"
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = tensor_to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def make_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``[N,C,H,W]`` into one ``[1,C,H',W']`` image, ``nrow`` images per row."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].detach().float().cpu()
    return grid[None]


def enlarge_nearest(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N,C,R,R]`` enlarged by the integer factor that brings R to about ``size`` (nearest: small models'
    images are shown without invented detail)."""
    scale = max(1, size // images.shape[-1])
    return torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images


def label_font(size: int):
    """Pillow's default font at ``size`` px (the fixed bitmap font on Pillow without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def labelled_row(images: torch.Tensor, labels: Sequence[str], *, padding: int = 2,
                 font_size: int = 12) -> Image.Image:
    """``[N,C,H,W]`` side by side (as :func:`make_grid` with one row) under a header naming each column."""
    from PIL import ImageDraw

    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    row = tensor_to_pil(make_grid(images, nrow=len(images), padding=padding))[0].convert("RGB")
    header = font_size + 8
    out = Image.new("RGB", (row.width, row.height + header), "white")
    out.paste(row, (0, header))
    draw = ImageDraw.Draw(out)
    font = label_font(font_size)
    width = images.shape[-1]
    for i, label in enumerate(labels):
        left = padding + i * (width + padding)
        text = label
        while text and draw.textlength(text, font=font) > width - 2:  # shorten to fit the column
            text = text[:-1]
        draw.text((left + (width - draw.textlength(text, font=font)) / 2, 3), text, fill="black", font=font)
    return out


def save_image(image: torch.Tensor | Image.Image, path: str | Path, *, durable: bool = True) -> Path:
    """Save ``[1,C,H,W]`` / ``[C,H,W]`` tensor in [-1,1] or a PIL image, atomically; format from suffix."""
    path = Path(path)
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image if image.ndim == 4 else image[None])[0]
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue(), durable=durable)
    return path


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image`` (models take square inputs; resizing a non-square photo would
    squash it)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image if image.width == image.height else image.crop((left, top, left + side, top + side))


def pil_to_tensor(image: Image.Image, *, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """PIL image of any mode -> ``[1,channels,H,W]`` in [-1,1], resized (Lanczos) to ``size`` if given."""
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).float()
    x = x[..., None] if x.ndim == 2 else x
    return (x.permute(2, 0, 1)[None] / 127.5) - 1


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, *, duration_ms: int = 80) -> Path:
    """``[1,C,H,W]`` frames in [-1,1] -> looping GIF, written atomically."""
    pil = [tensor_to_pil(f if f.ndim == 4 else f[None])[0].convert("RGB") for f in frames]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=duration_ms, loop=0)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An input image is missing, unreadable, truncated or degenerate; the message names the file."""


def read_image(path: str | Path) -> Image.Image:
    """Open an image fully (so truncation is caught now), apply its EXIF orientation, return RGB/L/RGBA-safe PIL.

    Transparent images are composited on white; palette, 16-bit and CMYK modes are converted to RGB.
    """
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None
    if im.width < 1 or im.height < 1:
        raise ImageReadError(f"{path}: the image is empty ({im.width}x{im.height})")
    return plain_mode(im)


def plain_mode(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB or L: transparency is composited on white; palette, CMYK, 16-bit etc. converted."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB") if im.mode not in ("I;16", "I", "F") else _high_bit_depth_to_l(im)
    return im.convert("RGB") if im.mode == "RGBA" else im


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image paths; missing inputs are errors."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return found
