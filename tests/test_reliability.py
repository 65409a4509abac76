"""Interrupted runs resume, writes are atomic and durable, folder swaps never leave a gap, and a batch resumes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import hostile
from conftest import build_tiny_generator, build_tiny_pipeline, lock_holder
from hyperinverter.catalogue import sha256_of
from hyperinverter.cli.main import main
from hyperinverter.inversion.batch import invert_files, torchrun_job
from hyperinverter.inversion.files import load_inversion
from hyperinverter.io import files
from hyperinverter.io.gan import save_gan
from hyperinverter.training.checkpointing import list_checkpoints, save_checkpoint
from test_batch_inversion import TwoFaces, write_photos


def test_an_output_never_replaces_a_file_that_we_did_not_write(pipeline, tmp_path, capsys):
    """A user's photo, notes or model under an output's name is refused and left as it was, while the rest of the
    batch is written; files we wrote are replaced as before. (invert replaced a user's p0.png, and a text file
    named p1_compare.png, without a word.)"""
    import io

    import matplotlib.pyplot as plt
    from safetensors.torch import save as safetensors_bytes

    from hyperinverter.errors import OutputError
    from hyperinverter.io.checkpoints import save_safetensors
    from hyperinverter.io.images import gif_bytes, image_bytes

    paths = write_photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    out.mkdir()
    photo = io.BytesIO()
    hostile.photo(7).save(photo, format="PNG")
    users = {out / "p0.png": photo.getvalue(), out / "p1_compare.png": b"my notes",
             out / "p2.safetensors": safetensors_bytes({"w": torch.zeros(2)}, metadata={"format": "pt"})}
    for path, data in users.items():
        path.write_bytes(data)
    report = invert_files(pipeline, paths, out, progress=False)
    assert [p.name for p in report.written] == ["p3.safetensors"]
    assert sorted(Path(e.source).name for e in report.failed) == sorted(p.name for p in users)
    assert all("was not written by hyperinverter" in str(e) for e in report.failed)
    assert all(path.read_bytes() == data for path, data in users.items())
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1_compare.png", "p2.safetensors", "p3.png",
                                                     "p3.safetensors", "p3_compare.png"]  # each group whole or not
    assert len(invert_files(pipeline, paths[3:], out, progress=False, overwrite=True).written) == 1  # ours: replaced

    # What marks a file as ours, in every format we write; anything else is not.
    image = torch.zeros(1, 3, 8, 8)
    ours = {"a.png": image_bytes(image), "a.jpg": image_bytes(image, ".jpg"), "a.webp": image_bytes(image, ".webp"),
            "a.gif": gif_bytes([image, image]), "made.png": image_bytes(image, made_with="x")}
    for name, data in ours.items():
        (tmp_path / name).write_bytes(data)
    save_safetensors(tmp_path / "a.safetensors", {"w": torch.zeros(2)})
    fig = plt.figure()
    files.atomic_write_figure(tmp_path / "figure.png", fig)
    for name in [*ours, "a.safetensors", "figure.png"]:
        assert files.written_by_us(tmp_path / name), name
    plt.figure().savefig(tmp_path / "theirs.png")
    hostile.photo(1).save(tmp_path / "theirs.jpg")
    hostile.photo(1).save(tmp_path / "theirs.webp")
    (tmp_path / "cut.png").write_bytes(image_bytes(image)[:20])
    for name in ["theirs.png", "theirs.jpg", "theirs.webp", "cut.png", "p1_compare.png", "p2.safetensors",
                 "missing.png"]:
        assert not files.written_by_us((out if name.startswith("p") else tmp_path) / name), name
    before = (tmp_path / "theirs.jpg").read_bytes()
    with pytest.raises(OutputError, match="theirs.jpg: exists and was not written by hyperinverter"):
        files.atomic_write_group([(tmp_path / "new.png", image_bytes(image)), (tmp_path / "theirs.jpg", b"")])
    assert (tmp_path / "theirs.jpg").read_bytes() == before and not (tmp_path / "new.png").exists()

    # A command that writes one file refuses (status 2); one that writes a file per item fails the item (status 1).
    save_gan(tmp_path / "g", pipeline.generator)
    samples = tmp_path / "samples"
    samples.mkdir()
    hostile.photo(2).save(samples / "seed0001.png")
    (samples / "grid.png").write_bytes(photo.getvalue())
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "g"), "--seeds", "0-1", "--out", str(samples / "grid.png")]) == 2
    assert "grid.png: exists and was not written by hyperinverter" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "g"), "--seeds", "0-2", "--outdir", str(samples)]) == 1
    printed = capsys.readouterr()
    assert "failed: " in printed.err and "seed0001.png: exists and was not written" in printed.err
    assert "wrote 2 samples" in printed.out and "1 failed" in printed.out
    assert (samples / "grid.png").read_bytes() == photo.getvalue()
    assert Image.open(samples / "seed0001.png").size == hostile.photo(2).size


def test_invert_resumes_and_redoes_only_what_is_missing(pipeline, tmp_path):
    paths = write_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert len(invert_files(pipeline, paths, out, progress=False).written) == 3
    again = invert_files(pipeline, paths, out, progress=False)
    assert not again.written and again.skipped == paths
    assert len(invert_files(pipeline, paths, out, progress=False, overwrite=True).written) == 3
    (out / "p1.safetensors").unlink()
    partial = invert_files(pipeline, paths, out, progress=False)
    assert [p.name for p in partial.written] == ["p1.safetensors"] and len(partial.skipped) == 2
    # Another model's results, or other options, are not this run's results: they are redone.
    other = build_tiny_pipeline(build_tiny_generator(seed=5))
    assert len(invert_files(other, paths, out, progress=False).written) == 3
    assert len(invert_files(other, paths, out, progress=False, method="phase1").written) == 3
    # The same generator with a retrained encoder, or the same method with other options: skipped before, so a
    # re-run kept the old encoder's results. Each redoes the inputs once, then skips them.
    with torch.no_grad():
        next(other.inverter("phase1").parts()["w_encoder"].parameters()).add_(0.1)
    assert len(invert_files(other, paths, out, progress=False, method="phase1").written) == 3
    assert not invert_files(other, paths, out, progress=False, method="phase1").written
    assert len(invert_files(other, paths, out, progress=False, method="w-opt", options={"steps": 1}).written) == 3
    assert len(invert_files(other, paths, out, progress=False, method="w-opt", options={"steps": 2}).written) == 3
    assert not invert_files(other, paths, out, progress=False, method="w-opt", options={"steps": 2}).written
    assert load_inversion(out / "p0.safetensors")[2]["made_with"] is not None
    # A photo replaced under its old name is another photo: only it is redone.
    hostile.photo(7, (40, 40)).save(paths[2])
    replaced = invert_files(other, paths, out, progress=False, method="w-opt", options={"steps": 2})
    assert [p.name for p in replaced.written] == ["p2.safetensors"] and replaced.skipped == paths[:2]
    assert load_inversion(out / "p2.safetensors")[2]["source_sha256"] == sha256_of(paths[2])


def test_a_photo_with_several_faces_is_done_only_when_every_face_is(pipeline, tmp_path):
    photo = tmp_path / "group.png"
    hostile.photo(0, (200, 160)).save(photo)
    out = tmp_path / "out"
    assert len(invert_files(pipeline, [photo], out, detector=TwoFaces(), progress=False).written) == 2
    assert invert_files(pipeline, [photo], out, detector=TwoFaces(), progress=False).skipped == [photo]
    (out / "group-face1.safetensors").unlink()
    redo = invert_files(pipeline, [photo], out, detector=TwoFaces(), progress=False)
    assert sorted(p.name for p in redo.written) == ["group-face0.safetensors", "group-face1.safetensors"]
    # Unaligned, the same photo is another job.
    assert len(invert_files(pipeline, [photo], out, progress=False).written) == 1


def _outputs_are_complete(out: Path) -> set[str]:
    """Every picture in ``out`` has its three readable files, and nothing else is there; -> the finished names.

    The one exception: a kill in the microseconds between naming a picture's first file and its last may leave
    that one picture's images without its inversion file (so it counts as not done, and the next run redoes it).
    """
    done = set()
    for entry in out.iterdir():
        if entry.suffix == ".safetensors":
            load_inversion(entry)
            stem = entry.stem
            for image in (out / f"{stem}.png", out / f"{stem}_compare.png"):
                with Image.open(image) as im:
                    im.load()
            done.add(stem)
    expected = {f"{s}{tail}" for s in done for tail in (".png", "_compare.png", ".safetensors")}
    extra = {e.name for e in out.iterdir()} - expected - {files.OUTPUT_LOCK}  # (a killed run's: it blocks nothing)
    in_flight = {n.removesuffix("_compare.png").removesuffix(".png") for n in extra if n.endswith(".png")}
    if not files._unnamed_supported(out):  # written under hidden names first: a kill may leave those
        extra = {n for n in extra if not n.endswith(".partial")}
    assert len(in_flight) <= 1 and extra <= {f"{s}{t}" for s in in_flight for t in (".png", "_compare.png")}, extra
    for name in extra:
        with Image.open(out / name) as im:
            im.load()
    return done


def test_a_killed_invert_leaves_only_complete_pictures_and_resumes(pipeline, tmp_path, capsys):
    pipeline.save_pretrained(tmp_path / "model")
    inputs = tmp_path / "in"
    write_photos(inputs, 120)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "hyperinverter.cli.main", "invert", str(inputs), "--model",
               str(tmp_path / "model"), "--out", str(out), "--batch-size", "1", "--device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and len(list(out.glob("*.safetensors"))) >= 5:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = _outputs_are_complete(out)
    assert 5 <= len(done) < 120
    capsys.readouterr()
    assert main(command[3:]) == 0  # the run again, in this process
    again = capsys.readouterr()
    assert f"wrote {120 - len(done)} picture(s)" in again.out and f"{len(done)} input(s) already done" in again.out
    assert f"{out}: the last process writing results there ({lock_holder(process.pid)}) was killed" in again.err
    assert len(_outputs_are_complete(out)) == 120
    assert not (out / files.OUTPUT_LOCK).exists()  # the run that finished took the killed one's lock file away


def test_a_clip_killed_mid_write_leaves_no_temporary_after_the_next_run(pipeline, tmp_path):
    # The MP4 encoder writes a file, in a folder made in the system's temporary folder: a SIGKILL there left the
    # folder and its half-written clip for good. It is made beside the output now, and the next run removes it.
    pipeline.save_pretrained(tmp_path / "model")
    for i, name in enumerate(("a.png", "b.png")):
        hostile.photo(i).save(tmp_path / name)
    script = ("import os, signal, sys\n"
              "from hyperinverter.io import video\n"
              "from hyperinverter.cli.main import main\n"
              "def encode(path, rgb, fps):\n"  # (stands for PyAV: a clip written in parts, killed halfway)
              "    path.write_bytes(b'half a clip')\n"
              "    if sys.argv[1] == 'kill':\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    path.write_bytes(b'\\0\\0\\0\\x10ftyp hyperinverter')\n"
              "video.available_backends = lambda: ['av']\n"
              "video._write_av = encode\n"
              "sys.exit(main(sys.argv[2:]))\n")
    system_temp, out = tmp_path / "system-temp", tmp_path / "out"
    system_temp.mkdir()
    env = dict(os.environ, TMPDIR=str(system_temp), OMP_NUM_THREADS="1")
    arguments = ["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tmp_path / "model"),
                 "--out", str(out / "lerp"), "--steps", "3", "--device", "cpu"]
    killed = subprocess.run([sys.executable, "-c", script, "kill", *arguments], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list(system_temp.iterdir())  # (where nothing of ours ever cleans)
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and files.is_temporary(left[0]) and left[0].startswith(".lerp.mp4."), left
    done = subprocess.run([sys.executable, "-c", script, "write", *arguments], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lerp.gif", "lerp.mp4", "lerp.png"]
    assert not list(system_temp.iterdir())


def test_sigterm_ends_a_command_as_ctrl_c_does(pipeline, tmp_path, monkeypatch, capsys):
    # SIGTERM (kill, a scheduler) ended a command on the spot: no message, no exit status of its own.
    from hyperinverter.inversion import batch

    pipeline.save_pretrained(tmp_path / "model")
    write_photos(tmp_path / "in", 6)
    real_read = batch.read_pictures
    calls = []

    def terminated_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(batch, "read_pictures", terminated_on_the_third_batch)
    previous = signal.getsignal(signal.SIGTERM)
    code = main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--batch-size", "2", "--device", "cpu"])
    assert code == 143 and "interrupted: SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is previous  # the command's handler is given back
    assert _outputs_are_complete(tmp_path / "out") == {"p0", "p1", "p2", "p3"}  # the batches before it, whole
    monkeypatch.setattr(batch, "read_pictures", real_read)
    assert main(["invert", str(tmp_path / "in"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--batch-size", "2", "--device", "cpu"]) == 0
    assert "wrote 2 picture(s)" in capsys.readouterr().out


def test_a_ctrl_c_while_a_finished_command_exits_prints_no_traceback():
    # Ctrl-C between a command's last line and the end of its process (PyTorch's exit handlers take a moment)
    # raised KeyboardInterrupt in an exit handler: "Exception ignored in atexit callback" and its traceback.
    script = ("import atexit, os, signal, sys, time\n"
              "from hyperinverter.cli.main import main\n"
              "sys.argv = ['hyperinverter', 'methods']\n"
              "status = main()\n"
              "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))\n"
              "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "phase1" in done.stdout
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_an_interruption_while_an_extension_loads_is_an_interruption(tmp_path, monkeypatch, capsys):
    # SIGTERM while dlib loaded: pybind11 reports an interrupted initialisation as ImportError("initialization
    # failed") from the KeyboardInterrupt, and `data align` said "error: face alignment needs dlib: pip install ...",
    # exit status 2, for an installed dlib.
    import builtins

    from hyperinverter.cli.main import Terminated

    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("initialization failed") from Terminated("SIGTERM")
        return real_import(name, *args, **kwargs)

    write_photos(tmp_path / "photos", 1)
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    code = main(["data", "align", str(tmp_path / "photos"), "--out", str(tmp_path / "faces")])
    err = capsys.readouterr().err
    assert code == 143 and "interrupted: SIGTERM" in err and "needs dlib" not in err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # `hyperinverter models | head -1`: once head had gone, the command printed "error: broken pipe" and exited 2, a
    # bad model's status; it ends as other programs do, quietly with SIGPIPE's status (Python ignores the signal).
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "hyperinverter", "env"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE
    assert done.stderr == ""


def test_checkpoints_are_flushed_before_older_ones_are_deleted(tmp_path, monkeypatch):
    events = []
    real_fsync, real_unlink = os.fsync, Path.unlink
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (events.append(f"unlink {self.name}"),
                                                                real_unlink(self, *a, **k))[1])
    module = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, modules={"m": module}, keep=1)
    events.clear()
    save_checkpoint(tmp_path, 2, modules={"m": module}, keep=1)
    assert events[:3] == ["fsync", "fsync", "unlink checkpoint-00000001.safetensors"]  # file, folder, then delete
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002.safetensors"]


def test_atomic_writes_flush_the_file_and_its_folder(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
    files.atomic_write_bytes(tmp_path / "a.bin", b"data")
    import stat

    assert [stat.S_ISREG(m) for m in flushed] == [True, False]  # the file, then the folder
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert oct((tmp_path / "a.bin").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_a_full_disk_names_the_file_and_leaves_nothing(pipeline, tmp_path, monkeypatch, capsys):
    import errno

    (tmp_path / "b.bin").write_bytes(b"old")
    photos = tmp_path / "photos"
    write_photos(photos, 1)
    pipeline.save_pretrained(tmp_path / "model")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.write reports it: no file name

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError) as caught:
        files.atomic_write_bytes(tmp_path / "b.bin", b"new")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "b.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "model", "photos"]  # no temporary left
    assert (tmp_path / "b.bin").read_bytes() == b"old"
    # The command's one line names the file (it said only "error: no space left on device").
    code = main(["invert", str(photos), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"\nerror: {tmp_path / 'out'}" in err and "no space left on device (free some space" in err
    assert err.rstrip().endswith("a batch command resumes where it stopped)")  # what to do: it keeps what it wrote
    assert not list((tmp_path / "out").iterdir())


def test_a_full_disk_while_a_folder_is_built_names_the_output_not_the_hidden_folder(tmp_path, monkeypatch):
    # export-generator onto a full disk said "error: OUT/.gen.<hex>-<pid>.partial/model.safetensors: no space left
    # on device", naming the hidden folder the output is built in (removed by then), not the output.
    import errno

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError) as caught:
        save_gan(tmp_path / "gen", build_tiny_generator())
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "gen" / "model.safetensors")
    assert not list(tmp_path.iterdir())  # the half-built folder is gone


def test_a_folder_that_refuses_files_names_the_file_asked_for(tmp_path, monkeypatch):
    # Where files cannot be written unnamed (O_TMPFILE), the temporary is a hidden sibling; the error named it
    # ("/proc/.x.pt.6d1e23cbd40c7eaa.partial: no such file or directory") instead of the file asked for.
    import errno

    real_open = os.open

    def refusing_open(path, flags, *args):
        if str(path).endswith(".partial"):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)  # as /proc answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(files, "_unnamed_supported", lambda directory: False)
    monkeypatch.setattr(files.os, "open", refusing_open)
    target = tmp_path / "x.pt"
    with pytest.raises(FileNotFoundError) as caught:
        files.atomic_write_bytes(target, b"data")
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []

def test_temporaries_of_a_process_still_writing_are_not_stale(tmp_path):
    # Two commands writing into one folder (two GPUs inverting into one --out): the second one's start removed the
    # first one's writes in progress where files cannot be written unnamed (NFS), and its items then failed.
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"running": f".a.png.0123456789abcdef-{writer.pid}.partial",
                 "killed": ".b.png.0123456789abcdef-999999999.partial",  # (no such process)
                 "older format": ".c.png.0123456789abcdef.partial"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"half")
        assert files.remove_stale_temporaries(tmp_path) == 2
        assert [p.name for p in tmp_path.iterdir()] == [names["running"]]
    finally:
        writer.kill()
        writer.wait()
    assert files.remove_stale_temporaries(tmp_path) == 1 and not list(tmp_path.iterdir())
    assert files._TEMP.match(files.temporary_sibling(tmp_path / "x.png").name).group("pid") == str(os.getpid())

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_replacing_our_folder(tmp_path, monkeypatch, exchange):
    G = build_tiny_generator()
    save_gan(tmp_path / "gen", G)
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    with torch.no_grad():
        G.mapping.w_avg.fill_(1.0)
    save_gan(tmp_path / "gen", G)
    from hyperinverter.convert.gan_files import load_generator

    assert torch.equal(load_generator(tmp_path / "gen").w_avg, torch.ones(16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]  # no temporary folder left


def test_a_folder_set_aside_by_a_killed_replacement_is_put_back(tmp_path, monkeypatch):
    # Where two folders cannot be exchanged (macOS), the old one is renamed aside, then the new one in. A write killed
    # between the two renames left the old one, the only whole copy, as a temporary, which the next write deleted.
    G = build_tiny_generator()
    save_gan(tmp_path / "gen", G)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_rename, renames = os.rename, []

    def killed_after_the_first(a, b):
        renames.append(b)
        if len(renames) == 2:
            raise KeyboardInterrupt  # (stands for SIGKILL: no cleanup runs)
        real_rename(a, b)

    built = files.temporary_sibling(tmp_path / "gen")
    shutil.copytree(tmp_path / "gen", built)
    monkeypatch.setattr(files.os, "rename", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        files.replace_directory(built, tmp_path / "gen", "generator")
    monkeypatch.setattr(files.os, "rename", real_rename)
    assert not (tmp_path / "gen").exists() and Path(renames[0]).name.endswith(".replaced")
    files.remove_stale_temporaries(tmp_path)  # (what every write's cleanup does: the old copy is no temporary)
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(renames[0]).name]

    with files.staged_directory(tmp_path / "gen", "generator") as folder:
        assert (tmp_path / "gen" / "model.safetensors").is_file()  # put back before the new one is written
        (folder / "model.safetensors").write_bytes((tmp_path / "gen" / "model.safetensors").read_bytes())
        (folder / "config.json").write_bytes((tmp_path / "gen" / "config.json").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
    from hyperinverter.convert.gan_files import load_generator

    load_generator(tmp_path / "gen")


def test_a_folder_swap_never_leaves_a_gap(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not files._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the fallback has a short gap")
    G = build_tiny_generator()
    save_gan(tmp_path / "gen", G)
    seen_missing, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not (tmp_path / "gen" / "model.safetensors").is_file():
                seen_missing.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(20):
            save_gan(tmp_path / "gen", G)
    finally:
        stop.set()
        watcher.join()
    assert not seen_missing


def test_a_bad_training_config_names_the_file(tmp_path, capsys):
    config = tmp_path / "phase1.yaml"
    config.write_text("run_dir: r\ndata: d\ngenerator: g\nsteps: 10\nlearning_rate: 0.1\n")
    assert main(["train", "w-encoder", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: unknown config keys ['learning_rate']")
    config.write_text("- just\n- a list\n")
    assert main(["train", "w-encoder", "--config", str(config)]) == 2
    assert "must hold a mapping" in capsys.readouterr().err
    assert main(["train", "w-encoder", "--config", str(config), "steps=ten"]) == 2
    capsys.readouterr()
    config.write_text("run_dir: r\ndata: d\ngenerator: g\nsteps: 10\n")
    deep = "trunk.units=" + "[" * 5000 + "]" * 5000  # (an internal error, RecursionError; a file's was named)
    assert main(["train", "w-encoder", "--config", str(config), deep]) == 2
    assert capsys.readouterr().err == f"error: override {deep[:40] + '...'!r}: nests too deeply to be a config value\n"


def test_a_training_config_s_aliases_cannot_blow_it_up(tmp_path, capsys):
    # Ten lines of nested aliases ("billion laughs") loaded at once as 10**9 values, which the walk over the config
    # expanded for an hour; an alias inside its own anchor was a RecursionError (an internal error).
    config = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    config.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    assert main(["train", "w-encoder", "--config", str(config)]) == 2
    assert time.monotonic() - started < 10
    assert "its aliases expand it to more than 100,000 values at line 5" in capsys.readouterr().err
    config.write_text("run_dir: r\ndata: d\ngenerator: g\nsteps: 1\ntrunk: &t {units: *t}\n")
    assert main(["train", "w-encoder", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {config}: is not valid YAML (an alias refers to the value it is")
    config.write_text("run_dir: r\ndata: d\ngenerator: g\nsteps: 1\n")
    assert main(["train", "w-encoder", "--config", str(config), "trunk.units=&u [*u]"]) == 2
    assert "override 'trunk.units=&u [*u]': its value is not" in capsys.readouterr().err
    # shared values that stay small are fine
    config.write_text("run_dir: r\ndata: &d d\ngenerator: *d\nsteps: 1\ntrunk: {widths: &w [8, 16, 32, 64]}\n")
    assert main(["train", "w-encoder", "--config", str(config), "steps=0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err


def test_what_the_training_fuzzing_pass_found(tmp_path, capsys, monkeypatch):
    """Each was a traceback ("internal error"), a message naming no file or the wrong source, or a silent
    surprise, found by fuzzing `train`; each is now one line that names the file or the option."""
    from conftest import build_tiny_generator
    from hyperinverter.cli.main import expected_error
    from hyperinverter.data.folder import in_val_split
    from hyperinverter.io.gan import save_gan

    def train(kind, config, *overrides):
        code = main(["train", kind, "--config", str(config), *overrides, "-q"])
        lines = capsys.readouterr().err.strip().splitlines()  # (a warning may come first)
        assert code == 2 and lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, lines
        return lines[-1]

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        hostile.photo(i, (16, 16)).save(data / f"{i}.png")
    generator = tmp_path / "g.yaml"
    generator.write_text(f"run_dir: {tmp_path / 'runs' / 'r'}\ndata: {data}\nsteps: 2\ngenerator:\n  resolution: 16\n"
                         "  z_dim: 8\n  w_dim: 8\n  mapping_layers: 1\n  channel_base: 128\n  channel_max: 8\n")
    # a discriminator for other images than the generator makes (an assertion in the first step)
    assert "discriminator: judges 3-channel 32-px images, the generator makes 3-channel 16-px" in train(
        "generator", generator, "discriminator.resolution=32")
    # an override is blamed when the error is about it, and only then
    assert f"{generator} with generator.resolution=48: generator: resolution must be a power of two" in train(
        "generator", generator, "generator.resolution=48")
    # init_from's generator with another architecture asked in generator: (ignored, and recorded as asked)
    save_gan(tmp_path / "gan", build_tiny_generator())
    assert "generator: asks for another architecture than init_from's generator (" in train(
        "generator", generator, f"init_from={tmp_path / 'gan'}")
    encoder = tmp_path / "w.yaml"
    encoder.write_text(f"run_dir: {tmp_path / 'runs' / 'r'}\ndata: {data}\ngenerator: {tmp_path / 'gan'}\nsteps: 2\n"
                       "mode: e4e\n")
    assert train("w-encoder", encoder, "steps=3").startswith(f"error: {encoder}: unknown config keys ['mode']")
    encoder.write_text(f"run_dir: {tmp_path / 'runs' / 'r'}\ndata: {data}\ngenerator: {tmp_path / 'gan'}\nsteps: 2\n")
    assert "with loss_resolution=0: InversionTrainingConfig: loss_resolution must be >= 1" in train(
        "w-encoder", encoder, "loss_resolution=0")  # (a RuntimeError inside the pooling)
    assert "with trunk.units=[1,1]: trunk: need exactly 4 stages" in train("w-encoder", encoder, "trunk.units=[1,1]")
    for text, cause in (("a: " + "[" * 5000 + "]" * 5000, "nests too deeply to be a config"),
                        (b"\xff\xfe\x00bad", "is not a text (UTF-8) file: byte 0 is 0xff"),
                        ("a: 1\n\tb: 2\n", ("is not valid YAML (found character '\\t' that cannot start any token at "
                                             "line 2, column 1)")),
                        ("steps: 2\nsteps: 3\n", ("is not valid YAML (keys given more than once: ['steps'] at line "
                                                  "1, column 1)"))):
        bad = tmp_path / "bad.yaml"
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert train("w-encoder", bad) == f"error: {bad}: {cause}"
    assert "seed must be a whole number from 0 to 2**63 - 1" in train("w-encoder", encoder, "seed=" + "9" * 23)
    assert train("hypernetwork", encoder).startswith(f"error: {encoder}: w_encoder: Phase II needs the folder")
    torch.save({"a": torch.zeros(3)}, tmp_path / "dict.pt")
    assert f"error: {tmp_path / 'dict.pt'}: IR-SE state dict does not fit" in train(
        "w-encoder", encoder, f"backbone_init={tmp_path / 'dict.pt'}")  # (it named no file)
    stage2 = tmp_path / "e2.yaml"
    stage2.write_text(f"run_dir: {tmp_path / 'runs' / 'e2'}\ndata: {data}\ngenerator: {tmp_path / 'gan'}\nsteps: 2\n"
                      f"stage: 2\ninit_from: {tmp_path / 'gan'}\n")
    assert f"error: {tmp_path / 'gan'}: holds no trained E2Style (it has w-opt)" in train("e2style", stage2)
    # run folders that cannot hold a run, refused before any step ("file exists", or a failure at the step)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert "is a broken symbolic link" in train("w-encoder", encoder, f"run_dir={tmp_path / 'link'}")
    (tmp_path / "runs" / "f" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "f" / "checkpoints" / "checkpoint-00000004.safetensors").mkdir()
    assert "checkpoint-00000004.safetensors: is not a checkpoint file, but has a checkpoint's name" in train(
        "w-encoder", encoder, f"run_dir={tmp_path / 'runs' / 'f'}")
    # an identity network file that is not one (a protobuf DecodeError inside onnx)
    pytest.importorskip("onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    assert f"{tmp_path / 'text.onnx'}: is not a readable ONNX model" in train(
        "w-encoder", encoder, "id_weight=0.1", f"id_model_path={tmp_path / 'text.onnx'}")
    # a CPU allocation that fails is "out of memory", like a GPU's (it was an internal error)
    assert expected_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")
                          ).startswith("out of memory (DefaultCPUAllocator")
    # under torchrun, a collective whose peer is gone (killed, or stopped on a bad input) is not a bug of ours
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:61064. "
            "This is typically caused by a remote worker crashing.")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert expected_error(RuntimeError(gloo)) == (
        "rank 1: another process of this torchrun job ended or failed, so this one stops too (Connection closed by "
        "peer [127.0.0.1]:61064); that process's own message, or torchrun's summary, says why")
    assert expected_error(RuntimeError("shapes mismatch")) is None  # (a bug stays one)
    # a data file whose name is not UTF-8 has its split (it stopped the run, naming no file)
    assert len(in_val_split(["a.png", "x\udcff1.png", "b.png"], 0.5, seed=0)) == 3


def test_a_batch_size_past_any_data_set_is_refused(tmp_path, capsys):
    # batch_size=2**70 passed the config's checks, and the sampler gathered indices for it for ever, CPU-bound.
    config = tmp_path / "g.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\nsteps: 1\nbatch_size: {2**70}\n")
    assert main(["train", "generator", "--config", str(config)]) == 2
    assert f"{config}: GeneratorTrainingConfig: batch_size must be at most 10,000,000, got {2**70}" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_loss_network_is_a_config_error(tmp_path, capsys):
    # An unknown lpips_net or id_model failed where the loss was built, after the models, as "net must be one of
    # ['alex', 'vgg'], got 'abc'": neither the config file nor the key was named.
    config = tmp_path / "w.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\ngenerator: fashion-32\nsteps: 1\n")
    for override, cause in (("lpips_net=abc", "lpips_net must be one of ['alex', 'vgg'], got 'abc'"),
                            ("id_model=x", "id_model must be one of ['sface', 'arcface', 'curricularface'], got 'x'")):
        assert main(["train", "psp", "--config", str(config), override, "lpips_weight=0.1", "id_weight=0.1"]) == 2
        assert f"error: {config} with {override}: PspTrainingConfig: {cause}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_hyperstyle_input_size_the_trunk_cannot_read_is_a_config_error(tmp_path, capsys):
    # input_size 0 took the W encoder's without a word; -1 failed once the models were built, naming no file.
    config = tmp_path / "h.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\ngenerator: fashion-32\nw_encoder: "
                      "fashion-32\nsteps: 1\n")
    for size in (0, -1, 48, 4096):
        assert main(["train", "hyperstyle", "--config", str(config), f"input_size={size}"]) == 2
        assert (f"error: {config} with input_size={size}: HyperStyleTrainingConfig: input_size must be 16 x a power "
                f"of two >= 2, at most 2048") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_trainer_s_own_ranges_are_checked_as_its_config_is_read(tmp_path, capsys):
    # Each was checked only once the generator and the encoders were built, and named neither file nor key.
    config = tmp_path / "c.yaml"
    common = f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\ngenerator: fashion-32\nsteps: 1\n"
    for trainer, extra, override, cause in (
            ("hyperstyle", "w_encoder: fashion-32\n", "n_iters_per_batch=101",
             "n_iters_per_batch must be at most 100, got 101"),
            ("hyperstyle", "w_encoder: fashion-32\n", "layers_to_tune=[-1,3]",
             "layers_to_tune are layer indices (0 or more), got [-1, 3]"),
            ("psp", "", "coarse_end=-1", "need 0 <= coarse_end <= middle_end, got -1, 7"),
            ("e2style", "init_from: fashion-32\n", "stage=17", "stage must be an integer from 1 to 16, got 17")):
        config.write_text(common + extra)
        assert main(["train", trainer, "--config", str(config), override]) == 2
        assert f"error: {config} with {override}: " in (err := capsys.readouterr().err) and cause in err, err
    assert not (tmp_path / "run").exists()


def test_an_empty_run_dir_or_data_path_is_a_config_error(tmp_path, capsys, monkeypatch):
    # data: '' read the current folder, and the error named it as '' ("... is inside : the run's sample grids");
    # run_dir: '' took the current folder for the run's.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "g.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\nsteps: 1\n")
    for key in ("data", "run_dir"):
        assert main(["train", "generator", "--config", str(config), f"{key}=''"]) == 2
        assert (f"error: {config} with {key}='': GeneratorTrainingConfig: {key} is an empty path; give a folder (. "
                "for the current folder)") in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


def test_a_device_that_is_no_device_is_a_config_error(tmp_path, capsys):
    # device: '' failed as the run started, "invalid device ''", naming neither the key nor the file.
    config = tmp_path / "g.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata: {tmp_path}\nsteps: 1\n")
    for value, cause in (("''", "Device string must not be empty"), ("meta", "hyperinverter runs on cpu")):
        assert main(["train", "generator", "--config", str(config), f"device={value}"]) == 2
        assert (f"error: {config} with device={value}: GeneratorTrainingConfig: device: invalid device "
                in (err := capsys.readouterr().err) and cause in err), err
    assert not (tmp_path / "run").exists()


def test_training_never_writes_into_a_user_folder(tmp_path):
    # A run writes config.yaml and stats.jsonl into run_dir (and rewrites stats.jsonl when it resumes): given a
    # user's folder, it replaced their config.yaml and dropped every line of their stats.jsonl.
    from hyperinverter.errors import OutputError
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.run import prepared_run_dir, record_run_config

    def prepare(folder, config):
        with prepared_run_dir(folder, config, DistributedContext()) as run:
            record_run_config(run, config, DistributedContext(), resumed=False)
            return run

    user = tmp_path / "project"
    user.mkdir()
    (user / "config.yaml").write_text("my: notes\n")
    (user / "stats.jsonl").write_text("not ours\n")
    config = {"run_dir": str(user), "steps": 1}
    with pytest.raises(OutputError, match="holds files that are not a training run's"):
        prepare(user, config)
    assert sorted(p.name for p in user.iterdir()) == ["config.yaml", "stats.jsonl"]
    assert (user / "config.yaml").read_text() == "my: notes\n"
    with pytest.raises(OutputError, match="is a file"):
        prepare(user / "stats.jsonl", config)
    run = prepare(tmp_path / "run", {"run_dir": str(tmp_path / "run"), "steps": 1})  # new: made
    (run / "stats.jsonl").write_text("{}\n")
    assert prepare(run, {"run_dir": str(run), "steps": 2}) == run  # ours: taken up again
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare(empty, {"run_dir": str(empty)}) == empty


def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path):
    # A config whose generator or data failed to load left run_dir/config.yaml and checkpoints/.lock, a folder
    # that looked like a run. What the failed start wrote is taken back; a started run's files are kept.
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.run import prepared_run_dir, record_run_config

    def fail_in(folder, *, recorded=True):
        with pytest.raises(FileNotFoundError), prepared_run_dir(folder, {"run_dir": str(folder)},
                                                                DistributedContext()) as run:
            if recorded:
                record_run_config(run, {"run_dir": str(folder)}, DistributedContext(), resumed=False)
            raise FileNotFoundError("no such generator")

    fail_in(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # made by the run: removed
    fail_in(tmp_path / "new", recorded=False)
    assert not (tmp_path / "new").exists()
    fail_in(tmp_path / "made" / "for" / "it")
    assert not (tmp_path / "made").exists()  # and the folders made above it
    (tmp_path / "empty").mkdir()
    fail_in(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # the user's empty folder stays
    with prepared_run_dir(tmp_path / "started", {"run_dir": "r"}, DistributedContext()) as run:
        record_run_config(run, {"run_dir": "r"}, DistributedContext(), resumed=False)
        (run / "stats.jsonl").write_text("{}\n")
    fail_in(tmp_path / "started")  # resumed, then failed: its run is kept
    assert sorted(p.name for p in (tmp_path / "started").iterdir()) == ["checkpoints", "config.yaml", "stats.jsonl"]
    with pytest.raises(FileNotFoundError), prepared_run_dir(tmp_path / "mid", {"run_dir": "r"},
                                                            DistributedContext()) as run:
        record_run_config(run, {"run_dir": "r"}, DistributedContext(), resumed=False)
        (run / "stats.jsonl").write_text("{}\n")  # it wrote more than its config before failing
        raise FileNotFoundError("lost the data")
    assert (tmp_path / "mid" / "stats.jsonl").is_file() and (tmp_path / "mid" / "config.yaml").is_file()


def test_a_run_folder_inside_the_data_is_refused(tmp_path):
    # Its sample grids (samples/*.png) became training images when the run resumed, and the batches changed.
    from hyperinverter.io.files import check_outside
    from hyperinverter.models.stylegan2 import GeneratorConfig
    from hyperinverter.training.gan import GeneratorTrainingConfig, train_generator

    data = tmp_path / "faces"
    data.mkdir()
    cfg = GeneratorTrainingConfig(run_dir=str(data / "run"), data=str(data), steps=1,
                                  generator=GeneratorConfig(resolution=16, z_dim=8, w_dim=8))
    with pytest.raises(ValueError, match="run is inside .*faces: the run's sample grids would be read as training"):
        train_generator(cfg)
    assert list(data.iterdir()) == []
    check_outside(tmp_path / "run", data, why="")  # beside it: fine


def test_a_run_folder_in_use_is_refused(tmp_path, caplog):
    # Two processes training into one folder wrote the same checkpoints and pruned each other's.
    from hyperinverter.errors import OutputError
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.run import prepared_run_dir

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from hyperinverter.training.distributed import DistributedContext\n"
        "from hyperinverter.training.run import prepared_run_dir, record_run_config\n"
        f"with prepared_run_dir(Path({str(run)!r}), {{'run_dir': 'r', 'steps': 9}}, DistributedContext()) as run:\n"
        "    record_run_config(run, {'run_dir': 'r', 'steps': 9}, DistributedContext(), resumed=False)\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        config = (run / "config.yaml").read_text()
        in_use = rf"run: is in use: another process is training there \({re.escape(lock_holder(holder.pid))}\)"
        with pytest.raises(OutputError, match=in_use), prepared_run_dir(run, {"run_dir": str(run), "steps": 1},
                                                                         DistributedContext()):
            pass
        assert (run / "config.yaml").read_text() == config  # the running process's config is left alone
    finally:
        holder.kill()  # a killed holder leaves no stale lock
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="hyperinverter"), \
            prepared_run_dir(run, {"run_dir": str(run), "steps": 1}, DistributedContext()) as taken:
        assert taken == run
    # The kernel's OOM killer leaves a run no chance to report itself: the next one says that it was killed.
    assert (f"{run}: the last process training there ({lock_holder(holder.pid)}) was killed before it ended"
            in caplog.text)
    assert not (run / "checkpoints" / ".lock").exists()
    caplog.clear()
    with pytest.raises(RuntimeError), prepared_run_dir(run, {"run_dir": str(run), "steps": 1}, DistributedContext()):
        raise RuntimeError("a run that fails says so itself")
    with prepared_run_dir(run, {"run_dir": str(run), "steps": 1}, DistributedContext()):
        pass
    assert "was killed" not in caplog.text and not (run / "checkpoints" / ".lock").exists()
    # An earlier version left its pid there whenever a run stopped (SIGTERM, Ctrl-C) or failed: resumed now, that
    # run was said to have been killed "and could not say why".
    (run / "checkpoints" / ".lock").write_text("999999\n")
    with prepared_run_dir(run, {"run_dir": str(run), "steps": 1}, DistributedContext()):
        pass
    assert "was killed" not in caplog.text and not (run / "checkpoints" / ".lock").exists()



def test_a_killed_run_s_temporaries_are_removed_when_it_resumes(tmp_path):
    # Where files cannot be written unnamed (NFS, macOS), a run killed while writing a checkpoint left its hidden
    # temporary (GBs at full size) in checkpoints/ for good: no resume removed it, as invert's next run does.
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.run import prepared_run_dir, record_run_config

    run = tmp_path / "run"
    with prepared_run_dir(run, {"run_dir": str(run)}, DistributedContext()):
        record_run_config(run, {"run_dir": str(run)}, DistributedContext(), resumed=False)
    killed = "0123456789abcdef-999999999.partial"  # (no such process)
    stale = [run / "checkpoints" / f".checkpoint-00000003.safetensors.{killed}", run / f".stats.jsonl.{killed}",
             run / "samples" / f".input-00000002.png.{killed}"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    (run / f".best.{killed}").mkdir()  # a model folder being built
    with prepared_run_dir(run, {"run_dir": str(run)}, DistributedContext()):
        pass
    assert not [p for p in run.rglob("*.partial")]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "samples"]
    # Killed while writing its first config.yaml: the folder held checkpoints/ and that temporary, and every later run
    # refused it as "not a training run's" before its cleanup could remove the temporary.
    first = tmp_path / "first"
    (first / "checkpoints").mkdir(parents=True)
    (first / f".config.yaml.{killed}").write_bytes(b"run_")
    with prepared_run_dir(first, {"run_dir": str(first)}, DistributedContext()):
        pass
    assert sorted(p.name for p in first.iterdir()) == ["checkpoints"]


def test_a_lock_file_that_is_not_ours_is_refused_and_left_as_it_was(tmp_path):
    # Only a results folder's lock was checked: a training run's checkpoints/.lock and an evaluation's OUT.work/.lock
    # that were a link to a user's file wrote the pid into that file (and removed the link), and a named pipe there
    # was written unlocked (with a warning) and removed.
    from hyperinverter.errors import OutputError
    from hyperinverter.io.work import WorkFolder
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.run import prepared_run_dir

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    run, work, out = tmp_path / "run", tmp_path / "report.work", tmp_path / "out"
    takers = {run / "checkpoints" / ".lock": lambda: prepared_run_dir(run, {"run_dir": str(run), "steps": 1},
                                                                       DistributedContext()),
              work / ".lock": lambda: WorkFolder(work, format="x", what="evaluation"),
              out / files.OUTPUT_LOCK: lambda: files.output_folder(out)}
    for lock, take in takers.items():
        lock.parent.mkdir(parents=True)
        for make in (lambda p: p.symlink_to(notes), os.mkfifo, lambda p: p.write_text("my lock")):
            make(lock)
            with pytest.raises(OutputError, match=f"{lock}: is not a lock file of hyperinverter's"), take():
                pass
            assert notes.read_text() == "my notes" and os.path.lexists(lock)
            assert lock.is_symlink() or not lock.is_file() or lock.read_text() == "my lock"
            lock.unlink()
        with take():  # a lock file of ours
            pass
        assert not lock.exists() or lock.read_text() == f"{lock_holder(os.getpid())}\n"


def test_a_lock_file_removed_by_its_holder_as_it_is_checked_is_taken(tmp_path, monkeypatch):
    # A run ending (its lock file removed) while another started: the check read a file that was gone, and the
    # second run was refused, saying the lock file was not hyperinverter's ("move it away"), with nothing there.
    out = tmp_path / "out"
    lock = out / files.OUTPUT_LOCK
    out.mkdir()
    lock.write_text(f"{lock_holder(os.getpid())}\n")
    read_bytes = Path.read_bytes

    def holder_ends_first(path):
        if path == lock:
            lock.unlink(missing_ok=True)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", holder_ends_first)
    with files.output_folder(out):
        assert lock.read_text() == f"{lock_holder(os.getpid())}\n"
    assert not lock.exists()


def test_a_results_folder_in_use_is_refused(pipeline, tiny_generator, tmp_path, capsys):
    # Two `invert` runs (or `edit`, `restore`, `generate --outdir`) into one folder, with other options, took no
    # lock: each wrote its own files over the other's, and the folder ended with a mixture of both.
    from hyperinverter.errors import OutputError

    photos, out = write_photos(tmp_path / "photos", 2), tmp_path / "out"
    lock = out / files.OUTPUT_LOCK
    in_use = f"out: is in use: another process is writing results there \\({re.escape(lock_holder(os.getpid()))}\\)"
    with files.output_folder(out):  # (one process's two opens of a flock conflict, as two processes' do)
        with pytest.raises(OutputError, match=in_use):
            invert_files(pipeline, photos, out, progress=False)
        assert [p.name for p in out.iterdir()] == [lock.name]
        save_gan(tmp_path / "g", tiny_generator)
        assert main(["generate", "--model", str(tmp_path / "g"), "--outdir", str(out), "--seeds", "1-2",
                     "--device", "cpu"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            (f"error: {out}: is in use: another process is writing results there ({lock_holder(os.getpid())}); "
             "wait for it to end, or give another folder")]
    assert list(out.iterdir()) == []  # the lock file went with the lock
    lock.write_text("999999\n")  # a killed run's: the kernel released its lock, and its file blocks nothing
    assert len(invert_files(pipeline, photos, out, progress=False).written) == 2
    assert not lock.exists()
    for left in ("pid 999999", "pid 999999 on node-7.cluster"):  # the last version's, and this one's, from another host
        lock.write_text(f"{left}\n")
        assert len(invert_files(pipeline, photos, out, progress=False, overwrite=True).written) == 2
        assert not lock.exists()
    lock.write_text("my notes")  # not ours: left as it was
    with pytest.raises(OutputError, match="is not a lock file of hyperinverter's"):
        invert_files(pipeline, photos, out, progress=False, overwrite=True)
    assert lock.read_text() == "my notes"


def test_the_ranks_of_one_torchrun_job_share_its_results_folder(pipeline, tmp_path, monkeypatch):
    # Only rank 0 held the folder: another rank wrote its share into a folder another run held, and rank 0, done
    # first, removed the lock while the other ranks still wrote.
    from hyperinverter.errors import OutputError

    photos, out = write_photos(tmp_path / "photos", 2), tmp_path / "out"
    lock, in_use = out / files.OUTPUT_LOCK, "out: is in use: another process is writing results there"
    with files.output_folder(out):  # another run holds it
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(OutputError, match=in_use):
            invert_files(pipeline, photos, out, progress=False, shard=True)
    assert list(out.iterdir()) == []
    with files.output_folder(out, job=torchrun_job()):  # rank 0, still writing
        assert len(invert_files(pipeline, photos, out, progress=False, shard=True).written) == 1  # rank 1's share
        assert lock.exists()  # (rank 1 ended first: the lock stays with rank 0)
        monkeypatch.delenv("WORLD_SIZE")
        monkeypatch.delenv("RANK")
        with pytest.raises(OutputError, match=in_use + r" \(torchrun job :::2\); wait"):  # another run, meanwhile
            invert_files(pipeline, photos, out, progress=False)
    assert not lock.exists()  # gone with the last of the job's ranks


def test_two_torchrun_jobs_do_not_share_a_results_folder(pipeline, tmp_path, monkeypatch, caplog):
    # Every rank of every job held the folder shared: two jobs at once wrote into one folder and mixed their files.
    from hyperinverter.errors import OutputError

    photos, out = write_photos(tmp_path / "photos", 2), tmp_path / "out"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID"):  # (a run of the tests under SLURM)
        monkeypatch.delenv(key, raising=False)
    assert torchrun_job() == "127.0.0.1:29500::2"
    # Ranks started by srun with RANK and WORLD_SIZE alone: by their SLURM job and step (they were all one job).
    assert torchrun_job({"WORLD_SIZE": "2", "SLURM_JOB_ID": "81", "SLURM_STEP_ID": "0"}) == ":::2 slurm 81.0"
    assert torchrun_job({"WORLD_SIZE": "2", "SLURM_JOB_ID": "81", "SLURM_STEP_ID": "1"}) == ":::2 slurm 81.1"
    with files.output_folder(out, job=torchrun_job()):  # the first job's rank 0
        monkeypatch.setenv("MASTER_PORT", "29501")  # a second job on the same machine
        with pytest.raises(OutputError, match=r"out: is in use: another process is writing results there \(torchrun "
                           r"job 127.0.0.1:29500::2\); wait"):
            invert_files(pipeline, photos, out, progress=False, shard=True)
        monkeypatch.setenv("MASTER_PORT", "29500")
        assert len(invert_files(pipeline, photos, out, progress=False, shard=True).written) == 1  # its own rank 1
    assert not (out / files.OUTPUT_LOCK).exists()
    # A job killed outright leaves its name: the next run takes the folder and says so.
    (out / files.OUTPUT_LOCK).write_text("job 127.0.0.1:29400::2\n")
    monkeypatch.setenv("MASTER_PORT", "29501")
    with caplog.at_level(logging.WARNING, logger="hyperinverter"):
        assert invert_files(pipeline, photos, out, progress=False, shard=True).ok
    assert (f"{out}: the last process writing results there (torchrun job 127.0.0.1:29400::2) was killed"
            in caplog.text)
    assert not (out / files.OUTPUT_LOCK).exists()


class PosixStyleFlock:
    """``fcntl`` as NFS emulates flock, with POSIX locks: a failed upgrade keeps the shared lock, and closing a file
    releases its lock. With ``ending`` set, two files' first tries for the whole lock are made together."""

    def __init__(self):
        import fcntl

        self.LOCK_SH, self.LOCK_EX, self.LOCK_NB, self.LOCK_UN = (fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB,
                                                                  fcntl.LOCK_UN)
        self.held, self.table, self.ending, self.together, self.tried = {}, threading.Lock(), False, None, set()

    def flock(self, fd, operation):
        mode = operation & ~self.LOCK_NB
        together = self.ending and mode == self.LOCK_EX and fd not in self.tried
        if together:
            self.tried.add(fd)
            self.together.wait()
        with self.table:
            others = {m for f, m in self.held.items() if f != fd}
            taken = mode == self.LOCK_UN or not (others and (mode == self.LOCK_EX or self.LOCK_EX in others))
            if taken and mode == self.LOCK_UN:
                self.held.pop(fd, None)
            elif taken:
                self.held[fd] = mode
        if together:
            self.together.wait()  # (both tried before either goes on)
        if not taken:
            raise BlockingIOError(11, "Resource temporarily unavailable")

    def closed(self, fd):
        with self.table:
            self.held.pop(fd, None)


