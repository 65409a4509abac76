"""Image <-> tensor conversion. The one place that knows value ranges: tensors are [-1, 1], NCHW."""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from ..errors import ImageReadError, OutputError, describe_os_error
from .files import WRITER_TAG, atomic_write_bytes, refuse_special_file, special_file_kind

logger = logging.getLogger(__name__)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N,C,H,W]`` in [-1,1] -> ``uint8 [N,H,W,C]``; NaN or infinite values are a ``ValueError``."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    x = images.detach().float().cpu()
    if not bool(torch.isfinite(x).all()):  # (NaN was written as black pixels, a picture that hid the failure)
        raise ValueError("the images hold NaN or infinite values; they are not written as pictures")
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = tensor_to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def make_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``[N,C,H,W]`` into one ``[1,C,H',W']`` image, ``nrow`` images per row."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, grid_side(rows, h, padding=padding), grid_side(nrow, w, padding=padding)), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].detach().float().cpu()
    return grid[None]


def grid_side(count: int, side: int, *, padding: int = 2) -> int:
    """The length ``make_grid`` draws for ``count`` images of ``side`` px in a row (or a column)."""
    return count * (side + padding) + padding


def most_in_a_row(side: int, *, padding: int = 2) -> int:
    """How many images of ``side`` px one ``make_grid`` row holds within ``MAX_PICTURE_SIDE``."""
    return (MAX_PICTURE_SIDE - padding) // (side + padding)


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



def labelled_columns(columns: dict[str, torch.Tensor], *, scale: int = 2) -> Image.Image:
    """Figures of a few images: ``label -> [N,C,R,R]`` in [-1,1], one labelled column each (an image per row),
    enlarged ``scale`` times by nearest neighbour."""
    size = next(iter(columns.values())).shape[-1] * scale
    strips = [make_grid(enlarge_nearest(c.cpu().clamp(-1, 1), size), nrow=1) for c in columns.values()]
    return labelled_row(torch.cat(strips), list(columns))

# The image formats results are written in, by suffix; any other suffix gets PNG.
WRITTEN_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


# The widest picture a command draws (a grid of samples, a GANSpace sheet): it is made in memory with everything in
# it, and viewers give up on larger images. 256 samples at 1024 px fill it.
MAX_PICTURE_SIDE = 16_384

_XMP_PACKET = ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
               '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
               f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{WRITER_TAG}"/></rdf:RDF></x:xmpmeta>'
               '<?xpacket end="r"?>').encode()

# A PNG text chunk: the digest of what made a result (see image_bytes), so that a re-run knows its own work.
MADE_WITH_CHUNK = "hyperinverter:made-with"
# How a photo file becomes what a method reads, in what a re-run checks before it skips an output made from a photo
# (an inversion, an aligned face, an edit or a restoration of it): raised where the same photo gives other pixels, so
# that outputs of the old reading are made again. 2: a face crop shrunk against the output's size, as FFHQ's script
# does; a photo smaller than the generator read by encoders from its own pixels.
PHOTO_READING = 2


def image_bytes(image: torch.Tensor | Image.Image, suffix: str = ".png", *, made_with: str | None = None) -> bytes:
    """A ``[1,C,H,W]`` / ``[C,H,W]`` tensor in [-1,1] or a PIL image, encoded in the format ``suffix`` names.

    ``made_with``: a digest of what made the image (the model, its inputs and settings), stored in the PNG and read
    back by :func:`images_made_with`, so that a re-run skips only the results it would make again.
    """
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image if image.ndim == 4 else image[None])[0]
    file_format = WRITTEN_FORMATS.get(suffix.lower(), "PNG")
    if made_with is not None and file_format != "PNG":
        raise ValueError(f"made_with is stored in PNG files only, not {suffix}")
    buf = io.BytesIO()
    image.save(buf, format=file_format, **_writer_mark(file_format, made_with))
    return buf.getvalue()


