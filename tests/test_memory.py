"""The heap under CPU tensors: large blocks are reused without page faults once freed, and trim gives them back."""

import resource
import sys

import pytest
import torch

from hyperinverter.memory import reuse_freed_memory, trim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def faults_while(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def touch_block() -> None:
    block = torch.ones(64 * 2**20 // 4)  # 64 MB: glibc would map a fresh one each time, 16k pages to fault in
    del block


def test_freed_large_blocks_are_reused_without_page_faults_and_trim_returns_them():
    if not reuse_freed_memory():
        pytest.skip("this C library does not take mallopt")
    touch_block()
    assert faults_while(touch_block) < 1000  # against ~16k when every block is a fresh mapping
    touch_block()
    kept = resident_mb()
    assert trim()
    assert resident_mb() < kept - 32  # the freed 64 MB go back to the system
    assert faults_while(touch_block) > 8000  # and come back page by page
