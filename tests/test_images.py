"""Image helpers: centred squares, labelled rows of panels, and reading photos (formats, colour profiles)."""

import io
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from hyperinverter.io.images import center_square, labelled_row, make_grid, read_image, tensor_to_pil


def test_center_square_keeps_the_middle():
    image = Image.fromarray(np.arange(6 * 4, dtype=np.uint8).reshape(4, 6))  # 6 wide, 4 high
    square = center_square(image)
    assert square.size == (4, 4)
    assert np.array_equal(np.asarray(square), np.asarray(image)[:, 1:5])
    assert center_square(square) is square


def test_labelled_row_puts_the_panels_under_a_header():
    panels = torch.rand(3, 3, 40, 40) * 2 - 1
    out = labelled_row(panels, ["input", "Phase I (W)", "a label far too long for its column"])
    row = tensor_to_pil(make_grid(panels, nrow=3))[0]
    header = out.height - row.height
    assert out.width == row.width and header > 0
    assert np.array_equal(np.asarray(out)[header:], np.asarray(row))  # the panels, unchanged
    top = np.asarray(out)[:header]
    assert (top < 128).any(axis=2).any()  # some text was drawn
    third = top[:, 2 + 2 * 42 : 2 + 2 * 42 + 40]
    assert (third < 128).any() and (top[:, 2 + 2 * 42 + 40 :] == 255).all()  # the long label is cut to its column
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        labelled_row(panels, ["a", "b"])


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.random((6, 8, 3)), np.ones((8, 8, 1)))  # blocks: survive lossy coding
    return Image.fromarray((smooth * 255).astype(np.uint8))


def test_phone_photos_in_heic_and_avif_are_read(tmp_path):
    # A folder of iPhone photos (HEIC), AVIFs or JFIFs was skipped without a word: their suffixes were not images.
    from PIL import features

    from hyperinverter.io.images import find_images, read_image

    photo = _photo()
    photo.save(tmp_path / "c.jfif", format="JPEG", quality=95)  # what browsers on Windows save JPEGs as
    written = ["c.jfif"]
    if features.check("avif"):
        photo.save(tmp_path / "b.avif", quality=95)
        written.append("b.avif")
    try:
        import pillow_heif  # the heif extra (make test installs it)
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
        photo.save(tmp_path / "a.HEIC", format="HEIF", quality=95)
        written.append("a.HEIC")
    assert sorted(p.name for p in find_images([tmp_path]).paths) == sorted(written)
    for name in written:
        image = read_image(tmp_path / name)
        assert image.size == photo.size and image.mode == "RGB"
        assert np.abs(np.asarray(image, np.float32) - np.asarray(photo, np.float32)).mean() < 16, name  # (lossy)


def test_a_folder_s_images_in_every_format_pillow_reads_are_found(tmp_path):
    # Netpbm, Targa, JPEG 2000, QOI and PCX files in an input folder were passed over without a word.
    from hyperinverter.io.images import find_images, read_image

    photo = _photo()
    names = [f"x{suffix}" for suffix in (".ppm", ".pgm", ".pnm", ".tga", ".jp2", ".j2k", ".qoi", ".pcx")]
    for name in names:
        (photo.convert("L") if name.endswith(".pgm") else photo).save(tmp_path / name)
    assert sorted(p.name for p in find_images([tmp_path]).paths) == sorted(names)
    for name in names:
        assert read_image(tmp_path / name).size == photo.size


def test_a_heic_photo_without_the_plugin_says_what_to_install(tmp_path, monkeypatch):
    from hyperinverter.io import images

    monkeypatch.setattr(images, "_register_heif", lambda: False)
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)  # an ISO-BMFF header with the HEIC brand
    (tmp_path / "a.heic").write_bytes(heic)
    for source in [tmp_path / "a.heic", heic]:
        assert "needs the pillow-heif plugin: pip install 'hyperinverter[heif]'" in images._unreadable_cause(source)
    assert images._unreadable_cause(b"\0" * 32) == "not a readable image (unknown or corrupt format)"


# ICC profiles, written by hand (no profile files ship with the tests): a v2 header, a tag table, the tags.
D50 = (0.9642, 1.0, 0.8249)
SRGB_D50_COLUMNS = {"red": (0.4361, 0.2225, 0.0139), "green": (0.3851, 0.7169, 0.0971),
                    "blue": (0.1431, 0.0606, 0.7141)}  # sRGB's primaries in the profile connection space


