"""Builders of hostile inputs: broken, odd and malicious images, checkpoints, configs and side files.

Each builder writes one file (or folder) into ``folder`` and returns its path. They are used by
``test_hostile_inputs.py`` and reproduce what ``docs/reliability.md`` lists.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_chunk(kind: bytes, data: bytes) -> bytes:
    """A valid 8x8 PNG with one extra chunk right after IHDR."""
    plain = png_bytes(Image.new("RGB", (8, 8), "red"))
    return plain[:33] + _chunk(kind, data) + plain[33:]


ZLIB_BOMB = zlib.compress(b"\0" * (8 << 20), 9)  # 8 KB that inflate to 8 MB, past Pillow's 1 MB text limit


def write(folder: Path, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- images -------------------------------------------------------------------------------------------------


def empty_file(folder: Path) -> Path:
    return write(folder, "empty.png", b"")


def random_bytes_jpg(folder: Path) -> Path:
    return write(folder, "noise.jpg", np.random.default_rng(1).bytes(3000))


def truncated_png(folder: Path) -> Path:
    data = png_bytes(photo(2, (64, 64)))
    return write(folder, "truncated.png", data[: len(data) // 2])


def truncated_jpeg(folder: Path) -> Path:
    buf = io.BytesIO()
    photo(3, (64, 64)).save(buf, format="JPEG")
    return write(folder, "truncated.jpg", buf.getvalue()[:400])


def _png(width: int, height: int, colour: int, depth: int, raw: bytes, *, interlace: int = 0) -> bytes:
    """A PNG whose image data is ``raw`` (filter bytes and samples), compressed as one complete zlib stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def png_missing_rows(folder: Path) -> Path:
    """A 64x64 RGB PNG whose image data is a complete zlib stream of its first 40 rows (Pillow reads it with black
    rows below them, without a word)."""
    rows = np.asarray(photo(7, (64, 64)))
    raw = b"".join(b"\0" + row.tobytes() for row in rows[:40])
    return write(folder, "missing-rows.png", _png(64, 64, 2, 8, raw))


def _interlaced_rgb(width: int, height: int, value: int) -> bytes:
    """The image data of an interlaced (Adam7) RGB PNG, every sample ``value``: each non-empty pass's rows, each
    row a filter byte (0: none) and its samples."""
    raw = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        for _ in range(rows if columns else 0):
            raw += b"\0" + bytes([value]) * (3 * columns)
    return bytes(raw)


def interlaced_png(folder: Path) -> Path:
    """A whole interlaced 13x11 RGB PNG, every sample 200."""
    return write(folder, "interlaced.png", _png(13, 11, 2, 8, _interlaced_rgb(13, 11, 200), interlace=1))


def png_black_bottom(folder: Path) -> Path:
    """A whole PNG whose last rows are black, as a missing part reads (the data check runs on it, and passes)."""
    pixels = np.asarray(photo(8, (64, 64))).copy()
    pixels[40:] = 0
    path = Path(folder) / "black-bottom.png"
    Image.fromarray(pixels).save(path)
    return path


def interlaced_png_missing_pass(folder: Path) -> Path:
    """The same PNG with the last rows of its last pass cut off."""
    return write(folder, "interlaced-short.png", _png(13, 11, 2, 8, _interlaced_rgb(13, 11, 200)[:-100],
                                                      interlace=1))


def ztxt_bomb(folder: Path) -> Path:
    return write(folder, "ztxt-bomb.png", png_with_chunk(b"zTXt", b"Comment\0\0" + ZLIB_BOMB))


def iccp_bomb(folder: Path) -> Path:
    return write(folder, "iccp-bomb.png", png_with_chunk(b"iCCP", b"profile\0\0" + ZLIB_BOMB))


def pixel_bomb_header(folder: Path) -> Path:
    """A PNG that declares 50000 x 50000 pixels (2.5 gigapixels) in a few bytes."""
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return write(folder, "pixel-bomb.png", data)


def tiff_bad_width(folder: Path) -> Path:
    buf = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    offset = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        entry = offset + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag == 256:  # ImageWidth
            data[entry + 8 : entry + 12] = struct.pack("<I", 70000) if kind == 4 else struct.pack("<HH", 65535, 0)
    return write(folder, "bad-width.tif", bytes(data))


def text_as_png(folder: Path) -> Path:
    return write(folder, "notes.png", b"this is not an image, just text\n" * 10)


def html_as_jpg(folder: Path) -> Path:
    return write(folder, "page.jpg", b"<!doctype html><html><body>hello</body></html>")


def zero_size_gif(folder: Path) -> Path:
    # A GIF header declaring a 0x0 screen and no image.
    return write(folder, "zero.gif", b"GIF89a\x00\x00\x00\x00\x00\x00\x00;")


# --- images that must be read correctly ---------------------------------------------------------------------


def tiff_16bit_big_endian(folder: Path) -> Path:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(">u2")
    path = Path(folder) / "ramp-16be.tif"
    Image.frombytes("I;16B", (64, 64), ramp.tobytes()).save(path)
    return path


def png_16bit(folder: Path) -> Path:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = Path(folder) / "ramp-16.png"
    Image.fromarray(ramp).save(path)
    return path


