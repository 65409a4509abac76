"""The C heap under PyTorch's CPU tensors (glibc only; elsewhere every function is a no-op returning False).

glibc serves each large block (a full-size activation is 64-134 MB) with a fresh ``mmap`` and unmaps it on
``free``. Every forward pass then faults its activations in page by page again: 0.4-0.7M first-touch faults,
0.5-0.7 s, per 1024-px HyperInverter image on a CPU (``benchmarks/results/fullsize-*.md``). With
:func:`reuse_freed_memory` the blocks come from the heap and stay there once freed, so the next pass reuses
pages that are already mapped. The cost is that the heap keeps its high-water mark, and that fragmentation can
grow it slowly under a mix of requests: a long-running server calls :func:`keep_memory_bounded` first (the web
page does, and trims the heap once a minute).

Loading holds the weights once: :func:`large_blocks_mapped` returns what the copies free to the system, and
:class:`FilePages` drops a memory-mapped checkpoint's pages once they are copied.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and glibc's defaults
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt(3): -1 "disables trimming completely"; INT_MAX still trimmed a freed top over 2 GB
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_MOVING_THRESHOLD_MAX = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX (64-bit): where its moving threshold stops

_bounded = False  # set by keep_memory_bounded: reuse_freed_memory does nothing from then on
_reusing = False  # reuse_freed_memory changed glibc's settings
_mapping = False  # large_blocks_mapped or kept_apart has lowered the mmap threshold


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

    InversionPipeline calls this when it runs on a CPU, after its first pass. Returns whether it is in effect (False
    without glibc, or after :func:`keep_memory_bounded`).
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


@contextlib.contextmanager
def large_blocks_mapped(threshold: int = 2**20) -> Iterator[bool]:
    """Within: blocks from ``threshold`` bytes up get a mapping of their own, returned to the system when freed.

    glibc raises its threshold as large blocks are freed (up to 32 MB) and keeps what falls below it in the heap.
    Loading runs in this: copying weights out of a file and converting them to channels-last free as much as they
    allocate, and a heap kept all of it (a full-size bundle: 2.32 GB resident at the peak of loading, against 1.76
    with this). Setting a threshold turns glibc's moving one off for good, so on exit it goes where the moving one
    ends up after large frees, 32 MB. Left at 1 MB, every later activation from 1 MB up was a fresh mapping,
    faulted in page by page: without heap reuse (``keep_memory_bounded``, the web page) a full-size HyperInverter
    image took 4.0 s and 1.5M page faults. Yields whether it is in effect (not while :func:`reuse_freed_memory` is).
    """
    global _mapping
    if _mapping:  # an outer one is in effect
        yield True
        return
    libc = _glibc()
    active = _mapping = libc is not None and not _reusing and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    try:
        yield active
    finally:
        if active:
            _mapping = False
            libc.mallopt(_M_MMAP_THRESHOLD, _MOVING_THRESHOLD_MAX)


@contextlib.contextmanager
def kept_apart(threshold: int = 2**20) -> Iterator[None]:
    """Within: blocks from ``threshold`` bytes up get a mapping of their own, whatever the heap policy is, for
    blocks made in the middle of a pass that outlive it (weights packed at their first call,
    :mod:`hyperinverter.ops.prepacked`). From a heap that is reused, each would sit between activations freed
    around it and split the space the next pass reuses. Nests inside :func:`large_blocks_mapped` (and so inside a
    first pass) without changing it."""
    global _mapping
    libc = _glibc()
    if libc is None or _mapping:
        yield
        return
    if not _reusing:
        with large_blocks_mapped(threshold):
            yield
        return
    _mapping = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX))
    try:
        yield
    finally:
        _mapping = False
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_MMAP_THRESHOLD, _MOVING_THRESHOLD_MAX)


@contextlib.contextmanager
def first_pass_mapped() -> Iterator[None]:
    """Around a CPU process's first pass of inference: its large blocks mapped and unmapped on their own
    (:func:`large_blocks_mapped`), then what it freed given back and :func:`reuse_freed_memory` on for every later
    pass, so that those fault nothing in.

    A first pass leaves long-lived blocks behind (oneDNN's kernels and caches, lazily made objects: 23 MB at full
    size). With heap reuse already on, they settled between the pass's activations and split the heap that later
    passes reuse: a full-size HyperInverter process peaked at 2.03-2.19 GB, against 1.95-1.99 with them made first
    (a heap of 589 against 391 MB; ``benchmarks/bench_loading.py``). The first pass pays for it with the page
    faults that reuse saves: 1.2-1.4M at full size, 2-3 s once. A threshold of 8 MB instead of 1 MB faulted half as
    much, and peaked at 1.99-2.01 GB."""
    with large_blocks_mapped():
        yield
    trim()
    reuse_freed_memory()


def cap_arenas(arenas: int) -> bool:
    """Cap glibc's per-thread malloc arenas (call before the threads start: each thread's arena otherwise keeps
    the memory it once held)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the heap's free memory back to the system (``malloc_trim``)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


_MADV_DONTNEED = 4


class FilePages:
    """Drops a tensor's pages from this process's resident set when they belong to a memory-mapped file (a
    safetensors checkpoint read in place): they stay in the page cache, and touching them again reads them back
    from it. A tensor in anonymous memory is left alone (``MADV_DONTNEED`` would zero it). Linux only; elsewhere
    ``drop`` does nothing.

    The file mappings are read once, when this object is made: make it after the file is opened.
    """

    def __init__(self) -> None:
        libc = _glibc()
        self._madvise = None if libc is None or not hasattr(libc, "madvise") else libc.madvise
        self._ranges: list[tuple[int, int]] = []
        if self._madvise is None:
            return
        self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith("/"):  # a file, not [heap], [stack] or anonymous
                        start, end = (int(a, 16) for a in fields[0].split("-"))
                        self._ranges.append((start, end))
        except OSError:
            self._ranges = []
        self._ranges.sort()  # /proc lists them in address order already; drop() bisects them
        self._starts = [lo for lo, _ in self._ranges]

    def drop(self, t: torch.Tensor) -> bool:
        """Unmap the whole pages under ``t`` if they lie in a file mapping; returns whether it did."""
        if self._madvise is None or t.device.type != "cpu" or t.numel() == 0:
            return False
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        i = bisect.bisect_right(self._starts, start) - 1  # the last mapping that starts at or before the tensor
        if i < 0 or end > self._ranges[i][1]:
            return False
        first = -(-start // self._page) * self._page  # whole pages only: a neighbour may share the edge pages
        last = end // self._page * self._page
        return last <= first or self._madvise(first, last - first, _MADV_DONTNEED) == 0
