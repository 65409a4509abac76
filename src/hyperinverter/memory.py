"""The C heap under PyTorch's CPU tensors (glibc only; elsewhere every function is a no-op returning False).

glibc serves each large block (a full-size activation is 64-134 MB) with a fresh ``mmap`` and unmaps it on
``free``. Every forward pass then faults its activations in page by page again: 0.4-0.7M first-touch faults,
0.5-0.7 s, per 1024-px HyperInverter image on a CPU (``benchmarks/results/fullsize-*.md``). With
:func:`reuse_freed_memory` the blocks come from the heap and stay there once freed, so the next pass reuses
pages that are already mapped. The cost is that the heap keeps its high-water mark; a long-running server
gives it back with :func:`trim` (the web page does, once a minute).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int; the largest keeps any freed top of the heap


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


@functools.cache
def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory mapped, for the whole process (once; idempotent).

    InversionPipeline calls this when it runs on a CPU. Returns whether glibc accepted it.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    logger.debug("large CPU blocks now come from the heap and stay mapped when freed: %s", ok)
    return ok


def cap_arenas(arenas: int) -> bool:
    """Cap glibc's per-thread malloc arenas (call before the threads start: each thread's arena otherwise keeps
    the memory it once held)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the heap's free memory back to the system (``malloc_trim``)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
