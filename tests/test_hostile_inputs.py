"""The hostile corpus (docs/reliability.md): for every kind of bad input, the right outcome.

A bad image fails alone, named with its cause, and the batch goes on with exit status 1; an odd but valid image
is read right; a bad model, checkpoint, config, direction or inversion file is one line ``error: <file>: <cause>``
with exit status 2; nothing prints a traceback; no folder hyperinverter did not write is ever changed.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from conftest import build_tiny_generator, build_tiny_pipeline
from hyperinverter.cli.main import main
from hyperinverter.editing import GANSpaceBasis, GANSpaceDirection, LinearDirection, save_direction
from hyperinverter.errors import CheckpointError, ImageReadError, InputError, NonFiniteError, OutputError
from hyperinverter.io.checkpoints import read_safetensors, save_safetensors
from hyperinverter.io.files import atomic_write_bytes
from hyperinverter.io.images import image_bytes, read_image
from hyperinverter.pipeline import InversionPipeline


def cli(capsys, *argv) -> SimpleNamespace:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return SimpleNamespace(code=code, out=out, err=err)


def tree_digest(folder: Path) -> str:
    """Names, sizes and contents of everything under ``folder``."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a second one with the same shapes and other weights, photos, inversions and a direction."""
    root = tmp_path_factory.mktemp("world")
    build_tiny_pipeline(build_tiny_generator()).save_pretrained(root / "model")
    build_tiny_pipeline(build_tiny_generator(seed=7)).save_pretrained(root / "other")
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        hostile.photo(i).save(photos / f"p{i}.png")
    for model in ("model", "other"):
        assert main(["invert", str(photos), "--model", str(root / model), "--out", str(root / f"inv-{model}"),
                     "--device", "cpu"]) == 0
    save_direction(LinearDirection(torch.randn(1, 16), name="up"), root / "up.safetensors")
    return SimpleNamespace(root=root, model=root / "model", other=root / "other", photos=photos,
                           inv=root / "inv-model" / "p0.safetensors", inv_other=root / "inv-other" / "p0.safetensors",
                           direction=root / "up.safetensors")


# --- images that cannot be read: each fails alone, the good ones are written -----------------------------------

BAD_IMAGES = [
    (hostile.empty_file, "not a readable image"),
    (hostile.random_bytes_jpg, "not a readable image"),
    (hostile.truncated_png, "not a readable image"),
    (hostile.truncated_jpeg, "not a readable image"),
    (hostile.png_missing_rows, "image data ends early: 7,720 of the 12,352 bytes"),
    (hostile.interlaced_png_missing_pass, "not a readable image"),  # (Pillow's own check catches this one)
    (hostile.ztxt_bomb, "Decompressed data too large"),
    (hostile.iccp_bomb, "Decompressed data too large"),
    (hostile.pixel_bomb_header, "bomb|more than the limit"),
    (hostile.tiff_bad_width, "not a readable image"),
    (hostile.text_as_png, "not a readable image"),
    (hostile.html_as_jpg, "not a readable image"),
    (hostile.zero_size_gif, "not a readable image|empty"),
]


