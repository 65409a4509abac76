"""Device selection shared by the CLI and the library: never hard-code 'cuda'."""

from __future__ import annotations

import torch

# The device types hyperinverter runs on -> their name in messages.
DEVICE_NAMES = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS (Apple)", "xpu": "XPU (Intel GPU)"}


class DeviceError(ValueError):
    """A device that cannot be used; the command line says it is ``--device``'s (the message names only the value)."""


def _available(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    if device_type == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    backend = getattr(torch, device_type, None)
    return backend is not None and backend.is_available()


def parse_device(spec: str) -> torch.device:
    """``spec`` (not ``"auto"``) as a device of a type hyperinverter runs on, whether or not this machine has it;
    else a :class:`DeviceError` (a ``ValueError``) that names it and the cause."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:  # (TypeError: 1.5, a list)
        raise DeviceError(f"invalid device {spec!r}: {e}") from None
    if device.type not in DEVICE_NAMES:
        raise DeviceError(f"invalid device {spec!r}: hyperinverter runs on {', '.join(DEVICE_NAMES)} (or auto)")
    return device


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is passed to ``torch.device`` and checked: a type
    hyperinverter runs on, present on this machine, and an index this machine has. Errors are
    :class:`DeviceError`s that name the device and the cause."""
    if isinstance(spec, torch.device):  # checked as its name is (a meta device got past, to fail inside autocast)
        spec = str(spec)
    if spec in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _available("mps"):
            return torch.device("mps")
        return torch.device("cpu")
    device = parse_device(spec)
    name = DEVICE_NAMES[device.type]
    if not _available(device.type):
        raise DeviceError(f"device {spec!r} requested but {name} is not available on this machine")
    if device.index is not None and device.type in ("cuda", "xpu"):
        count = getattr(torch, device.type).device_count()
        if device.index >= count:
            raise DeviceError(f"device {spec!r} requested but this machine has {count} {name} device(s) "
                             f"(indices 0 to {count - 1})")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on a CPU). MPS and XPU queue their work as CUDA
    does: a stopwatch that waits on CUDA alone timed their launches, not their work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