def test_the_ranks_of_a_job_ending_at_once_remove_its_lock_file_where_flock_is_posix_locks(tmp_path, monkeypatch):
    # On NFS, where flock is POSIX locks, a failed upgrade keeps the share: two ranks ending at once each kept the
    # other from taking the file whole, it stayed, and the next run said that a process had been killed.
    import sys

    fake, close = PosixStyleFlock(), os.close
    monkeypatch.setitem(sys.modules, "fcntl", fake)
    monkeypatch.setattr(os, "close", lambda fd: (fake.closed(fd), close(fd))[1])
    out, entered, leave = tmp_path / "out", threading.Barrier(3), threading.Event()
    fake.together, errors = threading.Barrier(2), []

    def rank():
        try:
            with files.output_folder(out, job="127.0.0.1:29500::2"):
                entered.wait()
                leave.wait()
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    ranks = [threading.Thread(target=rank) for _ in range(2)]
    for r in ranks:
        r.start()
        time.sleep(0.2)  # (the first writes the job's name, the second joins it)
    entered.wait()
    fake.ending = True
    leave.set()
    for r in ranks:
        r.join(timeout=30)
    assert not errors and fake.tried and not (out / files.OUTPUT_LOCK).exists()


def test_a_job_s_long_name_is_cut_to_what_the_lock_file_holds(tmp_path, caplog):
    # A name was cut to 200 characters, not bytes: a run id (torchrun --rdzv-id) of 150 accented letters wrote 323
    # bytes, so the job's own other ranks were refused ("is not a lock file of hyperinverter's"), and the file a
    # killed job left refused every later run.
    import fcntl

    out, job = tmp_path / "out", "127.0.0.1:29500:" + "é" * 150 + "\n:2"
    # (its two ranks: one process's two opens of a flock conflict, as two processes' do)
    with files.output_folder(out, job=job), files.output_folder(out, job=job):
        assert (out / files.OUTPUT_LOCK).stat().st_size <= 256
    # Cut at a space: the file's line, read back stripped, was not the job's name, and its other ranks were refused.
    spaced = "127.0.0.1:29500:" + "x" * 183 + " tail:2"
    with files.output_folder(out, job=spaced), files.output_folder(out, job=spaced):
        pass
    fd = os.open(out / files.OUTPUT_LOCK, os.O_RDWR | os.O_CREAT)
    files._flock(fcntl, fd, job)
    os.close(fd)  # the job killed outright: its file stays
    with caplog.at_level(logging.WARNING, logger="hyperinverter"), files.output_folder(out):
        pass
    assert f"(torchrun job 127.0.0.1:29500:{'é' * 10}" in caplog.text and "was killed" in caplog.text
    assert not (out / files.OUTPUT_LOCK).exists()