@pytest.mark.parametrize("build, cause", BAD_IMAGES, ids=[b.__name__ for b, _ in BAD_IMAGES])
def test_a_bad_image_fails_alone(world, tmp_path, capsys, build, cause):
    folder = tmp_path / "in"
    folder.mkdir()
    hostile.photo(3).save(folder / "good.png")
    bad = build(folder)
    with pytest.raises(ImageReadError, match=cause) as caught:
        read_image(bad)
    assert caught.value.source == str(bad)
    result = cli(capsys, "invert", folder, "--model", world.model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 1
    assert f"failed: {bad}: " in result.err and result.err.count(str(bad)) == 1  # reported once
    assert (tmp_path / "out" / "good.safetensors").is_file() and (tmp_path / "out" / "good.png").is_file()
    assert not (tmp_path / "out" / f"{bad.stem}.png").exists()
    assert "1 failed" in result.out


def test_the_png_data_check_counts_every_pass(tmp_path):
    # Adam7's seven passes of a 13x11 RGB image hold 14+14+13+30+66+114+200 = 451 bytes with their filter bytes.
    from hyperinverter.io.images import png_missing_data

    with open(hostile.interlaced_png(tmp_path), "rb") as whole:
        assert png_missing_data(whole) is None
    with open(hostile.interlaced_png_missing_pass(tmp_path), "rb") as short:
        assert "351 of the 451 bytes" in png_missing_data(short)
    with open(hostile.png_16bit(tmp_path), "rb") as deep, open(hostile.one_bit(tmp_path), "rb") as bits:
        assert png_missing_data(deep) is None and png_missing_data(bits) is None


def test_pillow_warnings_never_escape(tmp_path, recwarn):
    read_image(hostile.corrupt_exif_jpeg(tmp_path))
    assert not [w for w in recwarn if "PIL" in str(w.filename) or "Image" in str(w.category)]


def _open_files() -> set[str]:
    """The files this process has open (Linux; empty elsewhere)."""
    names = set()
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # (the listing's own descriptor is gone)
            pass
    return names


@pytest.mark.parametrize("build", [hostile.animated_gif, hostile.palette_transparent, hostile.truncated_png],
                         ids=lambda b: b.__name__)
def test_reading_leaves_no_file_open(tmp_path, build, caplog):
    # A multi-frame file keeps its file open after load(); left to the garbage collector, Python's ResourceWarning
    # about it reached the user's log as a warning about their image.
    path = build(tmp_path)
    with caplog.at_level("WARNING"):
        try:
            image = read_image(path)
            assert image.mode in ("RGB", "L") and np.asarray(image).size > 0  # the result is still usable
        except ImageReadError:
            pass
        assert str(path.resolve()) not in _open_files()
        gc.collect()
    assert not [r for r in caplog.records if "unclosed" in r.getMessage()]


# --- odd images that must be read right -------------------------------------------------------------------------


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


ODD_IMAGES = [
    (hostile.tiff_16bit_big_endian, lambda im: im.mode == "L" and _pixels(im).min() == 0 and _pixels(im).max() == 255
     and 120 < _pixels(im).mean() < 135),  # the whole ramp, not clipped to white
    (hostile.png_16bit, lambda im: im.mode == "L" and 120 < _pixels(im).mean() < 135),
    (hostile.tiff_float, lambda im: im.mode == "L" and _pixels(im).max() == 255 and 120 < _pixels(im).mean() < 135),
    (hostile.cmyk_jpeg, lambda im: im.mode == "RGB" and _pixels(im)[20, 20, 0] > 200 and _pixels(im)[20, 20, 1] < 60),
    (hostile.palette_transparent, lambda im: im.mode == "RGB" and tuple(_pixels(im)[0, 0]) == (255, 255, 255)
     and tuple(_pixels(im)[20, 20]) == (255, 0, 0)),
    (hostile.rgba_half_transparent, lambda im: im.mode == "RGB" and (_pixels(im) == 255).all()),
    # (a tRNS colour key: its pixels read as black)
    (hostile.rgb_transparent_colour, lambda im: tuple(_pixels(im)[0, 0]) == (255, 255, 255)
     and tuple(_pixels(im)[20, 20]) == (255, 0, 0)),
    (hostile.grey_transparent_colour, lambda im: (_pixels(im)[0, 0] == 255).all()
     and (_pixels(im)[20, 20] == 100).all()),
    (hostile.la_image, lambda im: im.mode == "RGB" and (_pixels(im) == 30).all()),
    (hostile.one_bit, lambda im: im.mode == "L" and (_pixels(im) == 255).all()),
    (hostile.exif_rotated_jpeg, lambda im: im.size == (30, 60) and _pixels(im)[2, 15, 0] > 200
     and _pixels(im)[2, 15, 1] < 80),  # upright: the red band is now at the top
    (hostile.corrupt_exif_jpeg, lambda im: im.size == (32, 32)),
    (hostile.animated_gif, lambda im: im.mode == "RGB" and im.size == (30, 30)),
    (hostile.one_pixel, lambda im: im.size == (1, 1)),
    (hostile.interlaced_png, lambda im: im.size == (13, 11) and (_pixels(im) == 200).all()),
    (hostile.png_black_bottom, lambda im: im.size == (64, 64) and (_pixels(im)[40:] == 0).all()),
    (hostile.sliver, lambda im: im.size == (1, 500)),
    (hostile.upper_case_suffix, lambda im: im.size == (48, 40)),
]


@pytest.mark.parametrize("build, check", ODD_IMAGES, ids=[b.__name__ for b, _ in ODD_IMAGES])
def test_an_odd_image_is_read_right(tmp_path, build, check):
    image = read_image(build(tmp_path))
    assert image.mode in ("RGB", "L") and check(image)


def test_odd_images_all_invert(world, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    for build, _ in ODD_IMAGES:
        build(folder)
    result = cli(capsys, "invert", folder, "--model", world.model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 0, result.err
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == len(ODD_IMAGES)


def test_folder_entries_that_cannot_be_images_are_reported(world, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    hostile.photo(0).save(folder / "good.png")
    (folder / "trap.png").mkdir()  # a folder with an image's name: its images are taken, and nothing failed
    hostile.photo(1).save(folder / "trap.png" / "inner.png")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link
    (tmp_path / "elsewhere").mkdir()
    hostile.photo(2).save(tmp_path / "elsewhere" / "far.png")
    (folder / "linked.png").symlink_to(tmp_path / "elsewhere")  # not followed: a warning said its images were read
    missing = tmp_path / "missing.png"
    result = cli(capsys, "invert", folder, missing, "--model", world.model, "--out", tmp_path / "out",
                 "--device", "cpu")
    assert result.code == 1
    assert f"{folder / 'trap.png'}: is a folder with an image's name; the images in it are read" in result.err
    assert f"{folder / 'linked.png'}: is a link to a folder, which is not followed" in result.err
    assert not (tmp_path / "out" / "far.safetensors").exists()
    assert f"{folder / 'gone.jpg'}: is a broken symbolic link" in result.err
    assert f"{missing}: no such file" in result.err
    assert (tmp_path / "out" / "good.safetensors").is_file() and (tmp_path / "out" / "inner.safetensors").is_file()
    assert "2 failed" in result.out


def test_folder_entries_passed_over_without_a_word_are_reported(world, tmp_path, capsys, monkeypatch):
    # A named pipe with an image's name, and a folder that may not be listed, were left out without a word (exit 0).
    folder = tmp_path / "in"
    (folder / "private").mkdir(parents=True)
    hostile.photo(0).save(folder / "good.png")
    hostile.photo(1).save(folder / "private" / "hidden.png")
    os.mkfifo(folder / "pipe.png")
    scandir = os.scandir

    def refusing(path="."):  # (as a folder of mode 000 does for anyone but root)
        if Path(path) == folder / "private":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    (folder / "loop.png").symlink_to("loop.png")  # (a link to itself was an internal error, exit 3)
    result = cli(capsys, "invert", folder, "--model", world.model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 1 and "3 failed" in result.out
    assert f"failed: {folder / 'loop.png'}: is a broken symbolic link" in result.err
    assert f"failed: {folder / 'pipe.png'}: is a named pipe, not an image file" in result.err
    assert f"failed: {folder / 'private'}: is a folder that cannot be read (permission denied)" in result.err
    assert (tmp_path / "out" / "good.safetensors").is_file()


def test_edit_reports_a_folder_s_broken_links_to_inversion_files(world, tmp_path, capsys):
    # A folder whose inversion files were all broken links was read for its photos, and the links passed over.
    folder = tmp_path / "in"
    folder.mkdir()
    hostile.photo(0).save(folder / "good.png")
    (folder / "gone.safetensors").symlink_to(tmp_path / "moved.safetensors")
    result = cli(capsys, "edit", folder, "--model", world.model, "--direction", world.direction, "--strength", "1",
                 "--out", tmp_path / "edits", "--device", "cpu")
    assert result.code == 1 and "1 failed" in result.out
    assert f"failed: {folder / 'gone.safetensors'}: is a broken symbolic link" in result.err
    assert (tmp_path / "edits" / "good_up_+1.png").is_file()
    (folder / "good.png").unlink()  # (nothing else in it: the link alone fails, as a folder of them does)
    result = cli(capsys, "edit", folder, "--model", world.model, "--direction", world.direction, "--strength", "1",
                 "--out", tmp_path / "edits2", "--device", "cpu")
    assert result.code == 1 and f"failed: {folder / 'gone.safetensors'}: is a broken symbolic link" in result.err
    # A folder that holds neither inversion files nor images ended the whole batch (exit 2): it fails alone.
    (tmp_path / "empty").mkdir()
    result = cli(capsys, "edit", tmp_path / "empty", world.inv, "--model", world.model, "--direction", world.direction,
                 "--strength", "1", "--out", tmp_path / "edits3", "--device", "cpu")
    assert result.code == 1 and f"failed: {tmp_path / 'empty'}: holds no inversion files" in result.err
    assert (tmp_path / "edits3" / "p0_up_+1.png").is_file()


def test_a_folder_that_cannot_be_entered_or_listed_fails_alone(world, tmp_path, capsys, monkeypatch):
    # A folder that may be listed but not entered (mode r--, for anyone but root) ended the whole run ("error:
    # in/locked/hidden.png: permission denied", exit 2), and so did a folder whose listing failed for another cause.
    folder = tmp_path / "in"
    for name in ("locked", "failing", "fine"):
        (folder / name).mkdir(parents=True)
    hostile.photo(0).save(folder / "fine" / "good.png")
    hostile.photo(1).save(folder / "locked" / "hidden.png")
    hostile.photo(2).save(folder / "failing" / "lost.png")
    hostile.refuse_folders(monkeypatch, unenterable=folder / "locked", unlistable=folder / "failing",
                           listing_error=OSError(5, "Input/output error"))
    failed = [f"failed: {folder / 'locked' / 'hidden.png'}: permission denied",
              f"failed: {folder / 'failing'}: is a folder that cannot be read (input/output error)"]
    result = cli(capsys, "invert", folder, "--model", world.model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 1 and "2 failed" in result.out
    assert all(line in result.err for line in failed), result.err
    assert (tmp_path / "out" / "good.safetensors").is_file()
    result = cli(capsys, "edit", folder, "--model", world.model, "--direction", world.direction, "--strength", "1",
                 "--out", tmp_path / "edits", "--device", "cpu")  # (a folder of photos: inverted first)
    assert result.code == 1 and "2 failed" in result.out
    assert all(line in result.err for line in failed), result.err


def test_non_utf8_file_names_invert_and_edit(world, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.png")  # not valid UTF-8
    hostile.photo(0).save(folder / name)
    out = tmp_path / "out"
    assert cli(capsys, "invert", folder, "--model", world.model, "--out", out, "--device", "cpu").code == 0
    inversion = out / (Path(name).stem + ".safetensors")
    assert inversion.is_file()
    result = cli(capsys, "edit", inversion, "--model", world.model, "--direction", world.direction,
                 "--strength", "1", "--out", tmp_path / "edits", "--device", "cpu")
    assert result.code == 0, result.err
    assert len(list((tmp_path / "edits").iterdir())) == 2


# --- models: every broken part is one line naming the file and the cause ------------------------------------------


def _broken_copy(world, tmp_path, edit) -> Path:
    model = tmp_path / "broken"
    shutil.copytree(world.model, model)
    edit(model)
    return model


def _corrupt_tensor(path: Path, key: str, value: float) -> None:
    tensors, metadata = read_safetensors(path)
    tensors[key] = tensors[key].clone().fill_(value)
    save_safetensors(path, tensors, metadata)


BAD_MODELS = [
    ("pipeline-not-json", lambda m: (m / "pipeline.json").write_text("{not json"), "pipeline.json",
     "is not valid JSON"),
    ("components-not-a-mapping", lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"]["hyperinverter"].update(components="w")),
     "pipeline.json", "'methods.hyperinverter' must be \\{components"),
    ("unknown-method", lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"].update(mystery={"components": {}})),
     "pipeline.json", "unknown method 'mystery'"),
    ("method-lacks-a-component", lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"]["hyperinverter"]["components"].pop("hypernetwork")),
     "pipeline.json", "'methods.hyperinverter' lacks the components \\['hypernetwork'\\]"),
    ("encoder-resolution-100000", lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"]["hyperinverter"]["settings"].update(encoder_resolution=100000)),
     "pipeline.json", "'encoder_resolution' must be a multiple of 16"),
    ("encoder-resolution-text", lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"]["phase1"]["settings"].update(encoder_resolution="256")),
     "pipeline.json", "'encoder_resolution'"),
    ("format-1-components-not-a-list", lambda m: (m / "pipeline.json").write_text(json.dumps(
        {"format": "hyperinverter-pipeline", "format_version": 1, "encoder_resolution": 64, "components": "w"})),
     "pipeline.json", "'components' must be a list of names"),
    ("format-1-unknown-component", lambda m: (m / "pipeline.json").write_text(json.dumps(
        {"format": "hyperinverter-pipeline", "encoder_resolution": 64,
         "components": ["generator", "w_encoder", "decoder"]})),
     "pipeline.json", "unknown parts \\['decoder'\\]"),
    ("default-method-unknown", lambda m: hostile.set_json(m / "pipeline.json",
                                                          lambda d: d.update(default_method="pti")),
     "pipeline.json", "'default_method' 'pti' is not one of its methods"),
    ("not-a-pipeline", lambda m: hostile.set_json(m / "pipeline.json", lambda d: d.update(format="other")),
     "pipeline.json", "'format' must be 'hyperinverter-pipeline'"),
    ("component-folder-missing", lambda m: shutil.rmtree(m / "hypernetwork"), "broken",
     "lists \\['hypernetwork'\\], which are not there"),
    ("config-not-json", lambda m: (m / "w_encoder" / "config.json").write_text("]["), "w_encoder/config.json",
     "is not valid JSON"),
    ("config-wrong-type", lambda m: hostile.set_json(m / "generator" / "config.json",
                                                     lambda d: d["config"].update(z_dim="sixteen")),
     "generator/config.json", "z_dim: expected an integer"),
    ("config-unknown-key", lambda m: hostile.set_json(m / "w_encoder" / "config.json",
                                                      lambda d: d["config"].update(colour="blue")),
     "w_encoder/config.json", "unknown config keys \\['colour'\\]"),
    ("config-shape-lie", lambda m: hostile.set_json(m / "generator" / "config.json",
                                                    lambda d: d["config"].update(channel_max=4096, channel_base=10**7)),
     "generator", "mis-shaped keys"),
    ("config-unknown-type", lambda m: hostile.set_json(m / "hypernetwork" / "config.json",
                                                       lambda d: d.update(model_type="mystery")),
     "hypernetwork", "unknown component type 'mystery'"),
    ("weights-truncated", lambda m: (m / "w_encoder" / "model.safetensors").write_bytes(
        (m / "w_encoder" / "model.safetensors").read_bytes()[:500]), "w_encoder/model.safetensors",
     "not a readable safetensors file"),
    ("weights-nan", lambda m: _corrupt_tensor(m / "generator" / "model.safetensors", "synthesis.b8.conv0.weight",
                                              float("nan")), "generator", "NaN or infinite values in "
                                                                          "\\['synthesis.b8.conv0.weight'\\]"),
    ("weights-inf", lambda m: _corrupt_tensor(m / "hypernetwork" / "model.safetensors",
                                              next(iter(read_safetensors(m / "hypernetwork" / "model.safetensors")[0])),
                                              float("inf")), "hypernetwork", "NaN or infinite values"),
]


@pytest.mark.parametrize("edit, where, cause", [c[1:] for c in BAD_MODELS], ids=[c[0] for c in BAD_MODELS])
def test_a_broken_model_is_one_line(world, tmp_path, capsys, edit, where, cause):
    model = _broken_copy(world, tmp_path, edit)
    result = cli(capsys, "invert", world.photos, "--model", model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}") and where in lines[0], result.err
    assert __import__("re").search(cause, lines[0]), lines[0]


def test_checkpoints_that_must_be_refused(world, tmp_path, capsys):
    marker = tmp_path / "pwned"
    g_ema = __import__("hyperinverter.convert.rosinality", fromlist=["from_nvidia"]).from_nvidia(
        build_tiny_generator().state_dict(), build_tiny_generator().config)
    g_ema.pop("latent_avg")
    cases = [
        (["generate", "--model", hostile.rosinality_with_flat_mapping(tmp_path, g_ema), "--out", tmp_path / "g.png"],
         "flat-mapping.pt", "'style.1.weight' has shape \\[256\\], expected 2 dimensions"),
        (["generate", "--model", hostile.classifier_pt(tmp_path), "--out", tmp_path / "g.png"],
         "classifier.pt", "not a rosinality generator"),
        (["generate", "--model", hostile.malicious_pt(tmp_path, marker), "--out", tmp_path / "g.png"],
         "evil.pt", "refusing to load it"),
        (["convert", hostile.malicious_pkl(tmp_path, marker), tmp_path / "converted"], "evil.pkl", "system"),
        (["import-official", hostile.malicious_pt(tmp_path, marker), "--generator", world.model / "generator",
          "--out", tmp_path / "imported"], "evil.pt", "refusing to load it"),
        (["import-official", hostile.truncated_pt(tmp_path), "--generator", world.model / "generator",
          "--out", tmp_path / "imported"], "truncated.pt", "not a readable torch checkpoint"),
        (["import-official", hostile.classifier_pt(tmp_path), "--generator", world.model / "generator",
          "--out", tmp_path / "imported"], "classifier.pt", "not a released inversion checkpoint"),
        (["convert", hostile.write(tmp_path, "junk.pkl", b"\x80\x04junk"), tmp_path / "c"], "junk.pkl",
         "not a readable NVIDIA network pickle"),
    ]
    for argv, where, cause in cases:
        result = cli(capsys, *argv)
        assert result.code == 2, (argv, result.err)
        line = result.err.strip()
        assert line.startswith("error: ") and where in line and __import__("re").search(cause, line), line
        assert not marker.exists()
    assert not (tmp_path / "imported").exists() and not (tmp_path / "converted").exists()


def test_an_alias_may_not_replace_a_tensor_the_file_holds(tmp_path):
    # A component's aliases (tensors it shares) named a tensor the file held: it was replaced without a word.
    from hyperinverter.errors import SchemaError
    from hyperinverter.io.checkpoints import with_aliases

    tensors = {"a": torch.zeros(2), "b": torch.ones(2)}
    assert with_aliases(tensors, {"c": "a"}, tmp_path / "m.safetensors")["c"] is tensors["a"]
    with pytest.raises(SchemaError, match=r"m.safetensors: 'aliases' name tensors the file holds itself: \['b'\]"):
        with_aliases(tensors, {"b": "a"}, tmp_path / "m.safetensors")


# --- directions ---------------------------------------------------------------------------------------------------


def _direction_file(folder: Path, name: str, tensors: dict, meta: dict) -> Path:
    return save_safetensors(folder / f"{name}.safetensors", tensors, {"direction": json.dumps(meta)})


def _truncated_npy(folder):
    buffer = io.BytesIO()
    np.save(buffer, np.ones((1, 16), np.float32))
    return hostile.write(folder, "truncated.npy", buffer.getvalue()[:100])


def test_bad_directions_are_one_line(world, tmp_path, capsys):
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    torch.save({"comp": torch.randn(4, 1, 16), "mean": torch.randn(1, 12), "std": torch.ones(4)},
               tmp_path / "mismatch.pt")
    cases = {
        _direction_file(tmp_path, "scalar", {"vector": torch.tensor(1.0)}, {"kind": "linear"}): "got \\[\\]",
        tmp_path / "pickled.npy": "pickled arrays are refused",
        tmp_path / "mismatch.pt": "mean must have 16 values \\(it has 12\\)",
        _direction_file(tmp_path, "wide", {"vector": torch.randn(1, 32)}, {"kind": "linear"}): "does not fit",
        _direction_file(tmp_path, "nan", {"vector": torch.full((1, 16), float("nan"))}, {"kind": "linear"}): "NaN",
        _direction_file(tmp_path, "nokind", {"vector": torch.randn(1, 16)}, {"name": "x"}): "'kind' must be",
        _direction_file(tmp_path, "badstrength", {"vector": torch.randn(1, 16)},
                        {"kind": "linear", "strength": "lots"}): "'strength' must be a finite number",
        hostile.write(tmp_path, "broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"): "safetensors",
        hostile.write(tmp_path, "empty.npy", b""): "is not a readable .npy file",  # (an internal EOFError)
        _truncated_npy(tmp_path): r"is not a readable .npy file \(EOF",  # (it blamed pickling)
        _direction_file(tmp_path, "zeros", {"vector": torch.zeros(1, 16)}, {"kind": "linear"}): "all zeros",
        # (a basis of no components was a reshape error inside: an internal error)
        _direction_file(tmp_path, "nocomp", {"comp": torch.zeros(0, 1, 16), "mean": torch.zeros(16),
                                             "std": torch.ones(0)}, {"kind": "ganspace"}): "holds no components",
    }
    for path, cause in cases.items():
        result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", path,
                     "--out", tmp_path / "edits", "--device", "cpu")
        assert result.code == 2, (path, result.err)
        line = result.err.strip()
        assert line.startswith(f"error: {path}") and __import__("re").search(cause, line), line


def test_a_1d_direction_is_a_w_direction(world, tmp_path, capsys):
    vector = torch.randn(16)
    path = _direction_file(tmp_path, "flat", {"vector": vector}, {"kind": "linear"})
    result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", path, "--strength", "2",
                 "--out", tmp_path / "edits", "--device", "cpu")
    assert result.code == 0, result.err
    pipe = InversionPipeline.from_pretrained(world.model, device="cpu")
    loaded, _ = pipe.load_result(world.inv)
    expected = pipe.render(loaded.ws + 2 * vector, loaded.weight_delta)
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "edits" / "p0_flat_+2.png"), dtype=np.float32))
    assert torch.allclose(written / 127.5 - 1, expected[0].permute(1, 2, 0).clamp(-1, 1), atol=1 / 127)
    basis = GANSpaceBasis(torch.eye(16)[:4], torch.zeros(16), torch.ones(4))
    with pytest.raises(ValueError, match="layers 0:99"):
        GANSpaceDirection(basis, 0, 0, 99, 1.0).apply(loaded.ws)


def test_a_direction_s_name_never_sends_an_output_elsewhere(world, tmp_path, capsys):
    # A direction's name (read from its file) went into the output names as it was: '../../../pwn' wrote the edits
    # outside --out, and 'a/b' made folders inside it.
    out = tmp_path / "deep" / "er" / "edits"
    for name in ["../../../pwn", "a/b\\c:d*e?f", ".."]:
        path = _direction_file(tmp_path, "named", {"vector": torch.randn(1, 16)}, {"kind": "linear", "name": name})
        result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", path, "--out", out,
                     "--device", "cpu")
        assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(
        f"p0_{part}_{end}" for part in ["-..-..-pwn", "a-b-c-d-e-f", "direction"] for end in ("default.png",
                                                                                              "strip.png"))
    assert all(p.parent == out for p in tmp_path.rglob("*.png"))
    # Where the name is the user's own (ganspace --save NAME=...), one that is not a plain file name is refused.
    with pytest.raises(SystemExit):
        main(["ganspace", "--model", str(world.model), "--out", str(tmp_path / "s.png"), "--save", "../x=0:0:2"])
    assert "NAME must be a plain file name" in capsys.readouterr().err
    # A --save that cannot be made is refused before anything is written (the sheet was, then the error came).
    for saves, message in [(["y=999:0:2"], "component 999 out of range"), (["x=0:0:2", "x=1:0:2"], "['x'] given more")]:
        options = [option for save in saves for option in ("--save", save)]
        assert main(["ganspace", "--model", str(world.model), "--out", str(tmp_path / "s.png"), *options]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "s.png").exists()
    # Too few samples for the PCA: the error named the value, not the option.
    assert main(["ganspace", "--model", str(world.model), "--out", str(tmp_path / "s.png"), "--samples", "1"]) == 2
    assert "error: --samples 1: a PCA of 16 components needs more than 16 samples" in capsys.readouterr().err


def test_a_method_or_option_for_inversion_files_alone_is_a_usage_error(world, tmp_path, capsys):
    # Inversion files are used as they were inverted: --method and --option were accepted and ignored.
    inv = world.inv
    for argv in (["edit", inv, "--direction", world.direction, "--out", tmp_path / "e"],
                 ["interpolate", inv, inv, "--out", tmp_path / "i"],
                 ["mix", inv, inv, "--layers", "0:2", "--out", tmp_path / "m.png"],
                 ["export-generator", inv, "--out", tmp_path / "g"]):
        result = cli(capsys, *argv, "--model", world.model, "--method", "phase1", "--option", "x=1")
        assert result.code == 2 and "error: --method, --option: apply only to images" in result.err, result.err
    assert not list(tmp_path.iterdir())


def test_names_made_into_file_names():
    from hyperinverter.io.files import file_name_part

    assert file_name_part("фото 😀 ../a:b", fallback="x") == "фото 😀 ..-a-b"  # any script, no separators
    assert file_name_part("...", fallback="x") == "x" and file_name_part("\x00", fallback="x") == "-"
    # The names a web page serves: plain ASCII, runs of anything else one '-'.
    assert file_name_part("фото 😀", fallback="photo", ascii_only=True) == "photo"
    assert file_name_part("my photo (1)", fallback="photo", ascii_only=True) == "my-photo-1"
    assert file_name_part("-.a#b%c&d.", fallback="photo", ascii_only=True, max_length=3) == "a-b"


# --- inversion files ------------------------------------------------------------------------------------------------


def _rewrite_record(source: Path, target: Path, edit) -> Path:
    tensors, metadata = read_safetensors(source)
    record = json.loads(metadata["inversion"])
    edit(record, tensors)
    return save_safetensors(target, tensors, {"inversion": json.dumps(record)})


def test_bad_inversion_files(world, tmp_path, capsys):
    cases = {
        world.inv_other: "was inverted with model .* \\(generator [0-9a-f]+\\), not with",
        _rewrite_record(world.inv, tmp_path / "placement.safetensors",
                        lambda r, t: r.update(placement={"quad": [[0, 0]], "source_size": [1, 1]})):
            "'placement.quad' must be 4",
        _rewrite_record(world.inv, tmp_path / "nan.safetensors",
                        lambda r, t: t["ws"].fill_(float("nan"))): "NaN or infinite values in \\['ws'\\]",
        _rewrite_record(world.inv, tmp_path / "mode.safetensors", lambda r, t: r.update(mode="multiply")):
            "'mode' must be",
        _rewrite_record(world.inv, tmp_path / "made.safetensors", lambda r, t: r.update(made_with=[1])):
            "'made_with' must be null or a string",
        _rewrite_record(world.inv, tmp_path / "sha.safetensors", lambda r, t: r.update(source_sha256="abc")):
            "'source_sha256' must be null or 64 lowercase hex digits",
        _rewrite_record(world.inv, tmp_path / "shape.safetensors",
                        lambda r, t: t.update(ws=torch.zeros(1, 3, 16))): "its codes are \\[3, 16\\]",
        hostile.write(tmp_path, "cut.safetensors", world.inv.read_bytes()[:200]): "safetensors",
        world.direction: "is not an inversion file",
        _rewrite_record(world.inv, tmp_path / "int.safetensors",  # (rendered without a word; integer ws refused)
                        lambda r, t: t.update({k: t[k].int() for k in list(t) if k.startswith("delta.")})):
            "Δθ tensors must be floats: \\['delta.[^ ]+ \\(torch.int32\\)'",
    }
    for path, cause in cases.items():
        result = cli(capsys, "edit", path, "--model", world.model, "--direction", world.direction,
                     "--out", tmp_path / "edits", "--device", "cpu")
        assert result.code == 1, (path, result.err)  # a bad input among inputs: reported, the run goes on
        line = result.err.strip()
        assert line.startswith(f"failed: {path}") and __import__("re").search(cause, line), line
        result = cli(capsys, "interpolate", world.inv, path, "--model", world.model, "--out", tmp_path / "lerp",
                     "--device", "cpu")
        assert result.code == 2 and result.err.startswith(f"error: {path}"), result.err


def test_paste_back_problems_fail_the_item(world, tmp_path, capsys):
    placement = {"quad": [[0, 0], [0, 10], [10, 10], [10, 0]], "source_size": [640, 480]}
    gone = _rewrite_record(world.inv, tmp_path / "gone.safetensors",
                           lambda r, t: r.update(placement=placement, source=str(tmp_path / "deleted.jpg")))
    wrong_size = _rewrite_record(world.inv, tmp_path / "size.safetensors",
                                 lambda r, t: r.update(placement=placement, source=str(world.photos / "p0.png")))
    flat = _rewrite_record(world.inv, tmp_path / "flat.safetensors", lambda r, t: r.update(
        placement={"quad": [[5, 5]] * 4, "source_size": [48, 40]}, source=str(world.photos / "p0.png")))
    result = cli(capsys, "edit", gone, wrong_size, flat, world.inv, "--model", world.model, "--direction",
                 world.direction, "--paste-back", "--out", tmp_path / "edits", "--device", "cpu")
    assert result.code == 1
    assert f"failed: {flat}: cannot paste back" in result.err and "covers less than a pixel" in result.err
    assert f"failed: {gone}: cannot paste back" in result.err and "deleted.jpg: no such file" in result.err
    assert f"failed: {wrong_size}: cannot paste back" in result.err and "48x40" in result.err
    assert f"failed: {world.inv}: has no face placement" in result.err
    assert not list((tmp_path / "edits").iterdir())  # a failed input leaves no part of its edits behind


def test_pasting_back_into_a_photo_changed_since_says_so(world, tmp_path, capsys, caplog):
    # The photo turned upside down by its EXIF tag since (as viewers turn photos): the same size, so the edit went
    # where the upright photo had the face, without a word. A retouched photo is still pasted into: it warns.
    photo, turned = tmp_path / "p.png", tmp_path / "turned.png"
    shutil.copy(world.photos / "p0.png", photo)
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.open(photo).save(turned, exif=exif)
    placement = {"quad": [[0, 0], [0, 10], [10, 10], [10, 0]], "source_size": [48, 40]}
    files = [_rewrite_record(world.inv, tmp_path / f"{name}.safetensors", lambda r, t, source=source: r.update(
        placement=placement, source=str(source))) for name, source in (("same", world.photos / "p0.png"),
                                                                       ("changed", turned))]
    with caplog.at_level("WARNING"):
        result = cli(capsys, "edit", *files, "--model", world.model, "--direction", world.direction, "--paste-back",
                     "--out", tmp_path / "edits", "--device", "cpu")
    assert result.code == 0
    warned = [r.getMessage() for r in caplog.records if "has changed since" in r.getMessage()]
    assert len(warned) == 1 and str(turned) in warned[0] and "invert it again" in warned[0]


# --- numbers and output paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["invert", "x.png", "--model", "m", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["invert", "x.png", "--model", "m", "--out", "o", "--batch-size", "-1"], "--batch-size: must be at least 1"),
    (["invert", "x.png", "--model", "m", "--out", "o", "--batch-size", "two"], "is not an integer"),
    (["generate", "--model", "m", "--trunc", "nan"], "--trunc: must be a finite number"),
    (["generate", "--model", "m", "--trunc", "inf"], "--trunc: must be a finite number"),
    (["interpolate", "a", "b", "--model", "m", "--out", "o", "--steps", "1"], "takes 2 to 240 steps, got 1"),
    # (100000 steps ran for minutes towards a strip 6.6 M px wide, every frame held three times)
    (["interpolate", "a", "b", "--model", "m", "--out", "o", "--steps", "100000"], "takes 2 to 240 steps"),
    # (refused by the MP4 writer after the inversions and frames were made, naming no option)
    (["interpolate", "a", "b", "--model", "m", "--out", "o", "--fps", "1000"], "--fps: must be at most 240"),
    (["edit", "a", "--model", "m", "--direction", "d", "--out", "o", "--strength", "nan"], "finite"),
    (["web", "--port", "70000"], "at most 65535"),
    (["evaluate", "--data", "d", "--model", "m", "--out", "o", "--max-images", "0"], "at least 1"),
    # An overflow deep inside (an internal error), or memory without bound until the kernel killed the process.
    (["ganspace", "--model", "m", "--strength", "1e308"], "--strength: must be at most 1,000, got 1e308"),
    (["ganspace", "--model", "m", "--samples", "100000000000"], "--samples: must be at most 10,000,000"),
    (["data", "align", "photos", "--out", "o", "--size", "100000"], "--size: must be at most 2,048, got 100000"),
    # (it wrote "-1 faces" and a dataset.json counting -1)
    (["data", "faces64", "--out", "o", "--n", "-1"], "--n: must be at least 1, got -1"),
    (["data", "faces64", "--out", "o", "--seed-start", "-3"], "--seed-start: must be at least 0, got -3"),
    # (numpy's "Seed must be between 0 and 2**32 - 1", naming no option, once --out and its dataset.json were made)
    (["data", "faces64", "--out", "o", "--seed-start", "4294967296"], "--seed-start: must be at most 4,294,967,295"),
    # (an empty list read as "every method": a benchmark started the optimisation methods at full step counts)
    (["benchmark", "--data", "d", "--model", "m", "--out", "o", "--methods", ""], "--methods: '' names nothing"),
    (["evaluate", "--data", "d", "--model", "m", "--out", "o", "--methods", ","], "--methods: ',' names nothing"),
    # ("Overflow when unpacking long long" once the model and images were loaded; a negative seed was taken)
    (["benchmark", "--data", "d", "--model", "m", "--out", "o", "--seed", "9" * 23], "--seed: must be at most"),
    (["benchmark", "--data", "d", "--model", "m", "--out", "o", "--seed", "-5"], "--seed: must be at least 0"),
    # (islice's own "Stop argument for islice() must be None or an integer", naming no option)
    (["benchmark", "--data", "d", "--model", "m", "--out", "o", "--images", str(2**70)], "--images: must be at most"),
    # (the folder and its dataset.json were made, then every photo failed)
    (["data", "align", "photos", "--out", "o", "--scale", "1e308"], "--scale: must be at most 10, got 1e308"),
    # ("" was taken as no range given: every layer edited)
    (["edit", "a", "--model", "m", "--direction", "d", "--out", "o", "--layers", ""],
     "--layers: '': expected START:END"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_the_held_out_faces_refuse_a_count_or_a_first_seed(tmp_path, capsys):
    # --heldout wrote its 500 faces from seed 1000000 whatever --n and --seed-start said, without a word.
    for extra in (["--n", "100"], ["--seed-start", "5"]):
        assert main(["data", "faces64", "--out", str(tmp_path / "o"), "--heldout", *extra]) == 2
        assert "--heldout writes the fixed held-out set (500 faces from seed 1000000): leave out --n and " \
               "--seed-start" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_faces_past_the_last_seed_are_refused_by_the_options_that_asked(tmp_path, capsys):
    # The library's "the seeds ... go past the last" named neither --seed-start nor --n.
    assert main(["data", "faces64", "--out", str(tmp_path / "o"), "--seed-start", "4294967290", "--n", "10"]) == 2
    assert "--seed-start 4294967290 --n 10: the seeds would end at 4294967299, past the last, 4294967295" \
        in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_negative_numbers_in_any_notation_are_values(world, tmp_path, capsys):
    # argparse took -1e-3, -1E3, -inf and -nan for options: "expected at least one argument", whatever the type said.
    result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", world.direction, "--strength",
                 "-1e-3", "2", "--strength", "-.5", "-1E1", "--out", tmp_path / "e", "--device", "cpu")
    assert result.code == 0, result.err
    assert {p.name for p in (tmp_path / "e").iterdir()} >= {"p0_up_-0.001.png", "p0_up_+2.png", "p0_up_-0.5.png",
                                                            "p0_up_-10.png"}
    result = cli(capsys, "generate", "--model", world.model, "--seeds", "0", "--trunc", "-1e-3", "--out",
                 tmp_path / "g.png")
    assert result.code == 0 and (tmp_path / "g.png").is_file(), result.err
    for value in ("-inf", "-nan", "-Infinity", "-1e999"):  # the option's own type refuses them, naming it
        for argv in (["edit", "a", "--model", "m", "--direction", "d", "--out", "o", "--strength", value],
                     ["generate", "--model", "m", "--trunc", value],
                     ["invert", "a", "--model", "m", "--out", "o", "--content-rows", "0", value]):
            with pytest.raises(SystemExit) as caught:
                main(argv)
            err = capsys.readouterr().err
            assert caught.value.code == 2 and f"must be a finite number, got {value}" in err, err


def test_an_empty_path_is_a_usage_error_not_the_current_folder(world, tmp_path, capsys, monkeypatch):
    # "" was Path("") == ".": `invert ""` inverted every picture of the current folder, `--out ""` wrote into it.
    monkeypatch.chdir(tmp_path)
    hostile.photo(0).save(tmp_path / "mine.png")
    for argv in (["invert", "", "--model", world.model, "--out", "o"],
                 ["invert", world.photos, "--model", world.model, "--out", ""],
                 ["edit", world.inv, "--model", world.model, "--direction", world.direction, "--out", ""],
                 ["generate", "--model", world.model, "--seeds", "0", "--outdir", ""],
                 ["generate", "--model", world.model, "--seeds", "0", "--out", ""],
                 ["convert", world.model / "generator", ""],
                 ["directions", "train", "--model", world.model, "--labels", "", "--attribute", "a"]):
        with pytest.raises(SystemExit) as caught:
            main([str(a) for a in argv])
        assert caught.value.code == 2 and ": an empty path; give a file or folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.png"]


