"""Keep large freed host buffers in the process instead of handing them back to the kernel.

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
`mmap` and returns it with `munmap` on free. A DiT forward on the CPU allocates and frees
dozens of activations of 20-100 MiB, so each forward page-faults (and the kernel zeroes) them
all over again: on a 2-core machine that was ~8 of 26 seconds of system time for a 96-frame
640x360 upscale (docs/PERF.md, eighth session). Turning mmap off for malloc and raising the trim
threshold keeps the memory in the heap for the next chunk: it is not returned between chunks
(heap fragmentation can raise the peak a little; not measured). Numerics are untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TRIM_THRESHOLD_BYTES = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_tuned = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl does not)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Apply the setting once per process; True when it is in effect.

    Left alone when the user tunes malloc through glibc's own environment variables or preloads
    another allocator (jemalloc, tcmalloc), and off with VSRQ_KEEP_FREED_MEMORY=0."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("VSRQ_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the trim threshold first: if turning mmap off then fails, nothing is left half set
    _tuned = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(libc.mallopt(M_MMAP_MAX, 0))
    return _tuned