def test_a_folder_on_a_file_system_that_does_not_lock_is_written_unlocked(pipeline, tmp_path, monkeypatch, caplog):
    # NFS without its lock daemon refuses flock: every invert, edit, restore and generate --outdir into it ended
    # with "error: no locks available", naming no file, and left the lock file behind.
    import errno
    import fcntl

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    photos, out = write_photos(tmp_path / "photos", 1), tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert len(invert_files(pipeline, photos, out, progress=False).written) == 1
    assert f"{out}: cannot be locked (no locks available): nothing keeps another process from writing results" \
           in caplog.text
    assert not (out / files.OUTPUT_LOCK).exists()


def test_a_work_folder_in_use_is_refused(tmp_path):
    # Two evaluations (benchmarks, labellings) into one OUT wrote the same records, and the first to finish
    # removed the other's.
    from hyperinverter.errors import InputError, OutputError
    from hyperinverter.io.work import WorkFolder

    folder = tmp_path / "report.work"
    first, second = (WorkFolder(folder, format="f", what="evaluation") for _ in range(2))
    first.claim({"seed": 0})
    first.write_json("a/batch-0.json", {"scores": 1})
    with pytest.raises(OutputError, match=rf"report.work: is in use: another process is writing this evaluation "
                                          rf"there \({re.escape(lock_holder(os.getpid()))}\)"):
        second.claim({"seed": 0})  # (one process's two opens of a flock conflict, as two processes' do)
    assert not second.resumed
    first.close()  # an interrupted run: its records stay, and the next run resumes them
    with second:
        second.claim({"seed": 0})
        assert second.resumed and second.read_json("a/batch-0.json") == {"scores": 1}
        second.remove()
    assert not folder.exists()  # the lock went with the records

    with WorkFolder(folder, format="f", what="evaluation") as unused:  # failed before claiming: nothing is left
        assert unused.folder.is_dir()
    assert not folder.exists()
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with WorkFolder(folder, format="f", what="evaluation") as work:
        work.claim({"seed": 0})
        work.remove()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # a user's file and its folder stay
    (folder / "notes.txt").unlink()
    with WorkFolder(folder, format="f", what="evaluation"):
        pass
    assert folder.is_dir()  # an empty folder of the user's is not removed either
    (folder / "run.json").write_text("{}")  # a user's file under our record's name: refused, and left as it was
    with pytest.raises(InputError, match="is not a f record"):
        WorkFolder(folder, format="f", what="evaluation").claim({"seed": 0})
    assert [p.name for p in folder.iterdir()] == ["run.json"]  # (the lock file it made is gone)