def _writer_mark(file_format: str, made_with: str | None = None) -> dict:
    """The save options that mark an image as ours (``io.files.WRITER_TAG``, read back by ``written_by_us``), so
    that a later output replaces it and never a user's picture of the same name."""
    if file_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", WRITER_TAG)
        if made_with is not None:
            info.add_text(MADE_WITH_CHUNK, made_with)
        return {"pnginfo": info}
    if file_format == "WEBP":
        return {"xmp": _XMP_PACKET}
    return {"comment": WRITER_TAG.encode()}  # JPEG and GIF


def images_made_with(paths: Sequence[str | os.PathLike], made_with: str) -> bool:
    """Whether every file of ``paths`` is a PNG that :func:`image_bytes` wrote with this ``made_with`` (a missing,
    unreadable or foreign file is not)."""
    for path in paths:
        if special_file_kind(path) is not None:
            return False
        try:
            with Image.open(path) as im:  # reads the chunks before the pixels only
                if im.format != "PNG" or im.info.get(MADE_WITH_CHUNK) != made_with:
                    return False
        except (OSError, ValueError, Image.DecompressionBombError):
            return False
    return True


def image_output_path(path: str | os.PathLike) -> Path:
    """Where an image result asked for at ``path`` is written: ``path`` if its suffix names a format results are
    written in (``WRITTEN_FORMATS``), else ``path`` + ``.png``, so that ``--out notes.txt`` never replaces a
    text file with a PNG."""
    path = Path(path)
    if path.is_dir():  # (it wrote DIR.png beside the folder)
        raise OutputError(path, "is a folder; give a file name for the picture (for example "
                                f"{path / 'result.png'})")
    return path if path.suffix.lower() in WRITTEN_FORMATS else path.with_name(path.name + ".png")


def save_image(image: torch.Tensor | Image.Image, path: str | Path, *, durable: bool = True,
               replace_any: bool = False) -> Path:
    """Save ``[1,C,H,W]`` / ``[C,H,W]`` tensor in [-1,1] or a PIL image, atomically; format from suffix.
    ``replace_any``: into a folder that is ours as a whole (see :func:`~hyperinverter.io.files.atomic_write_group`)."""
    return atomic_write_bytes(path, image_bytes(image, Path(path).suffix), durable=durable, replace_any=replace_any)


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image`` (models take square inputs; resizing a non-square photo would
    squash it)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image if image.width == image.height else image.crop((left, top, left + side, top + side))


def check_content_rows(rows, source: str | os.PathLike = "content_rows") -> tuple[float, float]:
    """``(top, bottom)``: the rows of a square generator image that hold a domain's content, as fractions of its
    side (LSUN cars at 512 px: 64 to 448, ``(0.125, 0.875)``); a ``ValueError`` naming ``source`` otherwise."""
    if (not isinstance(rows, (list, tuple)) or len(rows) != 2
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rows)
            or not 0 <= rows[0] < rows[1] <= 1):
        raise ValueError(f"{os.fspath(source)}: content rows must be [top, bottom] fractions with 0 <= top < bottom "
                         f"<= 1, got {rows!r}")
    return float(rows[0]), float(rows[1])


def describe_content_rows(rows: tuple[float, float] | None) -> str:
    """``rows`` in words, for messages: "the whole square" or "the content rows [0.125, 0.875]"."""
    return "the whole square" if rows is None else f"the content rows {list(rows)}"


def fit_to_canvas(image: Image.Image, content_rows: tuple[float, float] | None = None, *,
                  side: int | None = None) -> Image.Image:
    """A photo as a square generator image: its centred square (never squashed) or, for a domain whose content
    fills only ``content_rows`` of the square (cars), the whole photo squashed into those rows and the rest black,
    as the generator's training images were padded (the official codes squash cars photos to 192x256 too).
    ``side``: the canvas's side (default: the photo's larger side; a caller that resizes to the model anyway gives
    its resolution, so that a panorama never makes a canvas of its width squared)."""
    if content_rows is None:
        return center_square(image)
    top, bottom = check_content_rows(content_rows)
    side = side or max(image.size)
    canvas = Image.new(image.mode, (side, side))  # black, in any mode
    rows = round(top * side), round(bottom * side)
    canvas.paste(image.resize((side, rows[1] - rows[0]), Image.LANCZOS), (0, rows[0]))
    return canvas


