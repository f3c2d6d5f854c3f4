"""Fuzzing the container/demux path: mutated mp4 and mkv files through probe() and VideoReader.

Whatever the bytes, the outcome must be frames or a VsrqError (the CLI turns it into one line):
never another exception type, never a hang. Derandomized and bounded, so CI runs the same few
hundred mutations every time in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.media import make_clip
from tests.robustness.hostile import hang_guard
from vsrq.errors import VsrqError
from vsrq.io import VideoReader

HANG_S = 10  # one example taking this long is a hang, not slowness


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid files to mutate: mp4 with the index first, and Matroska (two demuxers)."""
    d = tmp_path_factory.mktemp("seeds")
    mp4 = make_clip(str(d / "seed.mp4"), width=32, height=24, frames=6, container_options={"movflags": "faststart"})
    mkv = make_clip(str(d / "seed.mkv"), width=32, height=24, frames=6)
    return {"mp4": Path(mp4.path).read_bytes(), "mkv": Path(mkv.path).read_bytes()}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# One mutation: (kind, position as a fraction of the length, payload)
mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"]),
    st.floats(0.0, 1.0),
    st.binary(min_size=1, max_size=64),
)


def mutate(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    """Apply the edits in order; each is placed by fraction so it stays inside the shrinking file."""
    buf = bytearray(data)
    for kind, where, payload in edits:
        at = min(int(where * len(buf)), max(len(buf) - 1, 0))
        if kind == "flip" and buf:
            buf[at] ^= payload[0] or 0xFF
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "delete":
            del buf[at:at + len(payload)]
        elif kind == "truncate":
            del buf[at:]
        else:
            buf[at:at + len(payload)] = payload
    return bytes(buf)


def read_all(path: str, on_error: str) -> int:
    """Probe and decode every frame; returns the count (what the pipeline does with a file)."""
    with VideoReader(path, on_error=on_error) as reader:
        return sum(1 for _ in reader.frames())


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(mutation, min_size=1, max_size=4), on_error=st.sampled_from(["stop", "skip"]))
def test_mutated_container_gives_frames_or_vsrq_error(kind: str, edits, on_error: str, seeds, fuzz_dir) -> None:
    path = fuzz_dir / f"fuzz.{kind}"
    path.write_bytes(mutate(seeds[kind], edits))
    with hang_guard(HANG_S):
        try:
            read_all(str(path), on_error)
        except VsrqError as err:
            message = str(err)
            assert message and "\n" not in message
