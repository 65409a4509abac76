"""MP4 clips: encoded by each installed backend and decoded back; the no-backend path."""

from __future__ import annotations

import errno
import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hyperinverter.io import video
from hyperinverter.io.files import written_by_us
from hyperinverter.io.video import available_backends, mp4_bytes, video_backend


def _decode(data: bytes, tmp_path) -> tuple[list[np.ndarray], float]:
    """(RGB frames, frame rate) of an MP4, by whichever library is installed."""
    if video._module("av") is not None:
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            return frames, float(stream.average_rate)
    import imageio_ffmpeg

    path = tmp_path / "decoded.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return frames, float(meta["fps"])


def _ramp(n: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Flat frames from dark to light, so that each decoded frame can be told by its brightness."""
    levels = torch.linspace(-0.8, 0.8, n)
    return levels[:, None, None, None].expand(n, channels, height, width).clone()


needs_backend = pytest.mark.skipif(not available_backends(), reason="no video backend (pip install av)")


@needs_backend
@pytest.mark.parametrize("backend", available_backends() or ["none"])
def test_rgb_frames_round_trip(backend, tmp_path):
    frames = _ramp(6, 3, 32, 48)
    frames[:, 0] *= -1  # not gray: red falls while green and blue rise
    data = mp4_bytes(frames, fps=12, backend=backend)
    assert data[4:8] == b"ftyp"
    assert data.find(b"moov") < data.find(b"mdat")  # faststart: the index first
    (tmp_path / "ours.mp4").write_bytes(data)
    (tmp_path / "theirs.mp4").write_bytes(data.replace(b"hyperinverter", b"somethingelse"))
    assert written_by_us(tmp_path / "ours.mp4") and not written_by_us(tmp_path / "theirs.mp4")
    decoded, fps = _decode(data, tmp_path)
    assert len(decoded) == 6 and decoded[0].shape == (32, 48, 3) and fps == pytest.approx(12)
    expected = ((frames.permute(0, 2, 3, 1) + 1) * 127.5).numpy()
    error = max(float(np.abs(d.astype(np.float32) - e).mean()) for d, e in zip(decoded, expected))
    assert error < 6, error  # H.264 at CRF 18 on flat frames: a few levels at most


@needs_backend
@pytest.mark.parametrize("backend", available_backends() or ["none"])
def test_odd_grayscale_frames_are_padded_to_even_rgb(backend, tmp_path):
    frames = _ramp(3, 1, 31, 33)
    decoded, _ = _decode(mp4_bytes(frames, fps=5, backend=backend), tmp_path)
    assert len(decoded) == 3 and decoded[0].shape == (32, 34, 3)
    last = decoded[-1].astype(np.float32)
    assert np.abs(last - last.mean(axis=-1, keepdims=True)).max() < 8  # gray stays gray
    assert abs(float(last.mean()) - (0.8 + 1) * 127.5) < 6


def test_no_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # an import of either now fails
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert video_backend() is None and available_backends() == []
    with pytest.raises(ImportError, match="pip install av"):
        mp4_bytes(_ramp(2, 3, 8, 8), fps=4)
    with pytest.raises(ImportError, match="'av' is not installed"):
        mp4_bytes(_ramp(2, 3, 8, 8), fps=4, backend="av")


@pytest.mark.parametrize(("frames", "fps", "message"), [
    (torch.zeros(3, 8, 8), 4, "must be"),
    (torch.zeros(2, 4, 8, 8), 4, "1 or 3"),
    (torch.zeros(0, 3, 8, 8), 4, "N >= 1"),
    (torch.zeros(2, 3, 1, 8), 4, "at least 2x2"),
    (torch.full((2, 3, 8, 8), float("nan")), 4, "NaN"),
    (torch.zeros(2, 3, 8, 8), 0, "fps"),
    (torch.zeros(2, 3, 8, 8), 2.5, "fps"),
])
def test_bad_input(frames, fps, message, monkeypatch):
    monkeypatch.setattr(video, "available_backends", lambda: ["av", "imageio-ffmpeg"])  # checks come first
    with pytest.raises(ValueError, match=message):
        mp4_bytes(frames, fps=fps, backend="av")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        mp4_bytes(torch.zeros(2, 3, 8, 8), fps=4, backend="ffmpeg")


def test_a_clip_the_encoder_could_not_finish_is_an_error_naming_it(tmp_path, monkeypatch):
    # imageio-ffmpeg's write_frames never reads ffmpeg's exit status: a clip cut short by a full disk came back as
    # made, and `interpolate` wrote it as its .mp4.
    program = tmp_path / "ffmpeg"  # (takes the frames, writes part of the clip, fails as ffmpeg does)
    program.write_text("#!/bin/sh\ncat > /dev/null\nfor last; do :; done\nprintf half > \"$last\"\n"
                       "echo '[out#0/mp4 @ 0x1] Error closing file: No space left on device' >&2\nexit 228\n")
    program.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(program))
    if video._module("imageio_ffmpeg") is None:  # (a stand-in that finds the program: the program is the point)
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", SimpleNamespace(get_ffmpeg_exe=lambda: str(program)))
    monkeypatch.setattr(video, "available_backends", lambda: ["imageio-ffmpeg"])
    out = tmp_path / "out" / "clip.mp4"
    with pytest.raises(OSError) as caught:
        mp4_bytes(_ramp(4, 3, 8, 8), fps=4, backend="imageio-ffmpeg", beside=out)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert caught.value.strerror == "the video encoder (ffmpeg) failed: Error closing file: No space left on device"
    assert not list(out.parent.iterdir())  # its hidden folder is gone


@needs_backend
@pytest.mark.parametrize("backend", available_backends() or ["none"])
def test_a_clip_beside_a_relative_output_with_a_colon_in_its_name(backend, tmp_path, monkeypatch):
    # Made beside its output, the clip was named to FFmpeg by a relative path, which FFmpeg reads as a URL: a
    # folder named "12:30" was "Protocol not found" (PyAV's own error, a traceback); one named "-x" an option.
    monkeypatch.chdir(tmp_path)
    for folder in ("12:30", "-x"):
        data = mp4_bytes(_ramp(4, 3, 8, 8), fps=4, backend=backend, beside=f"{folder}/lerp.mp4")
        assert data[4:8] == b"ftyp"
        assert not list((tmp_path / folder).iterdir())  # (its hidden folder is gone)
