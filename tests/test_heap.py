"""The C heap keeps freed blocks for reuse once its thresholds are fixed (glibc only).

Each case runs in a fresh interpreter, whose malloc has not yet moved its thresholds, and reads
glibc's own counters (``mallinfo2``) around a 24 MB block: mapped apart, or taken from the heap
and kept there after ``free``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import lwmm_lab.heap

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("heap", sys.argv[1])
heap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(heap)
fixed = heap.keep_freed_memory() if sys.argv[2] == "fix" else False
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2")
    sys.exit()
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
size = 24 << 20
before = libc.mallinfo2()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
held = libc.mallinfo2()
libc.free(ctypes.c_void_p(block))
after = libc.mallinfo2()
print(fixed, held.hblkhd - before.hblkhd, held.arena - after.arena)
"""


def probe(mode: str, **env: str) -> tuple[bool, int, int]:
    """(thresholds fixed, bytes mapped apart for the block, heap bytes returned on free)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(Path(lwmm_lab.heap.__file__)), mode],
        capture_output=True,
        text=True,
        check=True,
        env=clean | env,
    )
    if done.stdout.strip() == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    fixed, mapped, returned = done.stdout.split()
    return fixed == "True", int(mapped), int(returned)


def test_a_freed_block_stays_in_the_heap_once_the_thresholds_are_fixed() -> None:
    fixed, mapped, returned = probe("fix")
    assert fixed
    assert mapped == 0, "the block was mapped apart: the mmap threshold was not raised"
    assert returned == 0, "the freed block went back to the kernel: the trim threshold is low"


def test_glibc_alone_maps_the_block_apart() -> None:
    """The control: without the fix, the same block is mapped and unmapped (faulted in anew
    on every batch), so the test above measures the fix and not glibc's defaults."""
    fixed, mapped, _ = probe("plain")
    assert not fixed
    assert mapped >= 24 << 20


def test_the_users_own_thresholds_are_kept() -> None:
    fixed, mapped, _ = probe("fix", MALLOC_TRIM_THRESHOLD_="131072")
    assert not fixed
    assert mapped >= 24 << 20
