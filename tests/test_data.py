"""Image folders (odd modes, corrupt files, split), IDX parsing, DCGAN source."""

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from conftest import lock_holder
from hyperinverter.data.folder import ImageFolderDataset
from hyperinverter.data.sources import DCGANFaceGenerator, _read_idx, fashion32
from hyperinverter.io.files import sha256_of
from hyperinverter.training.run import preload_uint8


@pytest.fixture
def odd_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(root / "nested" / "alpha.PNG")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), "L").save(root / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(root / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).convert("P").save(root / "nested" / "pal.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "nested" / "deeper" / "w.webp")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_every_mode_loads_and_corrupt_files_are_skipped(odd_folder, caplog):
    ds = ImageFolderDataset(odd_folder, resolution=16, channels=3, split="all")
    assert len(ds) == 7  # the .txt is not listed; the corrupt .jpg is, until it fails
    with caplog.at_level(logging.WARNING):
        x = preload_uint8(ds, progress=False)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8
    assert "corrupt.jpg" in caplog.text
    item = ds[[p.name for p in ds.files].index("corrupt.jpg")]  # substitutes the next readable image
    assert item.shape == (3, 16, 16) and item.min() >= -1 and item.max() <= 1
    gray = ImageFolderDataset(odd_folder, resolution=8, channels=1, split="all")
    assert gray[0].shape == (1, 8, 8)


def test_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(200):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:03d}.png")
    train = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="train", val_fraction=0.2)
    val = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=0.2)
    assert set(train.files).isdisjoint(val.files) and len(train) + len(val) == 200
    assert 20 <= len(val) <= 60
    (tmp_path / "new.png").write_bytes((tmp_path / "000.png").read_bytes())
    val2 = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=0.2)
    assert set(val.files) <= set(val2.files)  # adding a file never moves others


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path}: no images"):  # <folder>: <cause>
        ImageFolderDataset(tmp_path, resolution=8)
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'nope'}: no such image folder"):
        ImageFolderDataset(tmp_path / "nope", resolution=8)
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(NotADirectoryError, match="a.png is a file: give the folder"):  # it said "does not exist"
        ImageFolderDataset(tmp_path / "a.png", resolution=8)
    with pytest.raises(FileNotFoundError, match="'val' split .* is empty .*one image.*val_fraction=0 trains without"):
        ImageFolderDataset(tmp_path, resolution=8, split="val", val_fraction=0.02)


def test_a_small_folder_still_trains_and_validates(tmp_path):
    # 2 % of 6 images rounds to none: "the 'val' split is empty" refused every small folder.
    for i in range(6):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    for fraction in (0.02, 0.98):
        train = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="train", val_fraction=fraction)
        val = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=fraction)
        assert len(train) + len(val) == 6 and set(train.files).isdisjoint(val.files)
        assert min(len(train), len(val)) == 1
    assert len(ImageFolderDataset(tmp_path, resolution=4, split="train", val_fraction=0)) == 6
    with pytest.raises(FileNotFoundError, match="'val' split"):
        ImageFolderDataset(tmp_path, resolution=4, split="val", val_fraction=0)


def test_a_small_folder_s_one_validation_image_is_one_that_reads(tmp_path):
    # The one file given to an empty split was the nearest by hash, readable or not: a folder of 5 readable images
    # and an empty file "holds no readable image in its 'val' split (1 files)", and the run was refused.
    from hyperinverter.data.folder import in_val_split

    names = [f"{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        Image.new("L", (4, 4), i).save(tmp_path / name)
    for fraction in (0.02, 0.98):
        lone = in_val_split(names, fraction, 0).index(fraction < 0.5)  # the file the empty split would take
        (tmp_path / names[lone]).write_bytes(b"")
        train = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="train", val_fraction=fraction)
        val = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=fraction)
        assert len(train) + len(val) == 6 and set(train.files).isdisjoint(val.files)
        smaller = val if fraction < 0.5 else train
        assert len(smaller) == 1 and tmp_path / names[lone] not in smaller.files
        assert smaller[0].shape == (1, 4, 4)
        Image.new("L", (4, 4), lone).save(tmp_path / names[lone])