def test_a_killed_run_s_temporaries_in_its_work_folder_are_removed(tmp_path):
    # Where files cannot be written unnamed (NFS, macOS), a benchmark killed while writing a record (a batch of
    # reconstructions: hundreds of MB at full size) or its report left the hidden temporary, and the benchmark keeps
    # its work: every kill added one for good.
    from hyperinverter.benchmark import BenchmarkWork

    out = tmp_path / "bench"
    killed = "0123456789abcdef-999999999.partial"  # (no such process)
    running = f"0123456789abcdef-{os.getppid()}.partial"  # a writer that still runs keeps its own
    stale = [out / f".benchmark.md.{killed}", out / "work" / "psp" / f".batch-0000.safetensors.{killed}"]
    kept = out / "work" / "psp" / f".batch-0001.safetensors.{running}"
    for path in [*stale, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    with BenchmarkWork(out) as work:
        work.claim({"seed": 0})
    assert not any(path.exists() for path in stale) and kept.exists()


def test_resuming_with_another_optimiser_or_fewer_steps_is_refused(tmp_path):
    # Another optimiser's state was loaded as it came: Ranger then failed with an internal KeyError ('lookahead_k').
    # A run asked for fewer steps than it had done wrote its final/ as a run of those steps ("trained 1 steps").
    from hyperinverter.training.checkpointing import CheckpointMismatchError, load_checkpoint
    from hyperinverter.training.distributed import DistributedContext
    from hyperinverter.training.loop import RunConfig
    from hyperinverter.training.optim import make_optimizer
    from hyperinverter.training.run import prepared_run_dir

    module = torch.nn.Linear(2, 2)
    adam = torch.optim.Adam(module.parameters())
    module(torch.ones(1, 2)).sum().backward()
    adam.step()
    path = save_checkpoint(tmp_path / "run" / "checkpoints", 5, modules={"m": module}, optimizers={"main": adam})
    ranger = make_optimizer("ranger", module.parameters(), lr=1e-3)
    with pytest.raises(CheckpointMismatchError, match=r"holds the state of another optimiser \(Adam\) for 'main' "
                                                     r"than this run's \(Ranger\)"):
        load_checkpoint(path, modules={"m": module}, optimizers={"main": ranger})
    again = torch.optim.Adam(module.parameters())
    assert load_checkpoint(path, modules={"m": module}, optimizers={"main": again})[0] == 5
    # A file from before the type was recorded: told apart by the hyperparameters its groups name (not by the
    # switches PyTorch versions add to them).
    from safetensors.torch import load_file, save_file

    from hyperinverter.io.checkpoints import read_safetensors_metadata

    record = json.loads(read_safetensors_metadata(path)["training"])
    del record["optim.main"]["type"]
    for group in record["optim.main"]["param_groups"]:
        group.pop("decoupled_weight_decay", None)
    save_file(load_file(path), tmp_path / "old.safetensors", metadata={"training": json.dumps(record)})
    assert load_checkpoint(tmp_path / "old.safetensors", modules={"m": module},
                           optimizers={"main": torch.optim.Adam(module.parameters())})[0] == 5
    with pytest.raises(CheckpointMismatchError, match=r"another optimiser \(another kind\) for 'main' than this "
                                                     r"run's \(Ranger\)"):
        load_checkpoint(tmp_path / "old.safetensors", modules={"m": module}, optimizers={"main": ranger})
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], adam.state_dict()["state"][0]["exp_avg"])

    run = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"run holds a run at step 5, past steps=3: give steps of 5 or more"), \
            prepared_run_dir(Path(run), RunConfig(run_dir=run, data="d", steps=3), DistributedContext()):
        pass
    with prepared_run_dir(Path(run), RunConfig(run_dir=run, data="d", steps=5), DistributedContext()):
        pass  # a finished run, run again