def _s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)  # s15Fixed16


def _icc_profile(device_class: bytes, space: bytes, pcs: bytes, description: str, tags: dict[bytes, bytes]) -> bytes:
    tags = {b"desc": (b"desc" + bytes(4) + struct.pack(">I", len(description) + 1) + description.encode() + b"\0"
                      + bytes(8 + 3 + 67)),  # ASCII, then empty Unicode and ScriptCode descriptions
            b"wtpt": b"XYZ " + bytes(4) + _s15(*D50), b"cprt": b"text" + bytes(4) + b"No copyright\0", **tags}
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags.items():
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", signature, offset + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s12s4s", offset + len(body), b"", 0x02100000, device_class, space, pcs,
                         bytes(12), b"acsp")
    header = (header + bytes(64 - len(header)) + _s15(*D50)).ljust(128, b"\0")  # rendering intent 0, D50 light
    return header + struct.pack(">I", len(tags)) + table + body


def _rgb_profile(description: str, primaries: tuple[str, str, str]) -> bytes:
    """An RGB display profile with a gamma of 2.2 whose red, green and blue are those ``primaries`` of sRGB."""
    gamma = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0233)
    red, green, blue = (b"XYZ " + bytes(4) + _s15(*SRGB_D50_COLUMNS[name]) for name in primaries)
    return _icc_profile(b"mntr", b"RGB ", b"XYZ ", description, {
        b"rXYZ": red, b"gXYZ": green, b"bXYZ": blue, b"rTRC": gamma, b"gTRC": gamma, b"bTRC": gamma})


def _swapped_rgb_profile() -> bytes:
    """Red is sRGB's blue and blue is sRGB's red: a conversion plain to see."""
    return _rgb_profile("red and blue swapped", ("blue", "green", "red"))


def _swapped_cmyk_profile() -> bytes:
    """A CMYK printer profile (a lut8 of 2 points a side, to Lab) that prints what Pillow's naive CMYK to RGB
    gives with red and blue swapped: CMYK red (0, 255, 255, 0) prints blue."""
    corners = np.array([(c, m, y, k) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1)])
    swapped = ((1 - corners[:, [2, 1, 0]]) * (1 - corners[:, 3:]) * 255).astype(np.uint8)
    lab = ImageCms.profileToProfile(Image.fromarray(swapped[None]), ImageCms.createProfile("sRGB"),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")
    grid = (np.asarray(lab) ^ np.array([0, 128, 128], np.uint8)).tobytes()  # Pillow's a, b are signed; lut8 adds 128
    ramp = bytes(range(256))
    lut8 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + _s15(1, 0, 0, 0, 1, 0, 0, 0, 1) + ramp * 4 + grid + ramp * 3
    return _icc_profile(b"prtr", b"CMYK", b"Lab ", "CMYK, red and blue swapped", {b"A2B0": lut8})


def _gray_profile() -> bytes:
    return _icc_profile(b"mntr", b"GRAY", b"XYZ ", "gray gamma 1.8",
                        {b"kTRC": b"curv" + bytes(4) + struct.pack(">IH", 1, 0x01CD)})


def test_an_embedded_colour_profile_is_converted_to_srgb(tmp_path):
    # A phone's Display P3 photo or a camera's Adobe RGB export read as if it were sRGB: its colours came out
    # dull or shifted. Here a profile that swaps red and blue makes the conversion plain to see.
    swapped = _swapped_rgb_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(swapped)).profile.xcolor_space == "RGB "  # littlecms reads it
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    red.save(tmp_path / "red.png", icc_profile=swapped)
    red.save(tmp_path / "red.jpg", quality=95, icc_profile=swapped)
    red.convert("P").save(tmp_path / "palette.png", icc_profile=swapped)
    for name in ["red.png", "red.jpg", "palette.png"]:
        image = read_image(tmp_path / name)
        assert image.mode == "RGB" and np.abs(np.asarray(image, np.int64) - (0, 0, 255)).max() <= 8, name
    # An RGB PNG's transparent colour (tRNS) is white once converted, as without a profile (it was red->blue).
    keyed = Image.new("RGB", (16, 16), (255, 0, 0))
    keyed.paste((0, 255, 0), (4, 4, 12, 12))
    keyed.save(tmp_path / "keyed.png", icc_profile=swapped, transparency=(255, 0, 0))
    pixels = np.asarray(read_image(tmp_path / "keyed.png"), np.int64)
    assert (pixels[0, 0] == 255).all() and pixels[8, 8, 1] > 200 and pixels[8, 8, [0, 2]].max() < 40
    upload = read_image((tmp_path / "red.png").read_bytes())  # an upload's bytes as well
    assert np.array_equal(np.asarray(upload), np.asarray(read_image(tmp_path / "red.png")))