def test_idx_parser_and_fashion_padding(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    header = (0x00000803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(_read_idx(path, 0x00000803), images)
    with pytest.raises(ValueError, match="magic"):
        _read_idx(path, 0x00000801)
    x = fashion32(images)
    assert x.shape == (2, 1, 32, 32) and torch.all(x[:, :, :2] == -1)
    assert torch.allclose(x[:, 0, 2:30, 2:30], torch.from_numpy(images).float() / 127.5 - 1)


def test_dcgan_generator_shapes_and_strict_keys():
    net = DCGANFaceGenerator().eval()
    keys = set(net.state_dict())
    assert {"main.0.weight", "main.1.running_mean", "main.12.weight"} <= keys and not any(k.startswith("main.13") for k in keys)
    with torch.no_grad():
        assert net(torch.randn(2, 100)).shape == (2, 3, 64, 64)


def test_real_sources_when_installed():
    from hyperinverter.data import sources

    try:
        net = sources.load_dcgan_faces()
    except FileNotFoundError:
        pytest.skip("gan-face-generate is not installed")
    a = sources.sample_dcgan_faces(net, [5, 6, 7], batch_size=2)
    b = sources.sample_dcgan_faces(net, [7], batch_size=1)
    assert torch.allclose(a[2:], b, atol=1e-6)  # independent of batching
    if sources.FASHION_ROOT.is_dir():
        images, labels = sources.load_fashion_mnist("test")
        assert images.shape == (10000, 28, 28) and labels.max() == 9


def test_stylised_copies_keep_names_report_bad_files_and_resume(odd_folder, tmp_path, capsys):
    from hyperinverter.cli.main import main
    from hyperinverter.data.sources import pencil_sketch

    flat = Image.new("RGB", (16, 16), (90, 120, 30))
    assert np.asarray(pencil_sketch(flat)).min() == 255  # no edges, no strokes: white paper
    edge = Image.fromarray(np.repeat(np.r_[np.zeros(8), np.full(8, 255)][None, :, None], 16, 0).repeat(3, 2)
                           .astype(np.uint8))
    assert np.asarray(pencil_sketch(edge))[:, 7].mean() < 200  # a stroke along the edge

    out = tmp_path / "sketch"
    assert main(["data", "stylise", str(odd_folder), "--out", str(out)]) == 1  # corrupt.jpg failed
    captured = capsys.readouterr()  # (it was a warning, "skipped ...", and the summary said "1 unreadable")
    assert "; 1 image(s) failed" in captured.out
    assert f"\nfailed: {odd_folder / 'corrupt.jpg'}: not a readable image" in captured.err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["deep16.png", "gray.png", "nested/alpha.png", "nested/deeper/w.png", "nested/pal.png",
                       "rgb.png"]
    assert Image.open(out / "gray.png").mode == "RGB" and Image.open(out / "rgb.png").size == (60, 40)
    before = (out / "rgb.png").stat().st_mtime_ns
    assert main(["data", "stylise", str(odd_folder), "--out", str(out)]) == 1
    assert (out / "rgb.png").stat().st_mtime_ns == before  # resumed: finished files are kept
    assert main(["data", "stylise", str(odd_folder), "--out", str(odd_folder)]) == 2  # never over its sources
    assert main(["data", "stylise", str(odd_folder), "--out", str(out), "--style", "oil"]) == 2


def test_a_folder_without_images_is_no_dataset_to_stylise_or_align(tmp_path, capsys):
    # A source folder holding no image (empty, or other files) gave an empty dataset and "0 image(s) failed", exit 0.
    from hyperinverter.cli.main import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    for command in ("stylise", "align"):
        for source in ("empty", "notes"):
            assert main(["data", command, str(tmp_path / source), "--out", str(tmp_path / "out")]) == 2
            assert f"error: {tmp_path / source}: no image files in it" in capsys.readouterr().err
            assert not (tmp_path / "out").exists()


def test_datasets_are_never_written_into_a_user_folder(odd_folder, tmp_path, monkeypatch):
    # The writers keep existing files as already written and write dataset.json: into a user's folder, a user's
    # 000001.png became part of the dataset and their dataset.json was replaced.
    from hyperinverter.data import sources
    from hyperinverter.errors import OutputError

    user = tmp_path / "photos"
    user.mkdir()
    (user / "000001.png").write_bytes(b"mine")
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"not this dataset's \(000001.png\)"):  # not a sketch of odd_folder's
        sources.write_stylised(odd_folder, user)
    monkeypatch.setattr(sources, "load_fashion_mnist", lambda split: (np.zeros((3, 28, 28), np.uint8), np.zeros(3)))
    with pytest.raises(OutputError, match=r"holds files \(000001.png\) but no dataset.json"):  # (a name of ours)
        sources.write_fashion32(user, progress=False)
    (user / "notes.txt").unlink()
    (user / "dataset.json").write_text('{"mine": true}')
    with pytest.raises(OutputError, match="dataset.json that hyperinverter did not write"):
        sources.write_fashion32(user, progress=False)
    assert sorted(p.name for p in user.iterdir()) == ["000001.png", "dataset.json"]
    assert (user / "dataset.json").read_text() == '{"mine": true}'
    # New, interrupted (its record, written before any image) and finished folders are taken; numbered images
    # without a record are not (a user's folder of 000000.png ... was taken into the dataset).
    fresh = sources.write_fashion32(tmp_path / "fashion", progress=False)
    record = json.loads((fresh / "dataset.json").read_text())
    (fresh / "dataset.json").write_text(json.dumps({**record, "count": None}))
    (fresh / "000002.png").unlink()
    assert sources.write_fashion32(fresh, progress=False) == fresh and (fresh / "000002.png").is_file()
    assert sources.write_fashion32(fresh, progress=False) == fresh
    from hyperinverter.errors import InputError

    with pytest.raises(InputError, match="split 'train' \\(this run: 'test'\\)"):  # the test split over the train one
        sources.write_fashion32(fresh, "test", progress=False)
    (fresh / "dataset.json").unlink()
    with pytest.raises(OutputError, match=r"holds files \(000000.png\) but no dataset.json: not a dataset of"):
        sources.write_fashion32(fresh, progress=False)


def test_a_faces_dataset_is_not_resumed_with_fewer_faces_than_it_holds(tmp_path, monkeypatch):
    # `data faces64 --n 500` into a folder of 2,000 said "wrote 500 faces" and recorded 500, over the 2,000 that
    # training then read.
    from hyperinverter.data import sources
    from hyperinverter.errors import InputError, OutputError

    monkeypatch.setattr(sources, "load_dcgan_faces", lambda device: None)
    monkeypatch.setattr(sources, "sample_dcgan_faces", lambda net, seeds: torch.zeros(len(seeds), 3, 8, 8))
    out = sources.write_faces64(tmp_path / "faces", 4, progress=False)
    record = (out / "dataset.json").read_text()
    with pytest.raises(InputError, match="holds 4 faces, more than --n 2: give --n 4 or more"):
        sources.write_faces64(out, 2, progress=False)
    assert (out / "dataset.json").read_text() == record
    (out / "000003.png").unlink()  # a writing of 4 that was stopped: resumed
    assert sources.write_faces64(out, 4, progress=False) == out and (out / "000003.png").is_file()
    assert json.loads((sources.write_faces64(out, 6, progress=False) / "dataset.json").read_text())["count"] == 6
    # Seeds past numpy's last failed with the folder and its dataset.json made (a later run was then refused).
    with pytest.raises(ValueError, match=r"the seeds 4294967295\.\.4294967296 go past the last, 4294967295"):
        sources.write_faces64(tmp_path / "past", 2, seed_start=2**32 - 1, progress=False)
    assert not (tmp_path / "past").exists()
    # A folder without a record (a user's numbered images) was taken as an interrupted writing: with more faces than
    # --n it was left with a record the refused run wrote, claiming the folder; with fewer, the user's images were
    # kept as faces of the dataset.
    user = tmp_path / "user"
    user.mkdir()
    for i in range(3):
        hostile.photo(i, (8, 8)).save(user / f"{i:06d}.png")
    for n in (1, 5):
        with pytest.raises(OutputError, match=r"holds files \(000000.png\) but no dataset.json: not a dataset of"):
            sources.write_faces64(user, n, progress=False)
    assert sorted(p.name for p in user.iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_a_resumed_dataset_leaves_no_temporaries_of_the_killed_writing(odd_folder, tmp_path, monkeypatch):
    # Where files cannot be written unnamed (NFS), a writing killed halfway leaves hidden temporaries; invert's next
    # run removed its own, the dataset writers kept them for good (nested folders too, for stylise).
    import os

    from hyperinverter.data import sources

    monkeypatch.setattr(sources, "load_fashion_mnist", lambda split: (np.zeros((3, 28, 28), np.uint8), np.zeros(3)))
    fresh = sources.write_fashion32(tmp_path / "fashion", progress=False)
    (fresh / "000002.png").unlink()
    dead = 2**22 + 1  # (above any pid the kernel hands out: no process has it)
    stale = fresh / f".000002.png.0123456789abcdef-{dead}.partial"
    stale.write_bytes(b"half")
    running = fresh / f".000001.png.0123456789abcdef-{os.getppid()}.partial"  # a writer that still runs keeps its own
    running.write_bytes(b"half")
    assert sources.write_fashion32(fresh, progress=False) == fresh
    assert not stale.exists() and running.exists() and (fresh / "000002.png").is_file()
    sketch = tmp_path / "sketch"
    sources.write_stylised(odd_folder, sketch, progress=False)
    nested = sketch / "nested" / f".pal.png.0123456789abcdef-{dead}.partial"
    nested.write_bytes(b"half")
    sources.write_stylised(odd_folder, sketch, progress=False)
    assert not nested.exists()


def test_a_dataset_folder_in_use_is_refused(odd_folder, tmp_path, monkeypatch, capsys):
    # The dataset writers took no lock: two writings into one --out (stylise or align of two folders, or another
    # crop scale started at once) both wrote their images there, under a dataset.json that named one of them.
    import os

    from hyperinverter.cli.main import main
    from hyperinverter.data import sources
    from hyperinverter.errors import OutputError
    from hyperinverter.io import files
    from test_batch_inversion import TwoFaces

    monkeypatch.setattr(sources, "load_fashion_mnist", lambda split: (np.zeros((3, 28, 28), np.uint8), np.zeros(3)))
    out = tmp_path / "out"
    lock = out / files.OUTPUT_LOCK
    in_use = rf"out: is in use: another process is writing results there \({re.escape(lock_holder(os.getpid()))}\)"
    with files.output_folder(out):  # (one process's two opens of a flock conflict, as two processes' do)
        for write in (lambda: sources.write_faces64(out, 2, progress=False),
                      lambda: sources.write_fashion32(out, progress=False),
                      lambda: sources.write_stylised(odd_folder, out, progress=False),
                      lambda: sources.write_aligned(odd_folder, out, size=16, detector=TwoFaces(), progress=False)):
            with pytest.raises(OutputError, match=in_use):
                write()
        assert [p.name for p in out.iterdir()] == [lock.name]
        assert main(["data", "stylise", str(odd_folder), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [(
            f"error: {out}: is in use: another process is writing results there ({lock_holder(os.getpid())}); "
            "wait for it to end, or give another folder")]
    assert list(out.iterdir()) == []
    # A killed writing's lock file (its pid, or nothing) blocks nothing, is neither a stranger nor an image, and
    # goes with the next writing's.
    numbered = ["000000.png", "000001.png", "000002.png"]
    for left in ("999999\n", ""):
        lock.write_text(left)
        assert sources.write_fashion32(out, progress=False) == out
        assert sorted(p.name for p in out.iterdir()) == [*numbered, "dataset.json"]
        (out / "000001.png").unlink()  # (then a writing killed halfway)
    sketch = tmp_path / "sketch"
    sketch.mkdir()
    (sketch / files.OUTPUT_LOCK).write_text("999999\n")
    _, failed = sources.write_stylised(odd_folder, sketch, progress=False)
    assert json.loads((sketch / "dataset.json").read_text())["count"] == 6 == len(list(sketch.rglob("*.png")))
    assert not (sketch / files.OUTPUT_LOCK).exists() and len(failed) == 1  # (corrupt.jpg)
    # A file of that name that is not ours is refused, and left as it was.
    lock.write_text("my notes")
    with pytest.raises(OutputError, match="is not a lock file of hyperinverter's"):
        sources.write_fashion32(out, progress=False)
    assert lock.read_text() == "my notes" and not (out / "000001.png").exists()


def test_photos_are_aligned_into_training_data_every_face_and_resume(tmp_path, capsys, monkeypatch):
    # A user's own face domain: every face of every photo, framed as `invert --align` frames photos.
    from hyperinverter.apps import SAMPLES_DIR
    from hyperinverter.cli.main import main
    from hyperinverter.data.sources import write_aligned
    from hyperinverter.errors import OutputError
    from test_batch_inversion import TwoFaces

    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(photos / "trip" / "pair.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out, count, failed = write_aligned(photos, tmp_path / "faces", size=32, detector=TwoFaces(), progress=False)
    unreadable = f"{photos / 'broken.jpg'}: not a readable image (unknown or corrupt format)"
    assert count == 2 and [str(e) for e in failed] == [unreadable]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["trip/pair-face0.png",
                                                                                 "trip/pair-face1.png"]
    assert Image.open(out / "trip" / "pair-face0.png").size == (32, 32)
    before = (out / "trip" / "pair-face0.png").stat().st_mtime_ns
    assert write_aligned(photos, out, size=32, detector=TwoFaces(), progress=False)[1] == 2  # resumed
    assert (out / "trip" / "pair-face0.png").stat().st_mtime_ns == before
    # A user's file at a face's name was taken for the photo's aligned face (and counted): it is kept, and the
    # photo fails naming it.
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(photos / "solo.png")
    Image.new("RGB", (8, 8)).save(out / "solo-face0.png")
    _, count, failed = write_aligned(photos, out, size=32, detector=TwoFaces(), progress=False)
    assert count == 2 and Image.open(out / "solo-face0.png").size == (8, 8)
    assert f"{out / 'solo-face0.png'}: exists and was not written by hyperinverter" in str(failed[-1])
    (out / "solo-face0.png").unlink()
    (photos / "solo.png").unlink()
    # Other settings into the same folder skipped every photo and relabelled the old faces as the new size.
    from hyperinverter.errors import InputError

    for settings, what in (({"size": 64}, "size 32 \\(this run: 64\\)"), ({"size": 32, "scale": 1.5},
                                                                   "alignment .*crop scale 1' \\(this run: .*1.5")):
        with pytest.raises(InputError, match=rf"holds a dataset made with {what}.*give another --out"):
            write_aligned(photos, out, **settings, detector=TwoFaces(), progress=False)
    # Another folder of photos into it wrote its faces beside these, under a record naming the second folder only.
    (tmp_path / "others").mkdir()
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "others" / "x.png")
    with pytest.raises(InputError, match=r"holds a dataset made with source .*photos.* \(this run: .*others"):
        write_aligned(tmp_path / "others", out, size=32, detector=TwoFaces(), progress=False)
    assert not list(out.glob("x*"))
    # The same folder, by another path to it, resumes.
    assert write_aligned(photos / ".." / photos.name, out, size=32, detector=TwoFaces(), progress=False)[1] == 2
    assert (out / "trip" / "pair-face0.png").stat().st_mtime_ns == before
    # A source named relatively was recorded so: `photos` of another current folder was taken for it, and wrote
    # its faces beside these; the same folder named from elsewhere resumes.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "photos").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(elsewhere / "photos" / "y.png")
    monkeypatch.chdir(tmp_path)
    assert write_aligned(Path("photos"), tmp_path / "rel", size=32, detector=TwoFaces(), progress=False)[1] == 2
    monkeypatch.chdir(elsewhere)
    with pytest.raises(InputError, match=rf"holds a dataset made with source '{tmp_path / 'photos'}' \(this run: "):
        write_aligned(Path("photos"), tmp_path / "rel", size=32, detector=TwoFaces(), progress=False)
    assert not list((tmp_path / "rel").glob("y*"))
    assert write_aligned(Path("../photos"), tmp_path / "rel", size=32, detector=TwoFaces(), progress=False)[1] == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not this dataset's"):
        write_aligned(photos, tmp_path / "mine", detector=TwoFaces(), progress=False)

    # The command, with dlib, on the bundled photos and one without a face.
    pytest.importorskip("dlib")
    real = tmp_path / "real"
    real.mkdir()
    for photo in sorted(SAMPLES_DIR.glob("*.jpg"))[:2]:
        (real / photo.name).write_bytes(photo.read_bytes())
    Image.new("RGB", (300, 200), (90, 120, 200)).save(real / "sky.png")
    assert main(["data", "align", str(real), "--out", str(tmp_path / "aligned"), "--size", "64"]) == 1
    captured = capsys.readouterr()
    assert "sky.png: no face found" in captured.err and "holds 2 aligned face(s) of 64 px" in captured.out
    assert main(["data", "align", str(real), "--out", str(real)]) == 2  # never among its photos
    assert main(["data", "align", str(real), "--out", str(real / "faces")]) == 2  # read as photos next time
    assert "give --out outside it" in capsys.readouterr().err and not (real / "faces").exists()


def test_a_photo_whose_faces_were_named_in_part_is_aligned_again(tmp_path, monkeypatch):
    # A photo's faces are named one after the other and a resume checks its first face only: a kill between two
    # names left face0 alone, and every later run skipped the photo as done, its face1 never written.
    from hyperinverter.data.sources import write_aligned
    from hyperinverter.io import files
    from test_batch_inversion import TwoFaces

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(photos / "p.png")
    publish, named = files._publish, []

    def killed_after_one_face(staged, path):
        if path.suffix == ".png":
            if named:
                staged.discard()
                raise KeyboardInterrupt
            named.append(path)
        publish(staged, path)

    monkeypatch.setattr(files, "_publish", killed_after_one_face)
    with pytest.raises(KeyboardInterrupt):
        write_aligned(photos, tmp_path / "faces", size=32, detector=TwoFaces(), progress=False)
    monkeypatch.setattr(files, "_publish", publish)
    out, count, failed = write_aligned(photos, tmp_path / "faces", size=32, detector=TwoFaces(), progress=False)
    assert sorted(p.name for p in out.glob("*.png")) == ["p-face0.png", "p-face1.png"] and count == 2 and not failed


def test_two_photos_with_one_name_are_not_one_output(tmp_path):
    # p.jpg and p.png are both written as p.png: the second was skipped as done without a word (the stylised copy
    # counted it, the aligned faces left it out), and p-face0.png's face took the name of p.png's first face.
    from hyperinverter.data.sources import write_aligned, write_stylised
    from test_batch_inversion import TwoFaces

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p.jpg", "p.png", "q.png", "q-face0.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / name)
    _, failed = write_stylised(photos, tmp_path / "sketch", progress=False)
    assert [str(e) for e in failed] == [
        f"{photos / 'p.png'}: has the name of {photos / 'p.jpg'}: both would be written as p.png; rename one"]
    assert json.loads((tmp_path / "sketch" / "dataset.json").read_text())["count"] == 3
    _, count, failed = write_aligned(photos, tmp_path / "faces", size=32, detector=TwoFaces(), progress=False)
    assert sorted(str(e) for e in failed) == [
        f"{photos / 'p.png'}: has the name of {photos / 'p.jpg'}: both would be written as p.png; rename one",
        f"{photos / 'q-face0.png'}: is named like a face of {photos / 'q.png'} (q-face0.png); rename it"]
    assert count == 4  # p.jpg's and q.png's two faces each


def test_training_on_a_dataset_whose_writing_stopped_says_so(tmp_path, monkeypatch, caplog):
    # A killed `data` writing leaves its record without a count; training read the folder and took the part
    # written so far without a word.
    import json
    from types import SimpleNamespace

    from hyperinverter.data import sources
    from hyperinverter.training.loop import load_split

    monkeypatch.setattr(sources, "load_fashion_mnist", lambda split: (np.zeros((3, 28, 28), np.uint8), np.zeros(3)))
    folder = sources.write_fashion32(tmp_path / "fashion", progress=False)
    cfg = SimpleNamespace(data=str(folder), val_fraction=0.0, seed=0, content_rows=None, preload=True, progress=False)
    with caplog.at_level("WARNING"):
        assert len(load_split(cfg, 32, 1, "train")) == 3
    assert not sources.unfinished_dataset(folder) and "stopped before the end" not in caplog.text
    record = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**record, "count": None}))  # (as a killed writing leaves it)
    with caplog.at_level("WARNING"):
        load_split(cfg, 32, 1, "train")
    assert sources.unfinished_dataset(folder)
    assert "its writing by `hyperinverter data` stopped before the end; this run trains on what was written (3 " \
           "training images)" in caplog.text
    caplog.clear()  # a generator trains on every image (split "all"): it was told nothing
    with caplog.at_level("WARNING"):
        load_split(cfg, 32, 1, "all")
    assert "stopped before the end; this run trains on what was written (3 training images)" in caplog.text