def test_a_diverged_checkpoint_is_skipped_for_the_one_before(tmp_path):
    from hyperinverter.training.checkpointing import resume_latest

    module = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, modules={"m": module}, keep=3)
    with torch.no_grad():
        module.weight.fill_(float("nan"))
    save_checkpoint(tmp_path, 2, modules={"m": module}, keep=3)
    fresh = torch.nn.Linear(2, 2)
    step, _ = resume_latest(tmp_path, modules={"m": fresh})
    assert step == 1 and torch.isfinite(fresh.weight).all()


def test_only_our_checkpoints_are_resumed_from_or_pruned(tmp_path):
    # The name was matched at its end: a user's copy `keep-checkpoint-00000002.safetensors` was resumed from as the
    # newest (it sorts after ours: a run at step 10 went back to 2) and kept in place of one of ours, and
    # `a-copy-of-checkpoint-00000002.safetensors` was deleted when checkpoints were pruned.
    from hyperinverter.training.checkpointing import resume_latest

    module = torch.nn.Linear(2, 2)
    first = save_checkpoint(tmp_path, 2, modules={"m": module})
    users = [tmp_path / "keep-checkpoint-00000002.safetensors", tmp_path / "a-copy-of-checkpoint-00000002.safetensors"]
    for path in users:
        path.write_bytes(first.read_bytes())
    for step in (4, 6, 8, 10):
        save_checkpoint(tmp_path, step, modules={"m": module}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000008.safetensors",
                                                            "checkpoint-00000010.safetensors"]
    assert all(path.is_file() for path in users)
    assert resume_latest(tmp_path, modules={"m": module})[0] == 10
    save_checkpoint(tmp_path, 100_000_000, modules={"m": module}, keep=2)  # (nine digits: newest, and listed)
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "checkpoint-100000000.safetensors"


