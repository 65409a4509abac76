"""Reduced precision at inference: ``dtype="bf16"`` (CPUs with native bf16, GPUs) or ``"fp16"`` (GPUs).

The network runs under ``torch.autocast``, so its convolutions and matrix products take the reduced type, while
what must stay in fp32 runs in :func:`full_precision` regions. Which parts those are was decided by measurement
(``benchmarks/bench_precision.py``, results in ``benchmarks/results/precision-*.md``):

- the mapping network, the styles (the affine layers) and the demodulation coefficients (an ``rsqrt`` of sums
  over ``I·k·k`` products): a bf16 style error multiplies every weight of its layer;
- the RGB skip sum, which accumulates every block's contribution to the output image;
- the Δθ a method predicts, and the ``θ + Δθ`` / ``θ·(1 + Δθ)`` it makes (see :mod:`.methods.hyperinverter`).

Every result leaves in fp32, whatever ran inside.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}


def dtype_name(spec: str | torch.dtype) -> str:
    """``torch.bfloat16``, ``"bfloat16"`` or ``"bf16"`` -> ``"bf16"``; anything else is a ``ValueError``."""
    if isinstance(spec, torch.dtype):
        name = next((k for k, v in PRECISIONS.items() if v == spec), None)
    else:
        name = _ALIASES.get(str(spec).lower(), str(spec).lower())
    if name not in PRECISIONS:
        raise ValueError(f"unknown dtype {spec!r}; use one of {', '.join(PRECISIONS)}")
    return name


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (or a ``torch.dtype``; None is fp32) -> the dtype, checked against ``device``.

    fp16 is for GPUs: CPUs have no fast fp16 convolutions, so asking for it there is an error that says so.
    """
    name = "fp32" if spec is None else dtype_name(spec)
    device_type = torch.device(device).type
    if name == "fp16" and device_type == "cpu":
        raise ValueError("fp16 runs on GPUs only; on a CPU use bf16 (or fp32)")
    if name == "bf16" and device_type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return PRECISIONS[name]


@functools.cache
def _warn_emulated_bf16() -> None:
    # Once a process: every invert call and every batch resolves its dtype again (a folder of 1,000 images in
    # batches of one logged it 1,001 times).
    logger.warning("this CPU has no native bf16 instructions: bf16 will be emulated and slower than fp32")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively here (AVX-512 BF16 or AMX)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def reduced_precision(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The context a method runs in: autocast to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """An fp32 region inside :func:`reduced_precision` (a no-op outside one). Cast its inputs with
    :func:`at_least_fp32`."""
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


def at_least_fp32(x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` for a full-precision region: in fp32, or in float64 where ``like`` (the weights it meets; default
    ``x`` itself) is float64 (a plain ``.float()`` ran a float64 model's demodulation and styles in fp32)."""
    return x.to(full_dtype(x if like is None else like))


def full_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype of a full-precision region for ``like``: fp32, or float64 for a float64 tensor."""
    return torch.promote_types(like.dtype, torch.float32)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` produces here: autocast's where it is on, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