def content_of(images: torch.Tensor, content_rows: tuple[float, float] | None) -> torch.Tensor:
    """The ``content_rows`` of square images ``[..., R, R]`` (all of them for None): what :func:`fit_to_canvas` put a
    photo into, and what the official cars codes read, score and save."""
    if content_rows is None:
        return images
    side = images.shape[-2]
    return images[..., round(content_rows[0] * side) : round(content_rows[1] * side), :]


def pil_to_tensor(image: Image.Image, *, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """PIL image of any mode -> ``[1,channels,H,W]`` in [-1,1] (``channels``: 1 or 3), resized (Lanczos) to ``size``
    if given (at most ``MAX_PICTURE_SIDE``)."""
    if channels not in (1, 3):  # (2 and 4 gave 3 channels without a word)
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if size is not None and not (isinstance(size, int) and 1 <= size <= MAX_PICTURE_SIDE):  # (10**6 ran out of memory)
        raise ValueError(f"size must be an integer from 1 to {MAX_PICTURE_SIDE}, got {size!r}")
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).float()
    x = x[..., None] if x.ndim == 2 else x
    return (x.permute(2, 0, 1)[None] / 127.5) - 1


def photo_tensors(image: Image.Image, *, size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A square photo -> (it at ``size`` (:func:`pil_to_tensor`), it at its own size where that is smaller, else
    None). The encoder methods read the smaller photo, resized as their official scripts resize the photo as read
    (``Inverter.encoder_view``), not its Lanczos enlargement, which reached them blurred."""
    x = pil_to_tensor(image, size=size, channels=channels)
    smaller = image.size[0] == image.size[1] < size
    return x, pil_to_tensor(image, channels=channels) if smaller else None


def gif_bytes(frames: Sequence[torch.Tensor], *, duration_ms: int = 80) -> bytes:
    """``[1,C,H,W]`` / ``[C,H,W]`` frames in [-1,1] -> a looping GIF."""
    pil = [tensor_to_pil(f if f.ndim == 4 else f[None])[0].convert("RGB") for f in frames]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=duration_ms, loop=0,
                **_writer_mark("GIF"))
    return buf.getvalue()


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, *, duration_ms: int = 80) -> Path:
    """``[1,C,H,W]`` frames in [-1,1] -> looping GIF, written atomically."""
    return atomic_write_bytes(path, gif_bytes(frames, duration_ms=duration_ms))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic",
                  ".heif",
                  # research datasets' and tools' formats that Pillow reads (a folder of them was passed over)
                  ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".qoi", ".pcx")
# Phones' HEIC/HEIF photos are read by the pillow-heif plugin (the `heif` extra), registered on first use.
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_heif_registered: bool | None = None  # None: not tried yet
# Pillow's own decompression-bomb limit (about 89 megapixels): enough for any camera, and the bound of what a
# batch job decodes without being asked. The web page sets a lower one.
DEFAULT_MAX_PIXELS = 89_478_485
ImageSource = Union[str, os.PathLike, bytes, Image.Image]


def _register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once; False when the plugin is not installed."""
    global _heif_registered
    if _heif_registered is None:
        try:
            import pillow_heif
        except ImportError:
            _heif_registered = False
        else:
            pillow_heif.register_heif_opener()
            _heif_registered = True
    return _heif_registered


def _unreadable_cause(source: ImageSource) -> str:
    """Why Pillow could not identify ``source``: a HEIC photo without the plugin, or an unknown or corrupt file."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                head = f.read(12)
        except OSError:
            head = b""
    else:
        head = bytes(source[:12]) if isinstance(source, (bytes, bytearray, memoryview)) else b""
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS and not _register_heif():
        return "a HEIC/HEIF photo, which needs the pillow-heif plugin: pip install 'hyperinverter[heif]'"
    return "not a readable image (unknown or corrupt format)"


# PNG colour type -> samples per pixel (grey, -, RGB, palette, grey+alpha, -, RGBA).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7's seven passes: (first column, first row, column step, row step).
_ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_missing_data(stream: io.BufferedIOBase) -> str | None:
    """Why a PNG's image data falls short of its header, or None when it holds every row it declares.

    Pillow fills the rows of an image-data stream that ends early (a complete zlib stream of fewer rows) with
    zeros, without a word: the file reads as a picture with black rows at the bottom. This reads the chunks and
    inflates the data piece by piece, counting bytes, so it holds no more than one piece of it.
    """
    import struct
    import zlib

    if stream.read(8) != b"\x89PNG\r\n\x1a\n":
        return None
    inflate, inflated, expected = zlib.decompressobj(), 0, None
    while True:
        head = stream.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IHDR" and expected is None:
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", stream.read(13))
            if colour not in _PNG_SAMPLES:
                return None  # Pillow refuses it on its own
            bits = depth * _PNG_SAMPLES[colour]
            passes = _ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
            expected = 0
            for x0, y0, dx, dy in passes:
                columns, rows = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
                if columns and rows:
                    expected += rows * (1 + -(-columns * bits // 8))  # each row starts with its filter byte
            stream.seek(length - 13 + 4, io.SEEK_CUR)
        elif kind == b"IDAT":
            data = stream.read(length)
            stream.seek(4, io.SEEK_CUR)
            while not inflate.eof and inflated < (expected or 0):  # (until this chunk's input and output are spent)
                out = inflate.decompress(data, 1 << 20)
                data = inflate.unconsumed_tail
                if not out and not data:
                    break
                inflated += len(out)
        elif kind == b"IEND":
            break
        else:
            stream.seek(length + 4, io.SEEK_CUR)
    if expected is not None and inflated < expected:
        return (f"its image data ends early: {inflated:,} of the {expected:,} bytes its header declares (the rows "
                f"after that would read as black)")
    return None


def read_image(source: ImageSource, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               ) -> Image.Image:
    """The one way from a file, an upload's bytes or a PIL image to a plain RGB or L image.

    Decodes fully (so truncation is caught now), applies the EXIF orientation, converts the colours to sRGB
    through the ICC profile the file embeds, composites transparency on white, and maps every other mode
    (palette, CMYK, YCbCr, 16-bit and float) to RGB or L. Any failure is an ``ImageReadError`` naming ``name``
    (default: the path) and the cause; Pillow's warnings are logged with the name, never raised as Python
    warnings. ``max_pixels``: larger images are refused before decoding.

    Colour profiles (:func:`_to_srgb`): a phone's Display P3, a camera's Adobe RGB or a print workflow's CMYK
    profile is converted to sRGB with the perceptual intent; an sRGB profile keeps the exact values, and a
    grayscale image keeps its values whatever its gray profile. A corrupt profile, or one that does not fit the
    image's mode, is ignored with a warning naming the image.
    """
    from PIL import UnidentifiedImageError

    _register_heif()
    label = name if name is not None else (os.fsdecode(source) if isinstance(source, (str, os.PathLike))
                                           else "the image")
    opened: Image.Image | None = None  # what this call opened: closed unless it is the result
    result: Image.Image | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(source, Image.Image):
                im = source
            else:
                if isinstance(source, (str, os.PathLike)):
                    if not os.fspath(source):  # (Path("") is the working folder: "'': is a folder")
                        raise ImageReadError("''", "is an empty path, not an image file")
                    path = Path(source)
                    if path.is_dir():
                        raise ImageReadError(label, "is a folder, not an image file")
                    if not path.exists():
                        cause = "is a broken symbolic link" if path.is_symlink() else "no such file"
                        raise ImageReadError(label, cause)
                    refuse_special_file(path, lambda _, cause: ImageReadError(label, cause), "an image file")
                    im = opened = Image.open(path)
                elif isinstance(source, (bytes, bytearray, memoryview)):
                    im = opened = Image.open(io.BytesIO(source))
                else:  # (a list of numbers was "a bytes-like object is required, not 'int'")
                    raise ImageReadError(label, f"is of type {type(source).__name__}, not a path, bytes or a PIL image")
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageReadError(label, f"is {im.width}x{im.height} pixels, more than the limit of "
                                     f"{max_pixels:,} pixels")
            im.load()
            if opened is not None and opened.format == "PNG" and im.height and not any(
                    im.crop((0, im.height - 1, im.width, im.height)).tobytes()):
                # The rows Pillow fills are zeros: only a PNG whose last row is all zero is read again and counted.
                with (open(path, "rb") if isinstance(source, (str, os.PathLike)) else io.BytesIO(source)) as raw:
                    short = png_missing_data(raw)
                if short:
                    raise ImageReadError(label, short)
            if im.width < 1 or im.height < 1:
                raise ImageReadError(label, f"the image is empty ({im.width}x{im.height})")
            im = _upright(im, label)
            im = _to_srgb(im, label)
            im = plain_mode(im)
            if im is opened and getattr(opened, "fp", None) is not None:
                im = opened.copy()  # a multi-frame file (GIF, TIFF) keeps its file open for its other frames
            result = im
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            raise ImageReadError(label, _unreadable_cause(source)) from None
        except Image.DecompressionBombError as e:
            raise ImageReadError(label, f"refused as a decompression bomb ({e})") from None
        except PermissionError:
            raise ImageReadError(label, "permission denied") from None
        except MemoryError:
            raise ImageReadError(label, "too large to decode in memory") from None
        except Exception as e:  # noqa: BLE001 - a hostile file fails inside Pillow's decoders in many ways
            cause = str(e) or type(e).__name__
            raise ImageReadError(label, f"not a readable image ({cause})") from None
        finally:
            if opened is not None and opened is not result:  # (the image returned may be the one opened)
                opened.close()
    for w in caught:
        logger.warning("%s: %s", label, w.message)
    return result


def _upright(im: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation; a corrupt EXIF block is ignored (logged), not a reason to lose the image."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - malformed EXIF fails in several ways
        logger.warning("%s: ignoring its unreadable EXIF orientation (%s)", label, e)
        return im


def _to_srgb(im: Image.Image, label: str) -> Image.Image:
    """``im`` in sRGB, converted through the ICC profile its file embeds (``im.info["icc_profile"]``), if any.

    RGB, RGBA (its alpha kept) and palette images with an RGB profile, and CMYK images with a CMYK profile (not
    Pillow's naive CMYK to RGB), are converted to RGB, or RGBA when transparent, with the perceptual rendering
    intent. An sRGB profile (its description starts with "sRGB") changes nothing, so such images keep their
    exact values; grayscale images keep theirs whatever their gray profile says. A profile that cannot be read or
    applied, or whose colour space does not fit the image's mode, is ignored (logged), not a reason to lose the
    image.
    """
    data = im.info.get("icc_profile")
    if not data:
        return im
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
        if (profile.profile.profile_description or "").startswith("sRGB"):
            return im  # (quietly, also where the mode is gray: some tools tag every image sRGB)
        space = profile.profile.xcolor_space.strip()
        if space != _icc_space(im.mode):
            logger.warning("%s: ignoring its ICC colour profile, which is for %s images, not %s ones", label,
                           space, im.mode)
            return im
        if space not in ("RGB", "CMYK"):
            return im
        # (not has_transparency_data: Pillow 10.1 added it, and the package takes 10.0)
        transparent = im.mode.endswith(("A", "a")) or "transparency" in im.info
        if im.mode not in ("RGBA", "CMYK") and (im.mode != "RGB" or transparent):  # palette, or RGB's tRNS colour
            im = im.convert("RGBA" if transparent else "RGB")
        return ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"),
                                         outputMode="RGBA" if im.mode == "RGBA" else "RGB")
    except Exception as e:  # noqa: BLE001 - a malformed profile fails inside littlecms in several ways
        logger.warning("%s: ignoring its unusable ICC colour profile (%s)", label, e)
        return im


# The modes whose base mode (L or RGB) does not say their ICC colour space.
_ICC_SPACES = {"CMYK": "CMYK", "LAB": "Lab", "HSV": None}


def _icc_space(mode: str) -> str | None:
    """The ICC colour space (``xcolor_space``, stripped) of an image mode's pixels: CMYK, Lab, GRAY (L, LA, 1,
    16-bit and float) or RGB (RGB, RGBA, palette, YCbCr); None for HSV."""
    if mode in _ICC_SPACES:
        return _ICC_SPACES[mode]
    return "GRAY" if Image.getmodebase(mode) == "L" else "RGB"


def plain_mode(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB or L: transparency is composited on white; palette, CMYK, YCbCr, LAB and HSV become
    RGB; 1-bit, 16-bit, 32-bit and float grayscale become L (see :func:`_grayscale_to_l`)."""
    # (a grey or RGB PNG's transparent colour, its tRNS chunk, read as that colour: a logo's background was black)
    if im.mode in ("RGB", "L") and "transparency" not in im.info:
        return im
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return _grayscale_to_l(im)
    if im.mode == "1":
        return im.convert("L")
    if im.mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(im, ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
    return im.convert("RGB")


def _grayscale_to_l(im: Image.Image) -> Image.Image:
    """16-bit (``I;16``, ``I;16B``, ...), 32-bit integer (``I``) and float (``F``) grayscale -> 8-bit L.

    Integer images are scaled by the range their values fit (8, 16 or 32 bits), so a dark 16-bit image stays
    dark; float images in [0, 1] are scaled by 255, other floats by their own range.
    """
    arr = np.asarray(im).astype(np.float64)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if im.mode == "F":
        if lo >= 0 and hi <= 1:
            scaled = arr * 255
        elif lo >= 0 and hi <= 255:
            scaled = arr
        else:
            scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    elif im.mode.startswith("I;16") or (lo >= 0 and hi <= 65535 and hi > 255):
        scaled = arr / 257
    elif lo >= 0 and hi <= 255:
        scaled = arr
    else:
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8), mode="L")


