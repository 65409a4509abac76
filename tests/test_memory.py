"""The heap under CPU tensors (glibc): heap reuse switches on and off as documented, and trim gives memory back.

How many page faults the reuse saves depends on the heap's layout, so it is measured where it matters, on full-size
passes (``benchmarks/bench_fullsize.py``: the page-fault column and the plain-malloc row), not here.
"""

import subprocess
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


def test_file_pages_are_dropped_only_where_they_are_a_files(tmp_path):
    """A memory-mapped checkpoint's pages leave the resident set and read back unchanged; anonymous memory (which
    MADV_DONTNEED would zero) is never touched."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = torch.randn(4 * 2**20)  # 16 MB
    save_file({"w": weights}, tmp_path / "w.safetensors")
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        mapped = f.get_tensor("w")
    anonymous = weights.clone()
    assert torch.equal(mapped, weights)  # every page read: resident
    pages = memory.FilePages()
    before = resident_mb()
    assert pages.drop(mapped)
    assert resident_mb() < before - 8
    assert torch.equal(mapped, weights)  # read back from the page cache
    assert not pages.drop(anonymous)
    assert torch.equal(anonymous, weights)


def test_loading_a_component_holds_its_weights_once(tmp_path):
    """Checked, copied and converted to channels-last, a component's weights are resident once when loading ends:
    not beside the file's pages, nor in a heap that kept what the copies freed. In a fresh process, as a user's."""

    script = f"""
import torch
from pathlib import Path
import hyperinverter.memory as memory
from hyperinverter.io.components import load_component, save_component_module
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

path = Path({str(tmp_path)!r}) / "g"
G = Generator(GeneratorConfig(resolution=256, channel_max=256))
weights_mb = sum(t.numel() * t.element_size() for t in G.state_dict().values()) / 2**20
save_component_module(path, G)
del G
with memory.large_blocks_mapped():
    load_component(path).to(memory_format=torch.channels_last)  # warm-up: what the first load imports is not weights
    memory.trim()
    before = resident_mb()
    loaded = load_component(path).to(memory_format=torch.channels_last)
print(weights_mb, resident_mb() - before)
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    weights_mb, grown_mb = map(float, out.split()[-2:])
    assert weights_mb > 20 and grown_mb < 1.3 * weights_mb, (grown_mb, weights_mb)


def test_loading_maps_large_blocks_and_leaves_a_threshold_that_reuses_activations(tmp_path):
    """Within ``large_blocks_mapped`` a 4 MB block is a mapping of its own; after it, glibc's moving threshold is off
    for good, and the block comes from the heap again (left at 1 MB, every later activation was a fresh mapping)."""
    script = """
import ctypes, torch
import hyperinverter.memory as memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mapped_while_held(nbytes):
    before = libc.mallinfo2().hblkhd
    block = torch.empty(nbytes // 4)
    return libc.mallinfo2().hblkhd - before >= nbytes

with memory.large_blocks_mapped() as active:
    inside = mapped_while_held(4 * 2**20)
print(active, inside, mapped_while_held(4 * 2**20), mapped_while_held(64 * 2**20))
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    if result.returncode != 0 and "mallinfo2" in result.stderr:
        pytest.skip("this C library has no mallinfo2")
    assert result.returncode == 0, result.stderr
    active, inside, after_small, after_large = result.stdout.split()[-4:]
    if active != "True":
        pytest.skip("this C library does not take mallopt")
    assert (inside, after_small, after_large) == ("True", "False", "True")


def test_reuse_keeps_a_freed_heap_top_of_any_size():
    """A freed top of the heap over 2 GB stays mapped too: a backward pass at full size frees that much (PTI's bf16
    tuning). With the largest int threshold (2 GB) glibc gave it back, and every step faulted it in again: 2.1M page
    faults in two steps. The blocks come from malloc directly, so that nothing else lands above them, and their pages
    are never touched: the program break shows a trim without making memory resident."""
    script = """
import ctypes
import hyperinverter.memory as memory

libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
print(memory.reuse_freed_memory())
blocks = [libc.malloc(100 * 2**20) for _ in range(25)]  # from the heap: reuse allows no mappings
held = libc.sbrk(0)
for block in reversed(blocks):  # top down, as a backward pass frees activations: the free top grows to 2.5 GB
    libc.free(block)
print(held - libc.sbrk(0))
"""
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    active, given_back = result.stdout.split()[-2:]
    if active != "True":
        pytest.skip("this C library does not take mallopt")
    assert int(given_back) == 0


def test_kept_apart_maps_large_blocks_while_the_heap_is_reused_and_nests_in_a_first_pass():
    """Weights packed in the middle of a pass outlive it: inside ``kept_apart`` a 4 MB block gets a mapping of its
    own even with heap reuse on (which otherwise serves everything from the heap), and heap reuse is back after it.
    Inside ``large_blocks_mapped`` it changes nothing, and the outer threshold holds after it."""
    script = """
import ctypes, torch
import hyperinverter.memory as memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
held = []

def mapped(nbytes):
    before = libc.mallinfo2().hblkhd
    held.append(torch.empty(nbytes // 4))
    return libc.mallinfo2().hblkhd - before >= nbytes

with memory.large_blocks_mapped():
    with memory.kept_apart():
        nested = mapped(4 * 2**20)
    after_nested = mapped(4 * 2**20)
active = memory.reuse_freed_memory()
with memory.kept_apart():
    apart = mapped(4 * 2**20)
print(active, nested, after_nested, apart, mapped(4 * 2**20), mapped(64 * 2**20))
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    if result.returncode != 0 and "mallinfo2" in result.stderr:
        pytest.skip("this C library has no mallinfo2")
    assert result.returncode == 0, result.stderr
    active, *mapped = result.stdout.split()[-6:]
    if active != "True":
        pytest.skip("this C library does not take mallopt")
    assert mapped == ["True", "True", "True", "False", "False"]