def tiff_float(folder: Path) -> Path:
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64).astype(np.float32)
    path = Path(folder) / "ramp-float.tif"
    Image.fromarray(ramp, mode="F").save(path)
    return path


def cmyk_jpeg(folder: Path) -> Path:
    path = Path(folder) / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(path)  # red
    return path


def palette_transparent(folder: Path) -> Path:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (10, 10, 30, 30))
    path = Path(folder) / "palette.png"
    image.save(path, transparency=0)
    return path


def rgb_transparent_colour(folder: Path) -> Path:
    """An RGB PNG whose black is transparent (a tRNS colour key, as logo and icon exporters write)."""
    image = Image.new("RGB", (40, 40), (0, 0, 0))
    image.paste((255, 0, 0), (10, 10, 30, 30))
    path = Path(folder) / "colour_key.png"
    image.save(path, transparency=(0, 0, 0))
    return path


def grey_transparent_colour(folder: Path) -> Path:
    """The same in grey: black is transparent."""
    image = Image.new("L", (40, 40), 0)
    image.paste(100, (10, 10, 30, 30))
    path = Path(folder) / "grey_key.png"
    image.save(path, transparency=0)
    return path


def rgba_half_transparent(folder: Path) -> Path:
    path = Path(folder) / "rgba.png"
    Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(path)  # fully transparent blue: white once composited
    return path


def la_image(folder: Path) -> Path:
    path = Path(folder) / "la.png"
    Image.new("LA", (40, 40), (30, 255)).save(path)
    return path


def one_bit(folder: Path) -> Path:
    path = Path(folder) / "bits.png"
    Image.new("1", (40, 40), 1).save(path)
    return path


def exif_rotated_jpeg(folder: Path) -> Path:
    """A 60 wide x 30 high JPEG whose EXIF orientation (6: rotate 90) makes it 30 wide x 60 high."""
    image = Image.new("RGB", (60, 30), "white")
    image.paste((255, 0, 0), (0, 0, 10, 30))  # a red band at the left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = Path(folder) / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def corrupt_exif_jpeg(folder: Path) -> Path:
    buf = io.BytesIO()
    photo(4, (32, 32)).save(buf, format="JPEG")
    data = buf.getvalue()
    app1 = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 9999) + b"\xff" * 20  # IFD offset past the end
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return write(folder, "bad-exif.jpg", data[:2] + segment + data[2:])


def animated_gif(folder: Path) -> Path:
    frames = [Image.new("P", (30, 30), i) for i in range(3)]
    path = Path(folder) / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def one_pixel(folder: Path) -> Path:
    path = Path(folder) / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    return path


def sliver(folder: Path) -> Path:
    path = Path(folder) / "sliver.png"
    photo(5, (1, 500)).save(path)
    return path


def upper_case_suffix(folder: Path) -> Path:
    path = Path(folder) / "SHOUT.PNG"
    photo(6).save(path)
    return path


# --- checkpoints ----------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates ``marker`` (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pt(folder: Path, marker: Path) -> Path:
    path = Path(folder) / "evil.pt"
    torch.save({"g_ema": Payload(marker), "state_dict": {}}, path)
    return path


def malicious_pkl(folder: Path, marker: Path) -> Path:
    path = Path(folder) / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": Payload(marker)}, f)
    return path


def truncated_pt(folder: Path) -> Path:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w_encoder.linear.weight": torch.zeros(4, 4)}}, buf)
    return write(folder, "truncated.pt", buf.getvalue()[:300])


def classifier_pt(folder: Path) -> Path:
    """A state dict of another architecture (a small classifier)."""
    path = Path(folder) / "classifier.pt"
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    return path


def rosinality_with_flat_mapping(folder: Path, g_ema: dict) -> Path:
    """A rosinality file whose first mapping weight is 1-D."""
    g_ema = dict(g_ema)
    g_ema["style.1.weight"] = g_ema["style.1.weight"].reshape(-1)
    path = Path(folder) / "flat-mapping.pt"
    torch.save({"g_ema": g_ema, "latent_avg": torch.zeros(16)}, path)
    return path


def set_json(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def refuse_folders(monkeypatch, *, unenterable: Path | None = None, unlistable: Path | None = None,
                   listing_error: OSError | None = None) -> None:
    """Folders that cannot be read, as for a user who is not root: ``unenterable`` may be listed but its entries not
    looked at (every entry's stat is refused, as in a folder of mode r--), ``unlistable`` may not be listed (its
    listing raises ``listing_error``, by default permission denied)."""
    stat, scandir = os.stat, os.scandir

    def refusing_stat(path, *args, **kwargs):
        if unenterable is not None and not isinstance(path, int) and Path(path).parent == unenterable:  # (an fd: fine)
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return stat(path, *args, **kwargs)

    def refusing_scandir(path="."):
        if unlistable is not None and not isinstance(path, int) and Path(path) == unlistable:
            error = listing_error or PermissionError(13, "Permission denied")
            raise type(error)(error.errno, error.strerror, os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "stat", refusing_stat)
    monkeypatch.setattr(os, "scandir", refusing_scandir)
