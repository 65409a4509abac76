"""The heap under CPU tensors (glibc): heap reuse switches on and off as documented, and trim gives memory back.

How many page faults the reuse saves depends on the heap's layout, so it is measured where it matters, on full-size
passes (``benchmarks/bench_fullsize.py``: the page-fault column and the plain-malloc row), not here.
"""

import sys

import pytest
import torch

import hyperinverter.memory as memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_trim_gives_freed_heap_memory_back():
    if not memory.reuse_freed_memory():
        pytest.skip("this C library does not take mallopt")
    blocks = [torch.ones(16 * 2**20 // 4) for _ in range(4)]  # 64 MB, touched, from the heap
    del blocks
    kept = resident_mb()
    assert memory.trim()
    assert resident_mb() < kept - 32


def test_a_bounded_process_ignores_later_reuse_and_restores_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_bounded", False)
    if not memory.reuse_freed_memory():
        pytest.skip("this C library does not take mallopt")
    assert memory.reuse_freed_memory()  # idempotent
    try:
        assert memory.keep_memory_bounded()  # glibc's settings back
        assert not memory._reusing
        assert not memory.reuse_freed_memory()  # a pipeline built later does not switch it back on
        assert memory.keep_memory_bounded()  # idempotent too
    finally:
        monkeypatch.setattr(memory, "_bounded", False)
        memory.reuse_freed_memory()  # as the rest of the test process had it
