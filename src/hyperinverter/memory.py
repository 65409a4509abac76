"""The C heap under PyTorch's CPU tensors (glibc only; elsewhere every function is a no-op returning False).

glibc serves each large block (a full-size activation is 64-134 MB) with a fresh ``mmap`` and unmaps it on
``free``. Every forward pass then faults its activations in page by page again: 0.4-0.7M first-touch faults,
0.5-0.7 s, per 1024-px HyperInverter image on a CPU (``benchmarks/results/fullsize-*.md``). With
:func:`reuse_freed_memory` the blocks come from the heap and stay there once freed, so the next pass reuses
pages that are already mapped. The cost is that the heap keeps its high-water mark, and that fragmentation can
grow it slowly under a mix of requests: a long-running server calls :func:`keep_memory_bounded` first (the web
page does, and trims the heap once a minute).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and glibc's defaults
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int; the largest keeps any freed top of the heap
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

_bounded = False  # set by keep_memory_bounded: reuse_freed_memory does nothing from then on
_reusing = False  # reuse_freed_memory changed glibc's settings


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim")):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory mapped, for the whole process (idempotent).

    InversionPipeline calls this when it runs on a CPU. Returns whether it is in effect (False without glibc, or
    after :func:`keep_memory_bounded`).
    """
    libc = _glibc()
    if libc is None or _bounded:
        return False
    global _reusing
    _reusing = ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.debug("large CPU blocks now come from the heap and stay mapped when freed: %s", ok)
    return ok


def keep_memory_bounded() -> bool:
    """For a long-running server: glibc's defaults again (a fresh mapping per large block, unmapped when freed), and
    :func:`reuse_freed_memory` a no-op from now on. Speed for a level resident set."""
    global _bounded, _reusing
    _bounded = True
    libc = _glibc()
    if libc is None or not _reusing:  # untouched: glibc's own (dynamic) thresholds stay
        return libc is not None
    _reusing = False
    return bool(libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD))


def cap_arenas(arenas: int) -> bool:
    """Cap glibc's per-thread malloc arenas (call before the threads start: each thread's arena otherwise keeps
    the memory it once held)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the heap's free memory back to the system (``malloc_trim``)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