@dataclass(frozen=True)
class FoundImages:
    """What :func:`find_images` found: the image files, and the inputs that cannot be images (with why)."""

    paths: list[Path]
    problems: list[ImageReadError]


def find_images(inputs: Sequence[str | os.PathLike] | str | os.PathLike, *,
                skip: Sequence[str | os.PathLike] = (), suffixes: Sequence[str] = IMAGE_SUFFIXES) -> FoundImages:
    """Expand files and folders (recursively, sorted) into image paths, once each (``inputs``: paths, or one).

    Inputs that cannot be images are returned as problems, not dropped: a missing input, a broken symbolic
    link, a folder that cannot be listed, or an entry that cannot be looked at (in a folder that may be listed but
    not entered); the rest are found all the same. A folder with an image suffix inside a folder is a folder (its
    images are taken), with a warning. Files named explicitly are kept whatever their suffix (reading them says
    whether they are images); in folders, only files with one of ``suffixes`` (default: the image suffixes) are
    taken.

    ``skip``: folders inside an input folder that its expansion does not enter, such as the command's own output
    folder (a re-run would otherwise take the results for inputs). An input folder that is itself one of them is
    expanded (what would overwrite an input is the writer's to refuse).

    An input folder in which nothing is found, among inputs in which something is, is a problem too (a mistyped
    folder passed without a word); where nothing at all is found, the caller says so (:func:`no_images_error`).
    """
    if isinstance(inputs, (str, os.PathLike)):  # one path, not a sequence of its characters (it scanned "/")
        inputs = [inputs]
    paths: list[Path] = []
    problems: list[ImageReadError] = []
    seen: set[Path] = set()
    skip = [Path(folder).resolve() for folder in skip]
    suffixes = tuple(s.lower() for s in suffixes)

    found_in_input = 0  # images and problems under the input being expanded, taken before or not

    def take(p: Path) -> None:
        nonlocal found_in_input
        found_in_input += 1
        key = p.resolve() if p.exists() else p.absolute()
        if key not in seen:
            seen.add(key)
            paths.append(p)

    def look_at(q: Path, inside: list[Path]) -> None:  # an entry of an input folder
        if q.is_symlink() and q.is_dir():  # (not followed, as rglob did not; a warning said its images were read)
            logger.warning("%s: is a link to a folder, which is not followed; give it as an input to read "
                           "its images", q)
        elif q.is_dir():
            if q.suffix.lower() in suffixes:  # (its images are taken as any folder's: nothing failed)
                logger.warning("%s: is a folder with an image's name; the images in it are read as well", q)
        elif q.suffix.lower() not in suffixes:
            pass
        elif q.is_symlink() and not q.exists():  # (before resolve(), which a link to itself made an internal error)
            problems.append(ImageReadError(q, "is a broken symbolic link"))
        elif any(q.resolve().is_relative_to(f) for f in inside):
            pass
        elif q.is_file():
            take(q)
        elif special_file_kind(q) is not None:  # (a named pipe was passed over without a word)
            problems.append(ImageReadError(q, f"is {special_file_kind(q)}, not an image file"))

    empty_folders: list[Path] = []
    for item in inputs:
        p = Path(item)
        try:
            if p.is_dir():
                inside = [folder for folder in skip if folder != p.resolve()]
                found_in_input, problems_before = 0, len(problems)
                for q in _entries_under(p, problems, inside):
                    try:
                        look_at(q, inside)
                    except OSError as e:  # (in a folder that may be listed but not entered: it ended the run)
                        if q.suffix.lower() in suffixes:
                            problems.append(ImageReadError(q, describe_os_error(e, with_file=False)))
                if not found_in_input and len(problems) == problems_before:
                    empty_folders.append(p)
            elif p.exists():
                take(p)
            else:
                problems.append(ImageReadError(p, "is a broken symbolic link" if p.is_symlink() else "no such file or "
                                               "folder"))
        except OSError as e:
            problems.append(ImageReadError(p, describe_os_error(e, with_file=False)))
    if paths or problems:
        problems += [ImageReadError(p, no_images_error([p]).cause) for p in empty_folders]
    return FoundImages(paths, problems)


