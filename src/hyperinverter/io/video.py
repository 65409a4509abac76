"""H.264 MP4 clips of image sequences (interpolations), when a video library is installed.

Two backends, tried in this order: PyAV (``pip install av``: FFmpeg's libraries in-process, a ~36 MB wheel) and
imageio-ffmpeg (``pip install imageio-ffmpeg``: a bundled ffmpeg program run as a subprocess, a ~68 MB wheel).
Neither is required: without one, callers write GIFs only.

Clips play everywhere a browser or phone plays video: H.264 in yuv420p, with the index at the front of the file
(``+faststart``) so that a page can start playing before the whole file has arrived. yuv420p needs an even width
and height, so an odd-sized frame is padded by repeating its last row or column (never resized: every pixel of
the frame is kept as it is). Grayscale frames are written as RGB.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..bounds import MAX_FPS
from .files import WRITER_TAG, scratch_folder_beside
from .images import tensor_to_uint8

logger = logging.getLogger(__name__)

BACKENDS = ("av", "imageio-ffmpeg")
CRF = 18  # x264's "visually lossless" end of the scale: clips are short, quality matters more than size


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _av_encoder(av) -> str | None:
    """The H.264 encoder PyAV's FFmpeg has (wheels ship libx264; a system FFmpeg may have another or none)."""
    for name in ("libx264", "libopenh264", "h264"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001, S112  (PyAV raises its own error kinds for an unknown encoder)
            continue
        return name
    return None


def available_backends() -> list[str]:
    """The installed backends that can write H.264, in order of preference."""
    found = []
    av = _module("av")
    if av is not None and _av_encoder(av) is not None:
        found.append("av")
    if _module("imageio_ffmpeg") is not None:
        found.append("imageio-ffmpeg")
    return found


def video_backend() -> str | None:
    """``'av'``, ``'imageio-ffmpeg'``, or None when neither is installed (then only GIFs can be written)."""
    found = available_backends()
    return found[0] if found else None


def _rgb_even(frames: torch.Tensor) -> np.ndarray:
    """``[N,C,H,W]`` in [-1,1] -> ``uint8 [N,H',W',3]``, grayscale repeated to RGB, padded to even H', W'."""
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must be [N, 1 or 3, H, W] with N >= 1, got {tuple(frames.shape)}")
    if frames.shape[2] < 2 or frames.shape[3] < 2:
        raise ValueError(f"frames must be at least 2x2 pixels, got {frames.shape[3]}x{frames.shape[2]}")
    if not bool(torch.isfinite(frames).all()):
        raise ValueError("the frames hold NaN or infinite values")
    rgb = tensor_to_uint8(frames)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    pad_h, pad_w = rgb.shape[1] % 2, rgb.shape[2] % 2
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(rgb)


def _write_av(path: Path, rgb: np.ndarray, fps: int) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        container.metadata["comment"] = WRITER_TAG  # (io.files.written_by_us)
        stream = container.add_stream(_av_encoder(av), rate=fps)
        stream.height, stream.width = rgb.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(CRF)}
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames


def _write_imageio(path: Path, rgb: np.ndarray, fps: int) -> None:
    import imageio_ffmpeg

    # imageio-ffmpeg's bundled program, run here rather than through its write_frames, which never reads the
    # program's exit status: a clip cut short by a full disk was returned as made, and written as the output.
    height, width = rgb.shape[1:3]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-vcodec", "libx264",
               "-pix_fmt", "yuv420p", "-crf", str(CRF), "-movflags", "+faststart", "-metadata",
               f"comment={WRITER_TAG}", os.fspath(path)]
    done = subprocess.run(command, input=memoryview(rgb.reshape(-1)), capture_output=True, check=False)
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        code = errno.ENOSPC if any("No space left on device" in line for line in said) else errno.EIO
        # (ffmpeg's last line, without its "[out#0 @ 0x..]" prefix)
        last = re.sub(r"^\[[^]]*\]\s*", "", said[-1]) if said else f"exit status {done.returncode}"
        raise OSError(code, f"the video encoder (ffmpeg) failed: {last}", os.fspath(path))


def mp4_bytes(frames: torch.Tensor, fps: int, *, backend: str | None = None,
              beside: str | os.PathLike | None = None) -> bytes:
    """``[N,C,H,W]`` frames in [-1,1] (C = 1 or 3) -> the bytes of an H.264 MP4 playing at ``fps``.

    ``backend``: ``'av'`` or ``'imageio-ffmpeg'`` (default: the first installed). ``ImportError`` when none is,
    naming what to install. The encoders write to a file (the MP4 index is placed at the front after the
    frames are known), so the clip is made in a temporary folder and read back. ``beside``: the path the clip
    will be written to; the folder is then made beside it under a temporary's name, so that one left by a
    killed process goes with the next clip made for that path (``io.files.scratch_folder_beside``), and an
    error writing it (a full disk) names that path. Without it, the system's temporary folder is used.
    """
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        raise ValueError(f"fps must be an integer from 1 to {MAX_FPS}, got {fps!r}")
    if backend is None:
        backend = video_backend()
        if backend is None:
            raise ImportError("writing MP4 needs PyAV or imageio-ffmpeg: pip install av")
    elif backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; known: {', '.join(BACKENDS)}")
    elif backend not in available_backends():
        raise ImportError(f"the video backend {backend!r} is not installed (pip install "
                          f"{'av' if backend == 'av' else 'imageio-ffmpeg'})")
    rgb = _rgb_even(frames)
    if rgb.shape[1:3] != tuple(frames.shape[2:]):
        logger.info("padded %dx%d frames to %dx%d for H.264 (even sizes)", frames.shape[3], frames.shape[2],
                    rgb.shape[2], rgb.shape[1])
    scratch = tempfile.TemporaryDirectory(prefix="hyperinverter-video-") if beside is None \
        else scratch_folder_beside(beside)
    with scratch as folder:
        # Absolute: FFmpeg reads a name as a URL, and one beside a relative output ("12:30/lerp.mp4") was refused
        # as "Protocol not found" (a leading "-" is an option to the ffmpeg program).
        path = Path(folder).absolute() / "clip.mp4"
        try:
            (_write_av if backend == "av" else _write_imageio)(path, rgb, fps)
            return path.read_bytes()
        except OSError as e:  # (a full disk) named after the clip asked for, not the hidden folder, removed next
            if beside is None:
                raise
            raise OSError(e.errno, e.strerror or str(e), os.fspath(beside)) from e
