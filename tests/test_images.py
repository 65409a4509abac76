"""Image helpers: centred squares and labelled rows of panels."""

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.io.images import center_square, labelled_row, make_grid, tensor_to_pil


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


def test_a_heic_photo_without_the_plugin_says_what_to_install(tmp_path, monkeypatch):
    from hyperinverter.io import images

    monkeypatch.setattr(images, "_register_heif", lambda: False)
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)  # an ISO-BMFF header with the HEIC brand
    (tmp_path / "a.heic").write_bytes(heic)
    for source in [tmp_path / "a.heic", heic]:
        assert "needs the pillow-heif plugin: pip install 'hyperinverter[heif]'" in images._unreadable_cause(source)
    assert images._unreadable_cause(b"\0" * 32) == "not a readable image (unknown or corrupt format)"