def test_a_source_replaced_under_its_name_is_done_again(tmp_path):
    # A resumed `data stylise` or `data align` kept what it had made of a photo that was since replaced under its
    # name (a stale sketch, another person's face), as invert did before it recorded its sources' bytes.
    from hyperinverter.data.sources import write_aligned, write_stylised
    from hyperinverter.io.images import read_image
    from test_batch_inversion import TwoFaces, face_landmarks

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / name)
    write_stylised(photos, tmp_path / "sketch", progress=False)
    write_aligned(photos, tmp_path / "faces", size=16, detector=TwoFaces(), progress=False)
    untouched = [(tmp_path / "sketch" / "b.png").stat().st_mtime_ns,
                 (tmp_path / "faces" / "b-face0.png").stat().st_mtime_ns]
    before = np.asarray(read_image(tmp_path / "sketch" / "a.png"))
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photos / "a.png")  # another photo under the same name

    class OneFace:
        def __call__(self, image):
            return [face_landmarks(60, 60, 1.2)]

    write_stylised(photos, tmp_path / "sketch", progress=False)
    _, count, failed = write_aligned(photos, tmp_path / "faces", size=16, detector=OneFace(), progress=False)
    assert not np.array_equal(np.asarray(read_image(tmp_path / "sketch" / "a.png")), before)
    # The new photo has one face: its faces of the old photo are gone with it, the others' files are kept.
    assert sorted(p.name for p in (tmp_path / "faces").glob("*.png")) == ["a.png", "b-face0.png", "b-face1.png"]
    assert count == 3 and not failed
    assert [(tmp_path / "sketch" / "b.png").stat().st_mtime_ns,
            (tmp_path / "faces" / "b-face0.png").stat().st_mtime_ns] == untouched


