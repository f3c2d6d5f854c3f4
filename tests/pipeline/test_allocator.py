"""keep_freed_memory: large tensors stop being served by mmap (each process its own, so a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vsrq.pipeline import allocator

PROBE = """
import ctypes, sys
import torch
from vsrq.pipeline.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
import sys
if sys.argv[1:] == ["cli"]:  # through the `vsrq` entry point (vsrq --help), as a user runs it
    from vsrq.cli import main
    sys.argv = ["vsrq", "--help"]
    try:
        main()
    except SystemExit:
        pass
    from vsrq.pipeline import allocator
    tuned = allocator._tuned
else:
    tuned = keep_freed_memory()
before = libc.mallinfo2().hblkhd
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)
during = libc.mallinfo2().hblkhd
del x
arena_after = libc.mallinfo2().arena
print(int(tuned), during - before, arena_after)
"""


def _probe(env_extra: dict[str, str], *args: str) -> tuple[int, int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VSRQ_KEEP_FREED_MEMORY"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    tuned, mmapped, arena = (int(v) for v in out.split()[-3:])
    return tuned, mmapped, arena


needs_glibc = pytest.mark.skipif(allocator._glibc() is None or not hasattr(allocator._glibc(), "mallinfo2"),
                                 reason="glibc >= 2.33 only")


@needs_glibc
def test_large_tensors_come_from_the_heap_and_stay_there() -> None:
    tuned, mmapped, arena = _probe({})
    assert tuned == 1
    assert mmapped == 0  # not a fresh mmap
    assert arena >= 64 << 20  # and kept in the heap after it was freed


@needs_glibc
def test_untuned_process_maps_large_tensors() -> None:
    """The control: without the setting glibc serves the same tensor with mmap (so the test above can fail)."""
    tuned, mmapped, _ = _probe({"VSRQ_KEEP_FREED_MEMORY": "0"})
    assert tuned == 0
    assert mmapped >= 64 << 20


@needs_glibc
def test_users_own_malloc_settings_win() -> None:
    tuned, mmapped, _ = _probe({"MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert tuned == 0
    assert mmapped >= 64 << 20


@needs_glibc
def test_the_vsrq_command_applies_it() -> None:
    tuned, mmapped, _ = _probe({}, "cli")
    assert tuned == 1 and mmapped == 0