def test_an_empty_model_name_is_refused_not_the_model_in_the_current_folder(world, tmp_path, capsys, monkeypatch):
    # --model "" was Path("") == ".": run in a model's folder, `--model "$UNSET"` silently used that model.
    shutil.copytree(world.model, tmp_path / "here")
    monkeypatch.chdir(tmp_path / "here")
    for argv in (["generate", "--model", "", "--seeds", "0", "--out", tmp_path / "g.png"],
                 ["invert", world.photos, "--model", "", "--out", tmp_path / "inv", "--device", "cpu"]):
        result = cli(capsys, *argv)
        assert result.code == 2 and result.err.startswith("error: an empty model name; give a catalogue name"), \
            result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    with pytest.raises(InputError, match="an empty model name"):
        InversionPipeline.from_pretrained("", device="cpu")


def test_values_that_made_internal_errors(world, tmp_path, capsys):
    # Each was "internal error (...); this is a bug": an overflow, a division by zero samples, an assertion.
    result = cli(capsys, "generate", "--model", world.model, "--trunc", "1e300", "--out", tmp_path / "g.png")
    assert result.code == 2 and "the truncation psi must be a finite number from -100.0 to 100.0, got 1e+300" in \
        result.err
    result = cli(capsys, "ganspace", "--model", world.model, "--samples", "1", "--out", tmp_path / "s.png")
    assert result.code == 2 and "components needs more than" in result.err and "got 1" in result.err
    # A sheet of 501 seeds ran for minutes towards 203,556 px; 1,000 components were listed one by one.
    result = cli(capsys, "ganspace", "--model", world.model, "--samples", "200", "--seeds", "0-500", "--out",
                 tmp_path / "s.png")
    assert result.code == 2 and "501 seed(s) and 8 component(s) make a sheet of" in result.err
    result = cli(capsys, "ganspace", "--model", world.model, "--samples", "200", "--components", "0-999", "--out",
                 tmp_path / "s.png")
    assert result.code == 2 and ", ...] out of range (the basis has " in result.err and len(result.err) < 200
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "s.png").exists()
    # Each input's strip of edits had no bound on its width: 500 strengths of 32 px drew one 17,036 px wide.
    result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", world.direction, "--strength",
                 *(f"{k / 100}" for k in range(1, 501)), "--out", tmp_path / "e")
    assert result.code == 2 and "--strength: 500 strengths of 32 px make a strip 17,036 px wide (at most 16,384)" \
        in result.err and not (tmp_path / "e").exists()