def test_a_file_reached_under_two_names_is_one_image(tmp_path):
    # A link beside its target was read as a second image: trained twice as often as the others, and where the two
    # names fell in different splits, a training image was validated on.
    for i in range(12):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:03d}.png")
        (tmp_path / f"link{i:03d}.png").symlink_to(f"{i:03d}.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")  # (not an image, but reported: see its problems)
    train = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="train", val_fraction=0.3)
    val = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=0.3)
    everything = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="all")
    assert len(everything) == 12 and len(train) + len(val) == 12
    assert [str(e) for e in everything.problems] == [f"{tmp_path / 'gone.png'}: is a broken symbolic link"]
    assert not {p.resolve() for p in train.files} & {p.resolve() for p in val.files}


def test_byte_identical_copies_are_one_image(tmp_path, caplog, monkeypatch):
    # Copies under other names (not links) fell in both splits, by their names' hashes: validated on what trained.
    from hyperinverter.data import folder

    for i in range(12):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:03d}.png")
        (tmp_path / f"copy{i:03d}.png").write_bytes((tmp_path / f"{i:03d}.png").read_bytes())
    read = []
    monkeypatch.setattr(folder, "sha256_if_readable", lambda path: read.append(path) or sha256_of(path))
    with caplog.at_level(logging.WARNING):
        train = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="train", val_fraction=0.3)
        val = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="val", val_fraction=0.3)
    contents = [{p.read_bytes() for p in split.files} for split in (train, val)]
    assert len(train) + len(val) == 12 and not contents[0] & contents[1]
    assert all(not p.name.startswith("copy") for p in train.files + val.files)  # the first by name is kept
    assert caplog.text.count("12 image(s) are byte-identical copies of another under another name") == 1  # (train's)
    assert len(read) == len(set(read)) == 24  # each file read once for both splits (they were read for each)
    assert len(ImageFolderDataset(tmp_path, resolution=4, channels=1, split="all")) == 24  # (no split: all read)


