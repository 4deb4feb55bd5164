"""The C heap under CPU inference: freed activations kept for the next batch (glibc).

A forward pass on a CPU allocates its activations afresh, tens of megabytes a batch. glibc's
malloc hands large freed blocks back to the kernel (above its mmap threshold, or when the free
top of the heap passes its trim threshold), and it moves both thresholds as it goes. So each
batch page-faults the same memory in again. Scoring 100 zoo images in batches of 50 on one
core spent 15% of its time in the kernel (0.10 s of 0.66 s, ``getrusage``).

Fixed thresholds keep that memory in the process for the next batch, as the PyTorch CPU
tuning advice does with another allocator: mmap at 32 MB (glibc's own upper limit) and trim
at 1 GB. The price is a resident size that stays near its peak, a few hundred MB for the lab's
batches, instead of shrinking between them. A user who sets ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or glibc's malloc tunables keeps their own choice.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

#: glibc's ``mallopt`` parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds, once per process, so that freed tensors' memory
    is reused by the next batch instead of being faulted in again.

    Returns whether they were set: False where the C library is not glibc (macOS, Windows,
    musl) or where the user has set them (environment variables or ``GLIBC_TUNABLES``).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