def test_an_encoder_resolution_the_trunks_cannot_take_is_a_config_error():
    from hyperinverter.training.encoders import EncoderTrainingConfig

    with pytest.raises(ValueError, match="encoder_resolution must be a multiple of 16 from 16 to 2048, got 7"):
        EncoderTrainingConfig(run_dir="r", data="d", steps=1, generator="g", encoder_resolution=7)


@pytest.mark.parametrize("device, cause", [
    ("foo", "invalid device 'foo'"),
    ("", "invalid device ''"),
    ("meta", "invalid device 'meta': hyperinverter runs on cpu, cuda, mps, xpu"),
    ("cuda", "CUDA is not available on this machine"),
    ("mps", "MPS (Apple) is not available on this machine"),  # was an internal error
    ("xpu", "XPU (Intel GPU) is not available on this machine"),  # was an internal error
])
def test_a_device_this_machine_lacks_is_one_line(world, tmp_path, capsys, monkeypatch, device, cause):
    for backend in (torch.cuda, torch.backends.mps, torch.xpu):  # (as on a machine without them)
        monkeypatch.setattr(backend, "is_available", lambda: False)
    result = cli(capsys, "invert", world.photos, "--model", world.model, "--out", tmp_path / "out", "--device", device)
    assert result.code == 2 and result.err.startswith("error: --device: ") and result.err.count("\n") == 1
    assert cause in result.err and "internal error" not in result.err
    # (the message names the value; the option is named too, also where another command resolves the device)
    result = cli(capsys, "generate", "--model", world.model, "--out", tmp_path / "g.png", "--device", device)
    assert result.code == 2 and result.err.startswith("error: --device: ") and cause in result.err, result.err