def test_a_folder_that_cannot_be_listed_or_entered_is_reported_and_the_rest_is_read(tmp_path, monkeypatch):
    # Training and evaluation data: a folder that may not be listed was passed over without a word (evaluate and
    # benchmark scored the rest, exit 0), and one that may be listed but not entered ended the run.
    from hyperinverter.evaluation import load_heldout_images

    for name in ("fine", "private", "locked"):
        (tmp_path / name).mkdir()
        Image.new("L", (4, 4), len(name)).save(tmp_path / name / "a.png")
    hostile.refuse_folders(monkeypatch, unenterable=tmp_path / "locked", unlistable=tmp_path / "private")
    dataset = ImageFolderDataset(tmp_path, resolution=4, channels=1, split="all")
    assert dataset.files == [tmp_path / "fine" / "a.png"]
    _, names, failures = load_heldout_images(tmp_path, resolution=4, channels=1)
    assert names == ["fine/a.png"] and sorted(map(str, failures)) == [
        f"{tmp_path / 'locked' / 'a.png'}: permission denied",
        f"{tmp_path / 'private'}: is a folder that cannot be read (permission denied): its images are left out"]


def test_a_stylised_image_that_cannot_be_written_fails_alone(tmp_path):
    # foo.jpg is written as foo.png, where foo.png/a.png needs a folder: "file exists" ended the whole writing
    # (exit status 2, the dataset left unfinished) where align reports that photo and goes on.
    from hyperinverter.data.sources import unfinished_dataset, write_stylised

    photos = tmp_path / "photos"
    (photos / "foo.png").mkdir(parents=True)
    for path in (photos / "foo.jpg", photos / "foo.png" / "a.png", photos / "zed.png"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    out, failed = write_stylised(photos, tmp_path / "sketch", progress=False)
    assert [e.source for e in failed] == [str(out / "foo.png" / "a.png")]  # (what is in the way of its rendering)
    assert (out / "foo.png").is_file() and (out / "zed.png").is_file()
    assert not unfinished_dataset(out)