@pytest.mark.parametrize("key, value", [
    ("step", -100), ("step", 10**9), ("step", True), ("step", 1), ("modules", [[1]]), ("optim.main", []),
    ("optim.main", {"type": "Adam", "param_groups": "x", "scalars": {}}),
    ("optim.main", {"type": "Adam", "param_groups": [], "scalars": []}), ("scaler", "x"),
    ("progress", {"best_val": float("nan")})])  # (NaN: no validation loss was ever better, best/ never again)
def test_a_checkpoint_with_a_damaged_record_is_skipped_for_the_one_before(tmp_path, key, value):
    # Each was read as it came: a step of -100 trained 106 steps into checkpoint--0000098.safetensors and the like,
    # which no run lists or prunes; 10**9 (or one below its name's) ended the run untrained or redid steps; a damaged
    # optimiser record or module list was an internal error.
    from safetensors.torch import load_file, save_file

    from hyperinverter.io.checkpoints import read_safetensors_metadata
    from hyperinverter.training.checkpointing import resume_latest

    module = torch.nn.Linear(2, 2)
    adam = torch.optim.Adam(module.parameters())
    module(torch.ones(1, 2)).sum().backward()
    adam.step()
    save_checkpoint(tmp_path, 2, modules={"m": module}, optimizers={"main": adam})
    path = save_checkpoint(tmp_path, 4, modules={"m": module}, optimizers={"main": adam})
    metadata = read_safetensors_metadata(path)
    record = json.loads(metadata["training"])
    record[key] = value
    save_file(load_file(path), path, metadata={"training": json.dumps(record)})
    again = torch.nn.Linear(2, 2)
    step, _ = resume_latest(tmp_path, modules={"m": again}, optimizers={"main": torch.optim.Adam(again.parameters())})
    assert step == 2
    tensors = load_file(path)  # an optimiser state under a name that is not one (an internal ValueError)
    tensors["optim.main.state.x.exp_avg"] = tensors.pop("optim.main.state.0.exp_avg")
    save_file(tensors, path, metadata=metadata)
    step, _ = resume_latest(tmp_path, modules={"m": again}, optimizers={"main": torch.optim.Adam(again.parameters())})
    assert step == 2