def _entries_under(folder: Path, problems: list[ImageReadError], skip: Sequence[Path] = ()) -> list[Path]:
    """Every entry under ``folder``, sorted as ``sorted(folder.rglob("*"))`` gives them (links to folders are not
    followed, nor are the folders of ``skip`` entered). A folder that cannot be listed is a problem (rglob passed
    over it without a word), and the rest is listed all the same: one unreadable folder failed the whole run."""
    entries: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                found = list(listing)
        except OSError as e:
            cause = describe_os_error(e, with_file=False)
            problems.append(ImageReadError(current, f"is a folder that cannot be read ({cause}): its images are left "
                                           "out"))
            continue
        for entry in found:
            path = current / entry.name
            entries.append(path)
            try:
                is_folder = entry.is_dir(follow_symlinks=False)  # (from the listing: no stat, which may be refused)
            except OSError:
                is_folder = False
            if is_folder and path.resolve() not in skip:
                pending.append(path)
    return sorted(entries)


def no_images_error(inputs: Sequence[str | os.PathLike]) -> ImageReadError:
    """The error for inputs in which :func:`find_images` found nothing, as ``<inputs>: <cause>``."""
    names = ", ".join(os.fsdecode(p) for p in inputs)
    return ImageReadError(names, f"no image files in {'it' if len(inputs) == 1 else 'them'} (looked for "
                                 f"{', '.join(IMAGE_SUFFIXES)})")