@pytest.mark.parametrize("method, option, cause", [
    ("hyperinverter", "colour=red", "hyperinverter has no option ['colour']"),
    ("w-opt", "steps=0", "steps must be a positive integer, got 0"),
    ("wplus-opt", "perceptual=ssim", "perceptual must be auto, lpips-vgg, lpips-alex, dfeat or none, got 'ssim'"),
    ("pti", "pivot_steps=0", "the pivot's projection: steps must be a positive integer, got 0 (PTI's pivot_*"),
    ("pti", "steps=-1", "steps must be a whole number of tuning steps (0 or more), got -1"),
    # A value of another type than the option's default was an internal error, or taken as it came.
    ("w-opt", "learning_rate=nan", "option learning_rate of w-opt: expected a number, got 'nan'"),
    ("w-opt", "learning_rate=.inf", "option learning_rate of w-opt: expected a finite number, got inf"),
    ("w-opt", "seed=abc", "option seed of w-opt: expected an integer, got 'abc'"),
    ("w-opt", "steps=2.0", "option steps of w-opt: expected an integer, got 2.0"),
    ("wplus-opt", "optimize_noise=1", "option optimize_noise of wplus-opt: expected true or false, got 1"),
    ("pti", "locality_regularization=maybe",
     "option locality_regularization of pti: expected true or false, got 'maybe'"),
    # Values the methods cannot use: a ramp of length 0 divided by zero; a negative weight or threshold.
    ("w-opt", "lr_rampup_length=0", "lr_rampup_length must be a finite number above 0, got 0"),
    ("w-opt", "noise_regularize_weight=-1", "noise_regularize_weight must be a finite number of 0 or more, got -1"),
    ("w-opt", "seed=-1", "seed must be a whole number from 0 to 2**63 - 1, got -1"),
    ("w-opt", "seed=1180591620717411303424", "seed must be a whole number from 0 to 2**63 - 1"),  # (an overflow)
    ("w-opt", "w_avg_samples=1000000000000", "w_avg_samples must be a whole number from 2 to 1,000,000"),
    ("pti", "early_stop_lpips=-1", "early_stop_lpips must be a finite number of 0 or more, got -1"),
    ("pti", "locality_psi=2", "locality_psi (the truncation of the locality samples) must be in [0, 1], got 2"),
])
def test_a_bad_option_fails_before_any_image(world, tmp_path, capsys, monkeypatch, method, option, cause):
    from hyperinverter.inversion import batch

    read = []
    monkeypatch.setattr(batch, "read_image", lambda path, *a, **k: read.append(path) or Image.new("RGB", (8, 8)))
    out = tmp_path / "out"
    result = cli(capsys, "invert", world.photos, "--model", world.model, "--method", method, "--option", option,
                 "--out", out, "--device", "cpu")
    assert result.code == 2 and result.err == f"error: {cause}" + result.err.split(cause, 1)[1], result.err
    assert result.err.count("\n") == 1 and "invert:" not in result.err  # no progress bar before it
    assert not read and not out.exists()  # (it was made, and left empty)


@pytest.mark.parametrize("command, extra, cause", [
    ("invert", ["--method", ""], "unknown method ''"),  # (taken for the default, then failed with --out made)
    ("edit", ["--option", "colour=red"], "hyperinverter has no option ['colour']"),
    ("edit", ["--method", "w-opt", "--option", "steps=0"], "steps must be a positive integer, got 0"),
])
def test_a_bad_method_or_option_leaves_no_output_folder(world, tmp_path, capsys, command, extra, cause):
    direction = ["--direction", world.direction] if command == "edit" else []
    out = tmp_path / "new" / "out"
    result = cli(capsys, command, world.photos, "--model", world.model, *direction, *extra, "--out", out,
                 "--device", "cpu")
    assert result.code == 2 and cause in result.err and result.err.count("\n") == 1, result.err
    assert not (tmp_path / "new").exists()


def test_an_error_starts_its_own_line_after_a_progress_bar(world, tmp_path, capsys):
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=3, desc="work", file=sys.stderr)  # as a command's bar, interrupted by the error
    bar.update(1)
    result = cli(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--model", world.model,
                 "--out", tmp_path / "lerp", "--device", "cpu")
    assert result.code == 2 and "\nerror: " in result.err and bar.disable  # closed


def test_a_device_index_past_the_machine_s_devices_is_refused(monkeypatch):
    from hyperinverter.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' requested but this machine has 2 CUDA device\(s\) \(indices 0 to 1\)"):
        resolve_device("cuda:2")


def test_seed_ranges_are_bounded(world, tmp_path, capsys):
    result = cli(capsys, "generate", "--model", world.model, "--seeds", "0-999999999", "--out", tmp_path / "g.png")
    assert result.code == 2 and "more than 100000 seeds" in result.err
    # A seed past 64 bits was "Overflow when unpacking long long"; a repeated one was counted as another sample.
    result = cli(capsys, "generate", "--model", world.model, "--seeds", "99999999999999999999",
                 "--out", tmp_path / "g.png")
    assert result.code == 2 and "seeds go from 0 to 4294967295" in result.err
    from hyperinverter.generate import parse_seeds

    assert parse_seeds("3,0-3,3") == [3, 0, 1, 2] and parse_seeds("4294967295") == [4294967295]


def test_what_the_twenty_second_fuzzing_pass_found(world, tmp_path, capsys):
    # A render that overflowed failed without naming its input ("failed: the rendered image holds NaN ...").
    result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", world.direction, "--strength",
                 "1e299", "--out", tmp_path / "e")
    assert result.code == 1 and f"failed: {world.inv}: the edited image holds NaN" in result.err
    result = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", world.direction, "--strength",
                 "1e308", "--out", tmp_path / "e")  # (past what a strength can be: refused before any image)
    assert result.code == 2 and "strength must be a finite number within ±1e300, got 1e+308" in result.err
    # A folder given where a picture, a clip or a report is named: DIR.png was written beside the folder.
    folder = tmp_path / "results"
    folder.mkdir()
    for argv, what in ((["mix", world.inv, world.inv, "--model", world.model, "--layers", "0:2"], "a file name"),
                       (["interpolate", world.inv, world.inv, "--model", world.model], "the clip's name"),
                       (["evaluate", "--pred", world.photos, "--gt", world.photos], "the report's name"),
                       (["generate", "--model", world.model, "--seeds", "0"], "a file name")):
        result = cli(capsys, *argv, "--out", folder)
        assert result.code == 2 and result.err.startswith(f"error: {folder}: is a folder; give {what}"), argv
    assert not list(tmp_path.glob("results.*")) and not list(folder.iterdir())
    # A link at an output's name, dangling or not, was replaced by a plain file.
    (folder / "m.png").symlink_to(tmp_path / "nowhere.png")
    result = cli(capsys, "mix", world.inv, world.inv, "--model", world.model, "--layers", "0:2", "--out",
                 folder / "m.png")
    assert result.code == 2 and "m.png: is a symbolic link, which is not replaced" in result.err
    assert (folder / "m.png").is_symlink()
    # ganspace wrote its sheet, then refused a --save file that was not ours: every name is checked first.
    (folder / "smile.safetensors").write_bytes(b"a user's file")
    result = cli(capsys, "ganspace", "--model", world.model, "--samples", "64", "--components", "0", "--seeds", "0",
                 "--out", folder / "sheet.png", "--save", "smile=0:0:2")
    assert result.code == 2 and "smile.safetensors: exists and was not written by hyperinverter" in result.err
    assert sorted(p.name for p in folder.iterdir()) == ["m.png", "smile.safetensors"]
    # A folder output that cannot be made named its hidden temporary, not the path given.
    result = cli(capsys, "convert", world.model, Path("/proc/hyperinverter-test"))
    assert result.err == "error: /proc/hyperinverter-test: no such file or directory\n"
    # A file name holding a newline split its error line in two.
    assert str(OutputError("a\nb.png", "bad")) == "a\\nb.png: bad"
    # A generator config whose filter is empty was an assertion deep in the first layer (an internal error).
    from hyperinverter.models.stylegan2 import GeneratorConfig

    for taps in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError, match="resample_filter must be a non-empty list of finite numbers with a "
                                             "non-zero sum"):
            GeneratorConfig(resolution=8, resample_filter=taps)
    # A pickle that asks to run code, given as PTI's pivot, printed torch's whole multi-line message.
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save(Evil(), tmp_path / "evil.pt")
    from hyperinverter.convert.pti import read_pti_pivot

    with pytest.raises(ValueError, match=r"evil.pt: refusing to load it: it asks to run code") as caught:
        read_pti_pivot(tmp_path / "evil.pt", build_tiny_generator())
    assert "\n" not in str(caught.value)

    class EvilBuiltin:  # (torch words a builtin's refusal in its first paragraph: "not readable (unpickling failed)")
        def __reduce__(self):
            return (eval, ("1",))

    torch.save(EvilBuiltin(), tmp_path / "eval.pt")
    with pytest.raises(ValueError, match=r"eval.pt: refusing to load it: it asks to run code, not only to hold "
                                         r"tensors \(Unsupported global: GLOBAL eval was not an allowed global by "
                                         r"default.\)$"):
        read_pti_pivot(tmp_path / "eval.pt", build_tiny_generator())
    # A batch of two pivots (a reshape error inside) and a complex one (taken with torch's warning).
    G = build_tiny_generator()
    for name, pivot, cause in (("two.pt", torch.zeros(2, G.num_ws, G.w_dim), r"must hold a pivot \[1, "),
                               ("complex.pt", torch.zeros(1, G.num_ws, G.w_dim, dtype=torch.complex64),
                                "must hold a pivot of real codes")):
        torch.save(pivot, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}: {cause}"):
            read_pti_pivot(tmp_path / name, G)