def test_a_pipeline_folder_may_hold_our_own_extra_generators(tmp_path, tiny_generator):
    """A bundle's extra generator (e.g. a fine-tuned copy for domain adaptation) is ours: the folder can be
    replaced; a foreign folder beside it still makes the folder untouchable."""
    from hyperinverter.errors import OutputError
    from hyperinverter.io.files import check_replaceable
    from hyperinverter.io.gan import save_gan
    from hyperinverter.methods.phase1 import Phase1
    from hyperinverter.pipeline import save_pipeline

    folder = tmp_path / "bundle"
    save_pipeline(Phase1.create(tiny_generator), folder)
    save_gan(folder / "sketch_generator", tiny_generator)
    check_replaceable(folder, "pipeline")
    (folder / "notes").mkdir()
    (folder / "notes" / "thesis.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes"):
        check_replaceable(folder, "pipeline")


def test_a_generator_folder_s_extra_files_are_named_for_what_they_are(tmp_path, tiny_generator):
    # A user's model card in a generator folder was said to be lost as "directions found on it would not fit
    # another" (the message for a folder holding directions, given for any of a pipeline's extra names).
    from hyperinverter.errors import OutputError
    from hyperinverter.io.files import check_replaceable
    from hyperinverter.io.gan import save_gan

    folder = tmp_path / "g"
    save_gan(folder, tiny_generator)
    (folder / "MODEL_CARD.md").write_text("my notes")
    with pytest.raises(OutputError) as error:
        check_replaceable(folder, "generator")
    assert "holds files hyperinverter did not write (MODEL_CARD.md)" in str(error.value)
    assert "directions" not in str(error.value)
    (folder / "directions").mkdir()
    with pytest.raises(OutputError, match=r"holds MODEL_CARD.md, directions, which .* \(directions found on it"):
        check_replaceable(folder, "generator")


def test_what_the_model_files_fuzzing_pass_found(pipeline, tmp_path, capsys):
    """A folder output inside a bundle replaced its generator (`convert G2 B/generator`, `export-generator ... --out
    B/generator`: the encoders then ran on another generator); an inversion replaced a model's weights
    (`import-pti --out B/w_encoder/model.safetensors`); a tampered pipeline.json or config.json was a TypeError,
    RecursionError or AttributeError."""
    from conftest import build_tiny_generator
    from hyperinverter.errors import OutputError, SchemaError
    from hyperinverter.io.gan import save_gan
    from hyperinverter.pipeline import InversionPipeline

    bundle = pipeline.save_pretrained(tmp_path / "B")
    save_gan(tmp_path / "g2", build_tiny_generator(seed=7))
    before = (bundle / "generator" / "model.safetensors").read_bytes()
    assert main(["convert", str(tmp_path / "g2"), str(bundle / "generator")]) == 2
    assert "is a part of the model" in capsys.readouterr().err
    assert (bundle / "generator" / "model.safetensors").read_bytes() == before
    result = pipeline.invert(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    weights = bundle / "w_encoder" / "model.safetensors"
    kept = weights.read_bytes()
    with pytest.raises(OutputError, match="is a file of ours that holds a model's weights, not an inversion"):
        pipeline.save_result(result, weights)
    assert weights.read_bytes() == kept
    pipeline.save_result(result, tmp_path / "a.safetensors")
    pipeline.save_result(result, tmp_path / "a.safetensors")  # an inversion replaces an inversion
    InversionPipeline.from_pretrained(bundle, device="cpu")  # the bundle is whole

    # A .pt of tensors without values (meta device): an internal error where a value was read.
    from hyperinverter.errors import CheckpointError
    from hyperinverter.io.checkpoints import load_weights_only

    torch.save({"g_ema": {"style.1.weight": torch.empty(4, 4, device="meta")}}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="meta.pt: holds tensors without values"):
        load_weights_only(tmp_path / "meta.pt")
    # A few stored values repeated (stride 0) into a huge weight: the generator built from its shapes asked for it.
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1).expand(32, 10**9)}}, tmp_path / "repeats.pt")
    with pytest.raises(CheckpointError, match=r"repeats.pt: holds a tensor of size \(32, 1000000000\)"):
        load_weights_only(tmp_path / "repeats.pt")
    torch.save({"latent_avg": torch.zeros(512).expand(18, 512)}, tmp_path / "small.pt")  # small: harmless, taken
    assert load_weights_only(tmp_path / "small.pt")["latent_avg"].shape == (18, 512)

    index = json.loads((bundle / "pipeline.json").read_text())
    config = json.loads((bundle / "w_encoder" / "config.json").read_text())
    for where, text, cause in (
            ("pipeline.json", json.dumps({**index, "generator": ["generator"]}), "component folders must be plain"),
            ("pipeline.json", json.dumps({**index, "default_method": {"a": 1}}), "'default_method'"),
            ("pipeline.json", "[" * 100_000 + "]" * 100_000, "nests too deeply"),
            ("w_encoder/config.json", json.dumps({**config, "extras": [1]}), "'extras' must be a JSON object"),
            ("w_encoder/config.json", "[" * 100_000 + "]" * 100_000, "nests too deeply")):
        original = (bundle / where).read_text()
        (bundle / where).write_text(text)
        with pytest.raises(SchemaError, match=cause):
            InversionPipeline.from_pretrained(bundle, device="cpu")
        (bundle / where).write_text(original)