@pytest.mark.parametrize("profile", [
    ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),  # "sRGB built-in"
    _rgb_profile("sRGB IEC61966-2.1", ("red", "green", "blue")),  # a gamma of 2.2 for its curve, as some devices write
], ids=["built-in", "gamma-2.2"])
def test_an_srgb_profile_keeps_the_exact_pixels(tmp_path, profile):
    photo = _photo()
    photo.save(tmp_path / "plain.png")
    photo.save(tmp_path / "srgb.png", icc_profile=profile)
    assert Image.open(tmp_path / "srgb.png").info["icc_profile"] == profile
    assert np.array_equal(np.asarray(read_image(tmp_path / "srgb.png")), np.asarray(read_image(tmp_path / "plain.png")))


def test_a_corrupt_colour_profile_never_loses_the_image(tmp_path, caplog):
    photo = _photo()
    photo.save(tmp_path / "corrupt.png", icc_profile=np.random.default_rng(0).bytes(600))
    with caplog.at_level(logging.WARNING):
        image = read_image(tmp_path / "corrupt.png")
    assert np.array_equal(np.asarray(image), np.asarray(photo))  # the pixels as they are
    assert "corrupt.png: ignoring its unusable ICC colour profile" in caplog.text


def test_a_transparent_image_keeps_its_alpha_through_its_profile(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = [[255, 128, 0]] * 2  # red: opaque, half and fully transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png", icc_profile=_swapped_rgb_profile())
    pixels = np.asarray(read_image(tmp_path / "rgba.png"), np.int64)
    assert np.abs(pixels[:, 0] - (0, 0, 255)).max() <= 2  # opaque: blue
    assert np.abs(pixels[:, 1] - (127, 127, 255)).max() <= 2  # half: blue over white
    assert (pixels[:, 2] == 255).all()  # transparent: white


def test_a_cmyk_file_is_read_through_its_cmyk_profile(tmp_path):
    # A print workflow's CMYK JPEG was read with Pillow's naive CMYK to RGB, whatever its profile said.
    profile = _swapped_cmyk_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space == "CMYK"  # littlecms reads it
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95, icc_profile=profile)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB" and np.abs(np.asarray(image, np.int64) - (0, 0, 255)).max() <= 8


def test_a_profile_that_does_not_fit_the_image_is_ignored(tmp_path, caplog):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", icc_profile=_swapped_rgb_profile())
    Image.new("L", (16, 16), 100).save(tmp_path / "gray-rgb.png", icc_profile=_swapped_rgb_profile())
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "rgb-gray.png", icc_profile=_gray_profile())
    Image.new("L", (16, 16), 100).save(tmp_path / "gray.png", icc_profile=_gray_profile())  # fits: kept, quietly
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("L", (16, 16), 100).save(tmp_path / "gray-srgb.png", icc_profile=srgb)  # sRGB: nothing to do, quietly
    with caplog.at_level(logging.WARNING):
        assert (np.asarray(read_image(tmp_path / "gray-srgb.png")) == 100).all()
        cmyk = np.asarray(read_image(tmp_path / "cmyk.jpg"), np.int64)
        assert (np.asarray(read_image(tmp_path / "gray-rgb.png")) == 100).all()
        assert (np.asarray(read_image(tmp_path / "rgb-gray.png")) == (255, 0, 0)).all()
        assert (np.asarray(read_image(tmp_path / "gray.png")) == 100).all()
    assert cmyk[..., 0].min() > 240 and cmyk[..., 1:].max() < 16  # red, as Pillow reads CMYK
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"{tmp_path / name}: ignoring its ICC colour profile, which is for {space} images, not {mode} ones"
        for name, space, mode in [("cmyk.jpg", "RGB", "CMYK"), ("gray-rgb.png", "RGB", "L"),
                                  ("rgb-gray.png", "GRAY", "RGB")]]
