"""E2Style's applications: restoration with a task-trained model, face swapping; API and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hyperinverter.apps import SAMPLES_DIR
from hyperinverter.cli.main import main
from hyperinverter.data.degradations import get_degradation
from hyperinverter.io.images import save_image
from hyperinverter.methods.e2style import E2Style
from hyperinverter.pipeline import InversionPipeline
from hyperinverter.restoration import face_mask, face_swap, restore


@pytest.fixture
def sr_pipe(tiny_generator, tmp_path):
    torch.manual_seed(0)
    encoders = E2Style.create(tiny_generator, stages=2).encoders
    method = E2Style(tiny_generator, encoders=encoders, encoder_resolution=64, task="sr4")
    InversionPipeline(method, device="cpu").save_pretrained(tmp_path / "sr4")
    return InversionPipeline.from_pretrained(tmp_path / "sr4", device="cpu"), tmp_path


def images(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_task_is_kept_in_the_bundle_and_restoration_reads_the_degraded_image(sr_pipe):
    pipe, _ = sr_pipe
    assert pipe.inverter().task == "sr4"
    x = images()
    out = restore(pipe, x, simulate=True, seed=3)  # (degraded at the 64 px its encoder reads, as it trains)
    at_64 = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    expected = get_degradation("sr4")(at_64, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.degraded, expected)
    torch.testing.assert_close(out.result.image, pipe.invert(expected, at_encoder_size=True).image)
    assert out.result.image.shape == x.shape
    degraded = get_degradation("sr4")(x, torch.Generator().manual_seed(3))
    plain = restore(pipe, degraded)  # an already degraded input is read as it is
    torch.testing.assert_close(plain.result.image, pipe.invert(degraded).image)
    torch.testing.assert_close(restore(pipe, expected).result.image, out.result.image)  # (at its encoder's size too)
    with pytest.raises(ValueError, match="compares its images with the input at the generator's 32 px"):
        pipe.invert(expected, method="w-opt", at_encoder_size=True)
    with pytest.raises(ValueError, match="unknown restoration task"):
        E2Style(pipe.generator, encoders=pipe.inverter().encoders, encoder_resolution=64, task="sr3")


def test_restoration_needs_a_task_model(pipeline):
    with pytest.raises(ValueError, match="not trained for a restoration task"):
        restore(pipeline, images())


def test_face_mask_and_swap_composite(sr_pipe):
    pipe, _ = sr_pipe
    mask = face_mask(64)
    assert mask.shape == (1, 1, 64, 64) and mask.min() == 0 and mask.max() == 1
    assert mask[0, 0, 32, 32] == 1 and mask[0, 0, 0, 0] == 0 and mask[0, 0, 63, 63] == 0
    assert ((mask > 0) & (mask < 1)).any()  # feathered
    source, target = images(1, 1), images(1, 2)
    swap = face_swap(pipe, source, target)
    inside, outside = swap.mask[0, 0] == 1, swap.mask[0, 0] == 0
    assert torch.equal(swap.composite[..., inside], source[..., inside])
    assert torch.equal(swap.composite[..., outside], target[..., outside])
    torch.testing.assert_close(swap.result.image, pipe.invert(swap.composite).image)
    with pytest.raises(ValueError, match="same shape"):
        face_swap(pipe, source, images(2))


def test_restore_and_swap_commands(sr_pipe, capsys):
    _, tmp_path = sr_pipe
    for i in range(2):
        save_image(images(1, i)[0], tmp_path / "in" / f"{i}.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    code = main(["restore", str(tmp_path / "in"), "--model", str(tmp_path / "sr4"), "--simulate", "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    assert code == 1  # the broken input failed, the others were restored
    assert "broken.png" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"0.png", "0_compare.png", "1.png", "1_compare.png"}
    code = main(["swap", str(tmp_path / "in" / "0.png"), str(tmp_path / "in" / "1.png"), "--model",
                 str(tmp_path / "sr4"), "--device", "cpu", "--out", str(tmp_path / "swap.png")])
    assert code == 0 and (tmp_path / "swap.png").is_file() and (tmp_path / "swap_compare.png").is_file()
    code = main(["swap", str(tmp_path / "in" / "0.png"), str(tmp_path / "in" / "1.png"), "--model",
                 str(tmp_path / "sr4"), "--device", "cpu", "--out", str(tmp_path / "swap.jpg")])
    assert code == 0 and Image.open(tmp_path / "swap.jpg").format == "JPEG"  # (PNG bytes under a .jpg name)
    capsys.readouterr()
    code = main(["swap", str(tmp_path / "in" / "0.png"), str(tmp_path / "in" / "1.png"), "--model",
                 str(tmp_path / "sr4"), "--device", "cpu", "--out", str(tmp_path / "swap2.png"),
                 "--option", "no_such_option=1"])  # the method's options reach it (they were ignored)
    assert code == 2 and "has no option ['no_such_option']" in capsys.readouterr().err


def test_restore_resumes_on_the_same_inputs_model_and_settings(sr_pipe, capsys):
    # `restore` redid a whole folder when run again after an interruption.
    _, tmp_path = sr_pipe
    for i in range(2):
        save_image(images(1, i)[0], tmp_path / "in" / f"{i}.png")

    def restore_folder(*extra: str) -> str:
        capsys.readouterr()
        assert main(["restore", str(tmp_path / "in"), "--model", str(tmp_path / "sr4"), "--device", "cpu",
                     "--out", str(tmp_path / "out"), *extra]) == 0
        return capsys.readouterr().out

    assert "restored 2 image(s) (sr4)" in restore_folder()
    result = (tmp_path / "out" / "1.png").read_bytes()
    assert restore_folder().endswith("restored 0 image(s) (sr4) into " + str(tmp_path / "out")
                                     + "; 2 already done, 0 failed\n")
    assert (tmp_path / "out" / "1.png").read_bytes() == result
    assert "restored 2 image(s)" in restore_folder("--overwrite")
    assert "restored 2 image(s)" in restore_folder("--simulate")  # other settings: other results
    save_image(images(1, 5)[0], tmp_path / "in" / "1.png")  # another image under the same name
    assert "restored 1 image(s)" in restore_folder("--simulate")
    (tmp_path / "out" / "0_compare.png").unlink()  # an input's results are redone unless all are there
    assert "restored 1 image(s)" in restore_folder("--simulate")
    assert (tmp_path / "out" / "1.png").read_bytes() != result
    code = main(["restore", str(tmp_path / "in"), "--model", str(tmp_path / "sr4"), "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--option", "no_such_option=1"])
    assert code == 2 and "has no option ['no_such_option']" in capsys.readouterr().err


def test_restore_and_swap_never_replace_an_input(sr_pipe, capsys):
    # They wrote over their inputs: restore into the input folder replaced NAME.png, swap --out TARGET replaced it.
    _, tmp_path = sr_pipe
    folder = tmp_path / "photos"
    for i in range(2):
        save_image(images(1, i)[0], folder / f"{i}.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code = main(["restore", str(folder), "--model", str(tmp_path / "sr4"), "--device", "cpu", "--out", str(folder)])
    assert code == 2 and f"{folder}: is the input folder {folder}: the results would sit among the photos" in \
        capsys.readouterr().err  # (before any work)
    code = main(["restore", *(str(folder / f"{i}.png") for i in range(2)), "--model", str(tmp_path / "sr4"),
                 "--device", "cpu", "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("writing the result would replace it") == 2
    assert err.count("failed: ") == 2 and "failed: failed" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    code = main(["swap", str(folder / "0.png"), str(folder / "1.png"), "--model", str(tmp_path / "sr4"),
                 "--device", "cpu", "--out", str(folder / "1.png")])
    assert code == 2 and "is the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_restore_names_each_failure_once(sr_pipe, capsys):
    _, tmp_path = sr_pipe
    (tmp_path / "in").mkdir()
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    code = main(["restore", str(broken), "--model", str(tmp_path / "sr4"), "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count(str(broken)) == 1, err  # was "failed: PATH: PATH: not a readable image"

    # A named pipe given as an input fails alone; restore waited for a writer without end (hashing it).
    import os
    import threading
    import time

    pipe = tmp_path / "in" / "pipe.png"
    os.mkfifo(pipe)
    watchdog = threading.Timer(15, lambda: open(pipe, "wb").close())  # (ends the wait of a reader that hangs)
    watchdog.start()
    started = time.perf_counter()
    try:
        code = main(["restore", str(pipe), str(SAMPLES_DIR / "obama.jpg"), "--model", str(tmp_path / "sr4"),
                     "--device", "cpu", "--out", str(tmp_path / "out-pipe")])
    finally:
        watchdog.cancel()
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert code == 1 and f"failed: {pipe}: is a named pipe, not an image file" in err, err
    assert (tmp_path / "out-pipe" / "obama.png").is_file()


def test_swap_aligns_photos_and_pastes_only_the_face_back(sr_pipe, capsys):
    # `swap` took aligned crops only: two photos were squashed into the model's square without a word.
    from PIL import Image

    from hyperinverter.io.images import read_image

    _, tmp_path = sr_pipe
    source, target = SAMPLES_DIR / "astronaut.jpg", SAMPLES_DIR / "obama.jpg"
    code = main(["swap", str(source), str(target), "--align", "--model", str(tmp_path / "sr4"), "--device", "cpu",
                 "--out", str(tmp_path / "swap.png")])
    assert code == 0 and "swap_photo.png" in capsys.readouterr().out
    assert Image.open(tmp_path / "swap.png").size == (32, 32)  # the aligned result, at the model's resolution
    photo, pasted = np.asarray(read_image(target)), np.asarray(Image.open(tmp_path / "swap_photo.png"))
    assert pasted.shape == photo.shape
    changed = np.abs(pasted.astype(int) - photo).max(-1) > 0
    rows, cols = np.nonzero(changed)
    # Only the face ellipse went back, around Obama's face (its centre near (256, 130) in this 512x640 photo), not
    # the aligned crop's whole square: the photo's corners and lower half are untouched.
    assert abs(cols.mean() - 256) < 40 and abs(rows.mean() - 130) < 40 and 0 < changed.mean() < 0.15
    assert not changed[:, :100].any() and not changed[:, -100:].any() and not changed[320:].any()

    Image.new("RGB", (120, 120), "gray").save(tmp_path / "blank.png")
    code = main(["swap", str(source), str(tmp_path / "blank.png"), "--align", "--model", str(tmp_path / "sr4"),
                 "--device", "cpu", "--out", str(tmp_path / "none.png")])
    assert code == 2 and "blank.png: no face found" in capsys.readouterr().err
    assert not list(tmp_path.glob("none*"))


def test_restore_aligns_every_face_and_pastes_them_back(sr_pipe, capsys):
    # `restore` took aligned crops only: a photo was squashed into the model's square, face or not.
    from PIL import Image

    from hyperinverter.io.images import read_image

    _, tmp_path = sr_pipe
    Image.new("RGB", (120, 120), "gray").save(tmp_path / "blank.png")
    photos = [str(SAMPLES_DIR / "obama.jpg"), str(SAMPLES_DIR / "astronaut.jpg"), str(tmp_path / "blank.png")]
    command = ["restore", *photos, "--align", "--model", str(tmp_path / "sr4"), "--device", "cpu",
               "--out", str(tmp_path / "out")]
    assert main(command) == 1  # the blank photo has no face; the others are restored
    captured = capsys.readouterr()
    assert "blank.png: no face found" in captured.err and "restored 2 image(s) (sr4)" in captured.out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        f"{name}{ending}.png" for name in ("obama", "astronaut") for ending in ("", "_compare", "_photo")}
    assert Image.open(tmp_path / "out" / "obama.png").size == (32, 32)  # the aligned crop, restored
    photo = np.asarray(read_image(SAMPLES_DIR / "obama.jpg"))
    pasted = np.asarray(Image.open(tmp_path / "out" / "obama_photo.png"))
    changed = np.abs(pasted.astype(int) - photo).max(-1) > 0
    assert pasted.shape == photo.shape and 0 < changed.mean() < 0.3 and not changed[400:].any()  # the face only
    assert main(command) == 1 and "0 image(s) (sr4) into" in capsys.readouterr().out  # done: skipped
    # The same in Python: the photo whole (no photo to paste into), or its faces pasted back.
    from hyperinverter.align import Dlib68Detector
    from hyperinverter.restoration import restore_photo

    pipe = InversionPipeline.from_pretrained(tmp_path / "sr4", device="cpu")
    whole = restore_photo(pipe, read_image(SAMPLES_DIR / "obama.jpg"))
    faces = restore_photo(pipe, read_image(SAMPLES_DIR / "obama.jpg"), detector=Dlib68Detector())
    assert whole.photo is None and len(whole.pictures) == 1 and whole.pictures[0].placement is None
    assert faces.photo.size == (512, 640) and faces.pictures[0].placement is not None
    assert np.array_equal(np.asarray(faces.photo), pasted)
    assert main([*command, "--min-face-score", "0"]) == 1  # other settings: made again
    assert "restored 2 image(s)" in capsys.readouterr().out


def test_a_bright_photo_is_restored_without_the_warning_of_floats_in_0_1(sr_pipe, caplog):
    # restore_photo reads the photo itself, into [-1, 1]: one with no pixel below mid-grey (a white background) was
    # warned of as floats in [0, 1] given by mistake, as `restore` on a folder showed for every such photo.
    from hyperinverter.restoration import restore_photo

    pipe, _ = sr_pipe
    bright = Image.fromarray(np.random.default_rng(0).integers(128, 256, (48, 48, 3), dtype=np.uint8))
    with caplog.at_level("WARNING"):
        restored = restore_photo(pipe, bright)
    assert float(restored.pictures[0].image.min()) >= 0 and "no negative values" not in caplog.text
    with caplog.at_level("WARNING"):
        restore(pipe, restored.pictures[0].image)  # (a tensor a user gives is still warned of)
    assert "no negative values" in caplog.text


def test_a_photo_smaller_than_the_generator_is_restored_from_its_own_pixels(sr_pipe):
    # invert reads such a photo through its own pixels (not their Lanczos enlargement, which reached the encoder
    # blurred); restore_photo, the path of the `restore` command whose inputs are small degraded photos, did not.
    from hyperinverter.restoration import restore_photo

    pipe, _ = sr_pipe
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    seen = []
    pipe.inverter().encoders.stage(0).register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    inverted = pipe.invert([photo])
    restored = restore_photo(pipe, photo)
    assert len(seen) == 2
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)
    torch.testing.assert_close(restored.restoration.result.ws, inverted.ws)
    assert restored.restoration.degraded.shape == (1, 3, 32, 32)  # (what the compare strip shows: as before)
    restore_photo(pipe, photo, simulate=True)  # (degraded from the clean image, at the encoder's size)
    assert seen[2].shape == (1, 3, 64, 64)