def test_what_the_model_files_fuzzing_pass_left_is_mended(pipeline, tmp_path, capsys):
    """The last pass's leftovers: counts in a component config had no bound (`mapping_layers: 100000` spent minutes
    building, 10**12 ran out of memory or overflowed inside torch); `feature_index: -1` read the last map; a
    hypernetwork without targets and sizes a constructor refuses named no file; a named pipe given as a model, an
    image, a direction or a config hung; `opts.output_size` as a string was refused as "trained for 1024px but the
    generator makes 1024px"."""
    from hyperinverter.errors import CheckpointError, SchemaError
    from hyperinverter.pipeline import InversionPipeline

    bundle = pipeline.save_pretrained(tmp_path / "B")
    for part, change, error, cause in (
            ("generator", {"mapping_layers": 100_000}, SchemaError, "mapping_layers must be an integer from 1 to 256"),
            ("generator", {"w_dim": 10**12}, CheckpointError, "describes a network that cannot be built"),
            ("feature_encoder", {"n_styles": 10**12}, SchemaError, "n_styles must be an integer from 1 to 64"),
            ("feature_encoder", {"trunk": {"units": [100_000, 1, 1, 1]}}, SchemaError, "units must be integers"),
            ("feature_encoder", {"feature_size": 10**12}, CheckpointError, "cannot be halved down"),
            ("hypernetwork", {"targets": []}, SchemaError, "a hypernetwork needs at least one target"),
            ("hypernetwork", {"target0": {"feature_index": -1}}, SchemaError, "feature_index must be an integer from"),
            ("hypernetwork", {"target0": {"shape": [-4, 4, 3, 3]}}, SchemaError, "of positive sizes")):
        path = bundle / part / "config.json"
        original = path.read_text()
        data = json.loads(original)
        config = data["config"]
        for key, value in change.items():
            if key == "target0":
                config["targets"][0].update(value)
            elif isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
        path.write_text(json.dumps(data))
        started = time.perf_counter()
        with pytest.raises(error, match=cause) as caught:
            InversionPipeline.from_pretrained(bundle, device="cpu")
        assert str(caught.value).startswith(str(bundle / part)) and time.perf_counter() - started < 10
        path.write_text(original)
    InversionPipeline.from_pretrained(bundle, device="cpu")

    # Named pipes: each reader names them instead of waiting for a writer.
    for name in ("g.pt", "photo.png", "d.safetensors", "c.yaml"):
        os.mkfifo(tmp_path / name)
    photo = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(photo)
    for argv, code, said in (
            (["convert", str(tmp_path / "g.pt"), str(tmp_path / "g2")], 2, "g.pt: is a named pipe, not a model file"),
            (["invert", str(tmp_path / "photo.png"), str(photo), "--model", str(bundle), "--out", str(tmp_path / "o")],
             1, "photo.png: is a named pipe, not an image file"),
            (["edit", str(photo), "--model", str(bundle), "--direction", str(tmp_path / "d.safetensors"), "--out",
              str(tmp_path / "e")], 2, "d.safetensors: is a named pipe, not a direction file"),
            (["train", "w-encoder", "--config", str(tmp_path / "c.yaml")], 2, "c.yaml: is a named pipe, not a config"),
            (["import-official", str(tmp_path / "g.pt"), "--out", str(tmp_path / "i")], 2,
             "g.pt: is a named pipe, not a torch checkpoint file")):
        assert main(argv) == code, argv
        assert said in capsys.readouterr().err, argv
    assert (tmp_path / "o" / "ok.png").is_file()  # the batch went on past the pipe

    # An official file's options of the wrong type are named as such.
    from hyperinverter.convert.official import load_psp_w_encoder
    from hyperinverter.convert.rosinality import from_nvidia
    from hyperinverter.models.encoders import TrunkConfig, WEncoder, WEncoderConfig
    from test_official import TRUNK

    G = pipeline.generator
    decoder = from_nvidia(G.state_dict(), G.config)
    decoder.pop("latent_avg")
    encoder = WEncoder(WEncoderConfig(trunk=TrunkConfig(**TRUNK), w_dim=G.w_dim))
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in decoder.items()}}
    for opts, cause in (({"output_size": str(G.resolution)}, "its opts 'output_size' is '32', not a whole number"),
                        ({"output_size": 64}, "was trained for 64px but the generator makes 32px")):
        torch.save({"state_dict": state, "opts": opts, "latent_avg": torch.zeros(G.w_dim)}, tmp_path / "w.pt")
        with pytest.raises(CheckpointError, match=cause):
            load_psp_w_encoder(tmp_path / "w.pt")


_DEAD = 2**22 + 1  # (above any pid the kernel hands out: no process has it)


def _write_each_kind(kind: str, path: Path) -> None:
    from hyperinverter.editing.directions import LinearDirection, save_direction
    from hyperinverter.inversion.files import save_inversion
    from hyperinverter.io.images import save_gif, save_image
    from hyperinverter.io.video import mp4_bytes
    from hyperinverter.methods.base import InversionResult

    frames = torch.zeros(2, 3, 8, 8)
    if kind in ("md", "json", "csv"):  # evaluate's and directions label's reports
        data = {"md": files.markdown_bytes("# scores"), "json": files.json_report_bytes({"psnr": 1.0}),
                "csv": b"image,method,psnr\na.png,e4e,1.0\n"}[kind]
        files.atomic_write_bytes(path, data, report=True)
    elif kind == "figure":  # evaluate's OUT.png
        import matplotlib.pyplot as plt

        files.atomic_write_figure(path, plt.figure(figsize=(1, 1)))
    elif kind == "image":  # generate --out, swap, restore
        save_image(frames[0], path)
    elif kind == "gif":
        save_gif(list(frames), path)
    elif kind == "mp4":  # interpolate's clip, made in a scratch folder beside it
        files.atomic_write_bytes(path, mp4_bytes(frames, 4, beside=path))
    elif kind == "direction":
        save_direction(LinearDirection(torch.ones(1, 16), "smile"), path)
    elif kind == "inversion":  # save_result
        save_inversion(path, InversionResult(ws=torch.zeros(1, 4, 16), image=frames[:1]))
    else:  # convert's .pt
        from hyperinverter.convert.gan_files import save_rosinality

        save_rosinality(path, build_tiny_generator())


@pytest.mark.parametrize("kind, name", [("md", "OUT.md"), ("json", "OUT.json"), ("csv", "OUT.csv"),
                                        ("figure", "OUT.png"), ("image", "x.png"), ("gif", "lerp.gif"),
                                        ("mp4", "lerp.mp4"), ("direction", "smile.safetensors"),
                                        ("inversion", "face.safetensors"), ("pt", "g.pt")])
def test_a_single_file_output_removes_what_a_killed_write_of_it_left(tmp_path, kind, name):
    # Where files cannot be written unnamed (NFS, macOS; on Linux while a file is replaced), a write killed
    # halfway leaves a hidden temporary beside the output. Folder outputs and run folders removed theirs when
    # written again; a single file's (evaluate's report, generate --out, a direction, ...) stayed for good.
    if kind == "mp4":
        pytest.importorskip("av")
    stale = tmp_path / f".{name}.0123456789abcdef-{_DEAD}.partial"
    stale.write_bytes(b"half")
    scratch = tmp_path / f".{name}.fedcba9876543210-{_DEAD}.partial"  # (an interpolate's clip being made)
    scratch.mkdir()
    keep = [tmp_path / f".{name}.0123456789abcdef-{os.getppid()}.partial",  # its writer still runs
            tmp_path / f".other.png.0123456789abcdef-{_DEAD}.partial",  # another output's: its own writer's to remove
            tmp_path / f".{name}.notours-{_DEAD}.partial"]  # not a name we make
    for path in keep:
        path.write_bytes(b"half")
    _write_each_kind(kind, tmp_path / name)
    assert not os.path.lexists(stale) and not scratch.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *(p.name for p in keep)])


def test_writers_list_a_folder_once_not_once_per_file(tmp_path, monkeypatch):
    # Finding a file's temporaries lists its folder: once per file, invert's 20,000 outputs into one folder
    # listed 20,000 entries 20,000 times. Once per folder, a temporary of a later file is still found.
    later = tmp_path / f".0049.png.0123456789abcdef-{_DEAD}.partial"
    later.write_bytes(b"half")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(files.os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    for i in range(50):
        files.atomic_write_group([(tmp_path / f"{i:04d}.png", b"a"), (tmp_path / f"{i:04d}.json", b"{}")])
    assert len(listed) == 1 and not later.exists()