def test_what_the_api_fuzzing_pass_found(world, tmp_path):
    from hyperinverter.editing.directions import load_direction
    from hyperinverter.errors import SchemaError
    from hyperinverter.io.images import find_images, pil_to_tensor

    pipe = InversionPipeline.from_pretrained(world.model, device="cpu")
    result = pipe.invert(torch.zeros(1, 3, 32, 32), method="phase1")
    # save_result wrote over anything at its path: a pipe (as root, /dev/null became a plain file), a user's notes,
    # and a name cut at a NUL; and it labelled another model's result with this model's name and generator.
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "notes.txt").write_text("mine")
    for path, cause in ((tmp_path / "fifo", "is a named pipe, not a file"),
                        (tmp_path / "notes.txt", "exists and was not written by hyperinverter"),
                        (f"{tmp_path}/out\0.safetensors", "holds a NUL character")):
        with pytest.raises(OutputError, match=cause):
            pipe.save_result(result, path)
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo", "notes.txt"]
    assert pipe.save_result(result, tmp_path / "mine.txt") == pipe.save_result(result, tmp_path / "mine.txt")
    other = pipe.invert(torch.zeros(1, 3, 32, 32), method="phase1")
    other.ws = torch.zeros(1, other.ws.shape[1] + 1, other.ws.shape[2])
    with pytest.raises(SchemaError, match="its codes are"):
        pipe.save_result(other, tmp_path / "other.safetensors")
    # save_pretrained wrote an int8 bundle that gave NaN images, and took "fp16" for a device.
    with pytest.raises(ValueError, match="unknown dtype torch.int8"):
        pipe.save_pretrained(tmp_path / "int8", dtype=torch.int8)
    assert not (tmp_path / "int8").exists()
    pipe.save_pretrained(tmp_path / "half", dtype="fp16")
    # A direction's strength of NaN was taken; metadata nested 100,000 deep was a RecursionError.
    with pytest.raises(ValueError, match="default strength must be a finite number within ±1e300, got nan"):
        LinearDirection(torch.ones(1, 16), default_strength=float("nan"))
    deep = tmp_path / "deep.safetensors"
    save_safetensors(deep, {"vector": torch.ones(1, 16)}, {"direction": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(SchemaError, match="is not valid JSON"):
        load_direction(deep)
    # find_images("folder") scanned "/" one character at a time; pil_to_tensor gave 3 channels for 2 or 4, and ran
    # out of memory for a side of a million.
    assert find_images(str(world.photos)).paths == find_images([world.photos]).paths
    for options, cause in (({"channels": 4}, "channels must be 1"), ({"size": 10**6}, "size must be an integer")):
        with pytest.raises(ValueError, match=cause):
            pil_to_tensor(hostile.photo(0), **options)
    # select took a float or None into an assertion, and an empty slice into a result edit failed on.
    two = pipe.invert(torch.zeros(2, 3, 32, 32), method="phase1")
    assert two.select(np.int64(1)).ws.shape[0] == 1 and two.select(torch.tensor(0)).ws.shape[0] == 1
    for index, error in ((None, TypeError), (1.0, TypeError), ("0", TypeError), (slice(5, 9), IndexError)):
        with pytest.raises(error):
            two.select(index)
    # Finite inputs too large to invert overflowed inside, and the NaN image blamed the weights; a fractional
    # batch size failed deep in the loop.
    with pytest.raises(ValueError, match="hold values up to 3e\\+38: inversion expects"):
        pipe.invert(torch.full((1, 3, 32, 32), 3e38))
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        pipe.invert(torch.zeros(1, 3, 32, 32), batch_size=1.5)
    # Values that failed deep inside: a meta device (in autocast), a direction of None (an AttributeError), a
    # fractional step count and a string fraction (TypeErrors in torch); a NaN image was written as black pixels.
    from hyperinverter.io.images import tensor_to_pil

    with pytest.raises(ValueError, match="invalid device 'meta'"):
        InversionPipeline.from_pretrained(world.model, device=torch.device("meta"))
    with pytest.raises(TypeError, match="direction must be a direction, a name, a file or a tensor, got NoneType"):
        pipe.edit(result, None)
    with pytest.raises(ValueError, match="strength must be a finite number within ±1e300, got 1000000"):
        pipe.edit(result, torch.ones(16), 10**400)  # (an OverflowError inside math.isfinite)
    with pytest.raises(TypeError, match="images must be a tensor, an image, a path, or a list"):
        pipe.invert(None)  # ("'NoneType' object is not iterable")
    with pytest.raises(ImageReadError, match="'': is an empty path"):
        pipe.invert("")  # (": is a folder": Path("") is the working folder)
    with pytest.raises(ImageReadError, match="the image: is of type list, not a path, bytes or a PIL image"):
        pipe.invert([[1, 2]])  # ("a bytes-like object is required, not 'int'")
    photo_bytes = image_bytes(Image.new("RGB", (32, 32), "gray"))
    torch.testing.assert_close(pipe.invert(memoryview(photo_bytes), method="phase1").ws,
                               pipe.invert(photo_bytes, method="phase1").ws)  # (iterated as a list of numbers)
    with pytest.raises(TypeError, match="generator must be a loaded Generator"):
        pipe.adapt(result, "generator")  # (an AttributeError inside)
    with pytest.raises(ValueError, match="min_resolution must be a whole number"):
        pipe.adapt(result, pipe.generator, min_resolution="x")
    with pytest.raises(ValueError, match="min_resolution must be a whole number from 1 to the generator's resolution"):
        pipe.adapt(result, pipe.generator, min_resolution=2**70)  # (every offset was dropped without a word)
    listed = pipe.invert([torch.zeros(3, 32, 32), torch.zeros(1, 3, 32, 32)], method="phase1")  # (a TypeError)
    assert listed.ws.shape[0] == 2 and torch.equal(listed.ws[0], listed.ws[1])
    for call, cause in ((lambda: pipe.interpolate(result, result, steps=2.5), "steps must be a whole number"),
                        (lambda: pipe.blend(result, result, "0.5"), "t must be a number in \\[0, 1\\]"),
                        (lambda: tensor_to_pil(torch.full((1, 3, 4, 4), float("nan"))), "NaN or infinite")):
        with pytest.raises(ValueError, match=cause):
            call()
    # A tampered bundle: a component of another kind (an AttributeError), integer weights (NaN images), a
    # negative conv_clamp (images beyond [-1, 1]).
    from hyperinverter.models.stylegan2 import GeneratorConfig

    with pytest.raises(ValueError, match="conv_clamp must be a positive number or null, got -1"):
        GeneratorConfig(resolution=8, conv_clamp=-1)
    bundle = tmp_path / "tampered"
    shutil.copytree(world.model, bundle)
    index = json.loads((bundle / "pipeline.json").read_text())
    folders = {entry["components"][role] for entry in index["methods"].values() for role in entry["components"]}
    w_encoder = index["methods"]["phase1"]["components"]["w_encoder"]
    index["methods"]["phase1"]["components"]["w_encoder"] = next(f for f in sorted(folders) if f != w_encoder)
    (bundle / "pipeline.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="its phase1 does not fit together \\(w_encoder: "):
        InversionPipeline.from_pretrained(bundle, device="cpu")
    shutil.rmtree(bundle)
    shutil.copytree(world.model, bundle)
    weights, metadata = read_safetensors(bundle / w_encoder / "model.safetensors")
    first = min(k for k, t in weights.items() if t.is_floating_point())
    weights[first] = weights[first].to(torch.int8)
    save_safetensors(bundle / w_encoder / "model.safetensors", weights, metadata, replace_any=True)
    with pytest.raises(CheckpointError, match=f"not floating-point: \\['{first}: torch.int8'\\]"):
        InversionPipeline.from_pretrained(bundle, device="cpu")


def test_output_paths_that_cannot_be_folders(world, tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    result = cli(capsys, "invert", world.photos, "--model", world.model, "--out", afile, "--device", "cpu")
    assert result.code == 2 and f"error: {afile}: exists and is not a folder" in result.err
    result = cli(capsys, "invert", world.photos, "--model", world.model, "--out", afile / "sub", "--device", "cpu")
    assert result.code == 2 and result.err == f"error: {afile / 'sub'}: cannot be made: {afile} is not a folder\n"
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("command", ["invert", "edit", "restore"])
def test_a_model_that_fails_to_load_leaves_no_output_folder(world, tmp_path, capsys, command):
    # The results folder (and its parents) was made before the model loaded, and left empty by the failure.
    broken = tmp_path / "broken"
    shutil.copytree(world.model, broken)
    (broken / "pipeline.json").write_text("{")
    extra = ["--direction", world.direction] if command == "edit" else []
    result = cli(capsys, command, world.photos, "--model", broken, *extra, "--out", tmp_path / "new" / "out",
                 "--device", "cpu")
    assert result.code == 2 and str(broken) in result.err
    assert not (tmp_path / "new").exists()


def test_an_image_output_never_replaces_another_kind_of_file(world, tmp_path, capsys):
    # `generate --out notes.txt` wrote PNG bytes over the text file; over a folder, the error named a temporary.
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    result = cli(capsys, "generate", "--model", world.model, "--seeds", "0-1", "--out", notes)
    assert result.code == 0 and f"to {notes}.png" in result.out and notes.read_text() == "keep me"
    assert Image.open(f"{notes}.png").format == "PNG"
    result = cli(capsys, "ganspace", "--model", world.model, "--out", tmp_path / "sheet.txt", "--samples", "64",
                 "--components", "0-1", "--seeds", "0-1")
    assert result.code == 0 and (tmp_path / "sheet.txt.png").is_file()
    result = cli(capsys, "generate", "--model", world.model, "--seeds", "0-1", "--out", notes / "sub" / "x.png")
    assert result.code == 2 and result.err == f"error: {notes / 'sub' / 'x.png'}: cannot be written: {notes} is a file, not a folder\n"
    # (the clip's scratch folder, made beside it first, said "notes.txt/clip.mp4: file exists")
    result = cli(capsys, "interpolate", world.inv, world.inv, "--model", world.model, "--out", notes / "clip")
    assert result.code == 2 and f"cannot be written: {notes} is a file, not a folder" in result.err, result.err
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        atomic_write_bytes(tmp_path, b"data")
    assert notes.read_text() == "keep me" and not list(tmp_path.glob(".*partial"))


def test_an_empty_input_folder_among_others_fails_alone(world, tmp_path, capsys):
    # A mistyped or empty folder beside others was passed over without a word, exit 0.
    (tmp_path / "photos").mkdir()
    (tmp_path / "empty").mkdir()
    hostile.photo(0).save(tmp_path / "photos" / "a.png")
    result = cli(capsys, "invert", tmp_path / "photos", tmp_path / "empty", "--model", world.model, "--out",
                 tmp_path / "out", "--device", "cpu")
    assert result.code == 1 and f"failed: {tmp_path / 'empty'}: no image files in it (looked for .png" in result.err
    assert (tmp_path / "out" / "a.png").is_file()
    result = cli(capsys, "invert", tmp_path / "empty", "--model", world.model, "--out", tmp_path / "out2")
    assert result.code == 2 and f"{tmp_path / 'empty'}: no image files in it" in result.err  # (alone: as before)


def test_an_output_never_overwrites_an_input(world, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    hostile.photo(0).save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    result = cli(capsys, "invert", folder / "a.png", "--model", world.model, "--out", folder, "--device", "cpu")
    assert result.code == 1 and "writing the result would replace it" in result.err
    assert (folder / "a.png").read_bytes() == before
    # The input folder itself as --out is refused before any work: each photo failed after its inversion, and where
    # the names differ (a.jpg, a.png) a later run read the results as photos.
    result = cli(capsys, "invert", folder, "--model", world.model, "--out", folder, "--device", "cpu")
    assert result.code == 2 and result.err == (f"error: {folder}: is the input folder {folder}: the results would sit "
                                               "among the photos, and a later run would read them as photos; give "
                                               "another folder\n")
    assert [p.name for p in folder.iterdir()] == ["a.png"] and (folder / "a.png").read_bytes() == before
    # Every command that writes beside its inputs (restore and swap: tests/test_restoration.py).
    hostile.photo(1).save(folder / "b.png")
    shutil.copy(world.inv, folder / "c.safetensors")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = cli(capsys, "interpolate", folder / "a.png", folder / "b.png", "--model", world.model,
                 "--out", folder / "a", "--device", "cpu")
    assert result.code == 2 and "is the input" in result.err, result.err
    result = cli(capsys, "mix", folder / "a.png", folder / "b.png", "--model", world.model, "--layers", "0:2",
                 "--out", folder / "b.png", "--device", "cpu")
    assert result.code == 2 and "is the input" in result.err, result.err
    (folder / "a_up_+1.png").write_bytes((folder / "b.png").read_bytes())  # an input named as a.png's edit
    before["a_up_+1.png"] = (folder / "a_up_+1.png").read_bytes()
    result = cli(capsys, "edit", folder / "a.png", folder / "a_up_+1.png", "--model", world.model,
                 "--direction", world.direction, "--strength", "1", "--out", folder, "--device", "cpu")
    assert result.code == 1 and f"failed: {folder / 'a_up_+1.png'}: is the input" in result.err, result.err
    generator = world.model / "generator"
    result = cli(capsys, "convert", generator, generator)
    assert result.code == 2 and "is the input" in result.err, result.err
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before


def test_output_names_are_unique_whatever_the_inputs(world, tmp_path, capsys):
    # x/p.png and y/p.png become x_p and y_p; beside an input x_p.png, one of them was written over the other.
    from hyperinverter.inversion.batch import unique_stems

    paths = [Path("x/p.png"), Path("y/p.png"), Path("x_p.png"), Path("x_p_2.png"), Path("z/q.png")]
    names = unique_stems(paths)
    assert len(set(names)) == len(names) and names[0] == "x_p" and names[1] == "y_p" and names[4] == "q"
    # A name in the current folder is prefixed with that folder's name (it was "_p" for p.png beside x/p.png).
    assert unique_stems([Path("p.png"), Path("x/p.png")]) == [f"{Path.cwd().name}_p", "x_p"]
    assert unique_stems([Path("/p.png"), Path("/p.png")]) == ["p", "p_2"]  # (the root has no name to prefix)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        hostile.photo(0).save(tmp_path / folder / "p.png")
    shutil.copy(world.inv, tmp_path / "x_p.safetensors")
    result = cli(capsys, "edit", tmp_path / "x" / "p.png", tmp_path / "y" / "p.png", tmp_path / "x_p.safetensors",
                 "--model", world.model, "--direction", world.direction, "--strength", "1", "--out",
                 tmp_path / "edits", "--device", "cpu")
    assert result.code == 0
    assert len(list((tmp_path / "edits").glob("*_strip.png"))) == 3


def test_an_input_named_like_another_s_result_keeps_both(world, tmp_path, capsys):
    # A folder of invert's results inverted again: p_compare.png's reconstruction was written over p's strip
    # (p_compare.png), and a re-run then took the survivor for p's.
    from hyperinverter.inversion.batch import output_stems

    assert output_stems([Path("p.png"), Path("p_compare.png"), Path("q-face1.png"), Path("q.png"),
                         Path("r_adapted.png")]) == ["p", "p_compare_2", "q-face1_2", "q", "r_adapted"]
    photos = tmp_path / "photos"
    photos.mkdir()
    hostile.photo(0).save(photos / "p.png")
    hostile.photo(1).save(photos / "p_compare.png")
    argv = ["invert", photos, "--model", world.model, "--out", tmp_path / "out", "--device", "cpu"]
    result = cli(capsys, *argv)
    assert result.code == 0 and "wrote 2 picture(s)" in result.out
    out = tmp_path / "out"
    with Image.open(out / "p_compare.png") as strip, Image.open(out / "p.png") as picture:
        assert strip.width > 2 * picture.width  # p's strip, not the other input's reconstruction
    assert {"p_compare_2.png", "p_compare_2_compare.png", "p_compare_2.safetensors"} <= {p.name for p in out.iterdir()}
    assert "2 input(s) already done" in cli(capsys, *argv).out
    restored = cli(capsys, "restore", photos, "--model", "faces-64-sr4", "--out", tmp_path / "restored")
    assert restored.code == 0 and (tmp_path / "restored" / "p_compare_2.png").is_file()


def test_user_folders_are_never_touched(world, tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("three years of work")
    (user / "figures").mkdir()
    (user / "figures" / "plot.png").write_bytes(b"png")
    before = tree_digest(user)
    commands = [
        ["convert", world.model / "generator", user],
        ["export-generator", world.inv, "--model", world.model, "--out", user, "--device", "cpu"],
        ["import-official", world.inv, "--generator", world.model / "generator", "--out", user],
    ]
    for argv in commands:
        result = cli(capsys, *argv)
        assert result.code == 2 and f"error: {user}: is a folder that hyperinverter did not write" in result.err
        assert tree_digest(user) == before
    with pytest.raises(ValueError, match="did not write"):
        InversionPipeline.from_pretrained(world.model, device="cpu").save_pretrained(user)
    assert tree_digest(user) == before
    # Our own output of the same kind is replaced; one of another kind is not; a user file inside ours stops it.
    assert cli(capsys, "convert", world.model / "generator", tmp_path / "gen").code == 0
    assert cli(capsys, "convert", world.other / "generator", tmp_path / "gen").code == 0
    result = cli(capsys, "convert", world.model / "generator", world.model)
    assert result.code == 2 and "holds a pipeline, not a generator" in result.err
    (tmp_path / "gen" / "notes.txt").write_text("mine")
    result = cli(capsys, "convert", world.model / "generator", tmp_path / "gen")
    assert result.code == 2 and "also holds files hyperinverter did not write (notes.txt)" in result.err
    # A rosinality file that we did not write is never overwritten.
    (tmp_path / "original.pt").write_bytes(b"the user's own checkpoint")
    result = cli(capsys, "convert", world.model / "generator", tmp_path / "original.pt")
    assert result.code == 2 and "did not write it" in result.err
    assert (tmp_path / "original.pt").read_bytes() == b"the user's own checkpoint"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # nothing left behind


# --- names -------------------------------------------------------------------------------------------------------------


def test_an_output_folder_never_hides_a_catalogue_model(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(capsys, "invert", world.photos, "--model", world.model, "--out", "faces-64", "--device", "cpu")
    assert result.code == 0
    pipe = InversionPipeline.from_pretrained("faces-64", device="cpu")  # the bundled model, not ./faces-64
    assert pipe.generator.resolution == 64
    shutil.copytree(world.model, tmp_path / "fashion-32")  # a model folder with a catalogue name: ambiguous
    result = cli(capsys, "invert", world.photos, "--model", "fashion-32", "--out", "o", "--device", "cpu")
    assert result.code == 2 and "is ambiguous" in result.err and "./fashion-32" in result.err
    assert InversionPipeline.from_pretrained("./fashion-32", device="cpu").generator.resolution == 32


# --- no silent NaN --------------------------------------------------------------------------------------------------


def test_non_finite_outputs_are_errors(world, tmp_path):
    pipe = InversionPipeline.from_pretrained(world.model, device="cpu")
    with torch.no_grad():
        pipe.generator.synthesis.b4.const.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        pipe.invert(torch.zeros(1, 3, 32, 32))
    report = __import__("hyperinverter.inversion.batch", fromlist=["invert_files"]).invert_files(
        pipe, sorted(world.photos.iterdir()), tmp_path / "out", progress=False)
    assert len(report.failed) == 2 and not report.written
    assert all("NaN or infinite" in str(e) for e in report.failed)


def test_evaluate_reports_and_leaves_out_bad_images(world, tmp_path, capsys):
    data = tmp_path / "heldout"
    data.mkdir()
    for i in range(3):
        hostile.photo(i).save(data / f"{i}.png")
    bad = hostile.ztxt_bomb(data)
    result = cli(capsys, "evaluate", "--data", data, "--model", world.model, "--out", tmp_path / "report",
                 "--device", "cpu")
    assert result.code == 1 and f"failed: {bad}: " in result.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_images"] == 3 and any(str(bad) in note for note in report["notes"])


def test_encoder_resolution_must_fit_the_feature_encoder(world, tmp_path, capsys):
    model = _broken_copy(world, tmp_path, lambda m: hostile.set_json(
        m / "pipeline.json", lambda d: d["methods"]["hyperinverter"]["settings"].update(encoder_resolution=128)))
    result = cli(capsys, "invert", world.photos, "--model", model, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 2 and "feature encoder was built for 64-px inputs, but the encoders are fed 128-px" \
        in result.err


def test_what_the_editing_and_api_fuzzing_pass_found(world, tmp_path, capsys, caplog):
    from hyperinverter.editing.directions import LinearDirection

    pipe = InversionPipeline.from_pretrained(world.model, device="cpu")
    result, _ = pipe.load_result(world.inv)
    # The API: steps without a bound took 24 GB; a path or None where a result belongs, and tensors on the meta
    # device, were errors from deep inside.
    with pytest.raises(ValueError, match="steps must be a whole number from 2 to 240"):
        pipe.interpolate(result, result, steps=10**9)
    for call in (lambda: pipe.edit(str(world.inv), "up"), lambda: pipe.mix(result, None, 0, 2),
                 lambda: pipe.save_result(None, tmp_path / "x.safetensors"), lambda: pipe.interpolate(result, None)):
        with pytest.raises(TypeError, match="must be an InversionResult"):
            call()
    for call, name in ((lambda: pipe.invert(torch.zeros(1, 3, 32, 32, device="meta")), "images"),
                       (lambda: pipe.render(torch.zeros(1, *result.ws.shape[1:], device="meta")), r"ws \(the codes\)"),
                       (lambda: pipe.edit(result, torch.ones(16, device="meta")), "direction")):
        with pytest.raises(ValueError, match=f"{name} is a tensor on the meta device"):
            call()
    # A strength too large to render blamed the model; one past the bound was stored by `directions train`.
    with pytest.raises(ValueError, match="its default strength must be a finite number within ±1e300"):
        LinearDirection(torch.ones(1, 16), name="x", default_strength=1e308)
    result_cli = cli(capsys, "edit", world.inv, "--model", world.model, "--direction", world.direction,
                     "--strength", "1e299", "--out", tmp_path / "e")
    assert result_cli.code == 1 and "give a smaller strength" in result_cli.err
    # A missing input stopped a batch of edits halfway (exit 2), hiding what had failed and what was left.
    other = world.inv_other.with_name("p1.safetensors")
    result_cli = cli(capsys, "edit", world.inv, tmp_path / "gone.safetensors", other, "--model", world.model,
                     "--direction", world.direction, "--out", tmp_path / "batch")
    assert result_cli.code == 1 and "gone.safetensors: no such file or directory" in result_cli.err
    assert "wrote edits of 1 input(s)" in result_cli.out  # (the other model's file fails on its own)
    # Messages that named the wrong thing, and a list that called a file a folder.
    result_cli = cli(capsys, "ganspace", "--model", world.model, "--components", "5-1", "--out", tmp_path / "s.png")
    assert result_cli.code == 2 and "bad component range '5-1'" in result_cli.err
    result_cli = cli(capsys, "directions", "list", "--model", world.inv)
    assert result_cli.code == 2 and "is a file, not a model folder" in result_cli.err
    result_cli = cli(capsys, "mix", world.inv, world.inv, "--model", world.model, "--layers", "0:2", "--layers", "0:2",
                     "--out", tmp_path / "m.png")
    assert result_cli.code == 2 and "--layers: 0:2 given more than once" in result_cli.err
    with pytest.raises(SystemExit):  # (it wrote clips.png, .gif and .mp4 beside the folder meant)
        main(["interpolate", str(world.inv), str(world.inv), "--model", str(world.model), "--out",
              f"{tmp_path}/clips/"])
    assert "names a folder (it ends in '/')" in capsys.readouterr().err and not list(tmp_path.glob("clips*"))
    # A folder of inversion files was a failed input ("is a folder, not an image file"): its files are edited.
    result_cli = cli(capsys, "edit", world.inv.parent, "--model", world.model, "--direction", world.direction, "--out",
                     tmp_path / "from-folder")
    assert result_cli.code == 0 and "wrote edits of 2 input(s)" in result_cli.out
    result_cli = cli(capsys, "edit", world.photos, "--model", world.model, "--direction", world.direction, "--out",
                     tmp_path / "from-photos")  # (a folder of photos: inverted, then edited)
    assert result_cli.code == 0 and "wrote edits of 2 input(s)" in result_cli.out
    # An inversion file that lost a layer's offset was rendered without it, without a word.
    from hyperinverter.io.checkpoints import read_safetensors, save_safetensors

    tensors, metadata = read_safetensors(world.inv)
    lost = min(k for k in tensors if k.startswith("delta."))
    save_safetensors(tmp_path / "cut.safetensors", {k: v for k, v in tensors.items() if k != lost}, metadata)
    with caplog.at_level("WARNING"):
        pipe.load_result(tmp_path / "cut.safetensors")
    assert f"its Δθ lacks offsets that this model's hyperinverter predicts ({lost[len('delta.'):]})" in caplog.text
    # One whose generator fingerprint was removed was rendered as though it had been checked.
    record = json.loads(metadata["inversion"])
    del record["generator"]
    save_safetensors(tmp_path / "unsigned.safetensors", tensors, {**metadata, "inversion": json.dumps(record)})
    caplog.clear()
    with caplog.at_level("WARNING"):
        pipe.load_result(world.inv)
        assert "records no generator fingerprint" not in caplog.text
        pipe.load_result(tmp_path / "unsigned.safetensors")
    assert "unsigned.safetensors records no generator fingerprint: it is rendered with" in caplog.text
    # A user's file over the weights of a folder export-generator wrote was replaced (its config.json was ours).
    assert cli(capsys, "export-generator", world.inv, "--model", world.model, "--out", tmp_path / "g").code == 0
    (tmp_path / "g" / "model.safetensors").write_text("mine")
    result_cli = cli(capsys, "export-generator", world.inv, "--model", world.model, "--out", tmp_path / "g")
    assert result_cli.code == 2 and "holds files hyperinverter did not write (model.safetensors)" in result_cli.err
    assert (tmp_path / "g" / "model.safetensors").read_text() == "mine"


def test_the_bundled_directions_know_their_generator(tmp_path, caplog):
    # A direction of fashion-32 used on faces-64 (both 128-d codes) gave an edit without a word.
    pipe = InversionPipeline.from_pretrained("faces-64", device="cpu")
    result = pipe.invert(pipe.prepare(torch.zeros(1, 3, 64, 64)))
    with caplog.at_level("WARNING"):
        pipe.edit(result, "yaw")
        assert "found on another generator" not in caplog.text
        from hyperinverter.catalogue import resolve_model

        pipe.edit(result, resolve_model("fashion-32") / "directions" / "print.safetensors")
    assert "direction 'print': it was found on another generator" in caplog.text


def test_upper_case_safetensors_suffixes(world, tmp_path, capsys):
    # p0.SAFETENSORS was read as an image ("not a readable image"), UP.SAFETENSORS looked up as a direction's name,
    # and a folder of such inversion files was inverted as photos.
    (tmp_path / "inv").mkdir()
    shutil.copy(world.inv, tmp_path / "inv" / "p0.SAFETENSORS")
    shutil.copy(world.direction, tmp_path / "UP.SAFETENSORS")
    for out, given in [("one", tmp_path / "inv" / "p0.SAFETENSORS"), ("all", tmp_path / "inv")]:
        result = cli(capsys, "edit", given, "--model", world.model, "--direction", tmp_path / "UP.SAFETENSORS",
                     "--strength", "1", "--out", tmp_path / out)
        assert result.code == 0 and "wrote edits of 1 input(s)" in result.out
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["p0_up_+1.png", "p0_up_strip.png"]


def test_what_the_second_api_fuzzing_pass_left(world):
    # A device of another type, a model given as bytes or None, and an empty list of results each failed inside
    # torch or os.path with a message that named no argument.
    from hyperinverter.device import resolve_device
    from hyperinverter.methods import InversionResult

    with pytest.raises(ValueError, match="invalid device 1.5"):
        resolve_device(1.5)
    for model in (b"faces-64", None, 3):
        with pytest.raises(TypeError, match="name_or_path must be a model name or a path"):
            InversionPipeline.from_pretrained(model, device="cpu")
    with pytest.raises(ValueError, match="cat needs at least one result"):
        InversionResult.cat([])


def test_a_safetensors_header_nested_too_deeply_is_refused(tmp_path):
    # Reading only the header (to know whether a file is ours before replacing it) was a RecursionError.
    from hyperinverter.io.checkpoints import read_safetensors_metadata
    from hyperinverter.io.files import check_file_replaceable, written_by_us

    header = b"[" * 10**6 + b"]" * 10**6
    path = hostile.write(tmp_path, "deep.safetensors", len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match=r"deep.safetensors: is not a safetensors file \(its header nests"):
        read_safetensors_metadata(path)
    assert not written_by_us(path)
    with pytest.raises(OutputError, match="deep.safetensors: exists and was not written by hyperinverter"):
        check_file_replaceable(path)


@pytest.mark.parametrize("edit, cause", [
    (lambda c: c.update(hidden_dim=0), "division by zero"),  # (a ZeroDivisionError inside)
    (lambda c: c.update(feature_channels=10**30), "Overflow"),  # (a TypeError inside: past torch's int64)
], ids=["hidden-dim-0", "channels-10**30"])
def test_a_component_config_of_sizes_that_cannot_be_built_is_refused(tmp_path, edit, cause):
    from hyperinverter.io.components import load_component, save_component_module
    from hyperinverter.models.hypernetwork import HyperNetwork

    folder = tmp_path / "hypernetwork"
    save_component_module(folder, HyperNetwork.from_generator(build_tiny_generator(), feature_channels=4,
                                                              feature_size=2, hidden_dim=2, inner_channels=2))
    hostile.set_json(folder / "config.json", lambda d: edit(d["config"]))
    with pytest.raises(CheckpointError, match=f"hypernetwork: its config describes a network that cannot be built: "
                                              f".*{cause}"):
        load_component(folder)
