"""probe() and VideoReader on hostile inputs, below the CLI: the damage policy and the early refusals."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import av
import pytest

from tests.robustness import hostile as h
from tests.robustness.hostile import hang_guard
from vsrq.errors import InputError
from vsrq.io import VideoReader, probe


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_() -> Iterator[list[str]]:
    """Warnings of vsrq.io, caught at the logger itself (the CLI may have turned propagation off)."""
    handler = _Lines()
    logger = logging.getLogger("vsrq.io")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_on_error_must_be_stop_or_skip(tmp_path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        VideoReader(h.one_frame(tmp_path), on_error="ignore")


def test_stop_names_the_frame(tmp_path) -> None:
    count = 0
    with VideoReader(h.corrupt_middle(tmp_path), on_error="stop") as reader, pytest.raises(InputError) as err:
        for _ in reader.frames():
            count += 1
    assert f"at frame {count}" in str(err.value) and "--on-error skip" in str(err.value)
    assert "\n" not in str(err.value)


def _plain_pyav_count(path) -> tuple[int, int]:
    """(pictures, rejected packets) decoding the file with PyAV alone: the independent answer."""
    pictures = rejected = 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            try:
                pictures += len(stream.decode(packet))
            except av.FFmpegError:
                rejected += 1
    return pictures, rejected


def test_skip_keeps_going_and_counts_the_loss(tmp_path, warnings_) -> None:
    src = h.corrupt_middle(tmp_path)
    pictures, rejected = _plain_pyav_count(src)
    assert rejected >= 1  # the fixture really is damaged
    with VideoReader(src, on_error="skip") as reader:
        frames = list(reader.frames())
    assert len(frames) == pictures  # every picture FFmpeg can decode is kept, nothing invented
    assert [f.index for f in frames] == list(range(len(frames)))
    (line,) = warnings_
    assert "damaged video data from frame" in line and f"{len(frames)} frames read" in line
    assert f"{rejected} packet(s) could not be decoded" in line


def test_skip_keeps_the_frames_before_a_cut(tmp_path, warnings_) -> None:
    with VideoReader(h.truncated(0.5)(tmp_path), on_error="skip") as reader:
        count = sum(1 for _ in reader.frames())
    (line,) = warnings_
    assert f"truncated after frame {count - 1}" in line and f"kept the {count} frames" in line


def test_notes_are_logged_once_per_reader_not_per_probe(tmp_path, warnings_) -> None:
    src = h.interlaced(tmp_path)
    info = probe(src)  # the pipeline probes, then opens a reader that probes again
    assert len(info.notes) == 1 and "interlaced" in info.notes[0]
    assert warnings_ == []
    with VideoReader(src) as reader:
        assert len(list(reader.frames())) == 6
    assert warnings_ == list(info.notes)


def test_timestamps_always_increase(tmp_path, warnings_) -> None:
    with VideoReader(h.non_monotonic_pts(tmp_path)) as reader:
        pts = [f.pts for f in reader.frames()]
    assert all(b > a for a, b in zip(pts, pts[1:])), pts
    assert len(pts) == 6 and "backward timestamps" in warnings_[0]


def test_size_change_is_scaled_back(tmp_path) -> None:
    with VideoReader(h.size_change(tmp_path)) as reader:
        assert {f.image.shape for f in reader.frames()} == {(h.H, h.W, 3)}


def test_huge_header_is_refused_before_decoding(tmp_path) -> None:
    with pytest.raises(InputError, match="16000x16000 is too large"):
        probe(h.huge_declared(tmp_path))


@pytest.mark.parametrize("make", [h.fifo, h.device])
def test_pipes_and_devices_are_refused_without_blocking(tmp_path, make) -> None:
    with hang_guard(5), pytest.raises(InputError, match="not a regular file"):
        probe(make(tmp_path))


def test_real_process_stderr_is_one_line(tmp_path) -> None:
    """FFmpeg logs from C straight to fd 2, past anything a test runner captures: check in a real process."""
    from tests.support import random_checkpoint

    reg = tmp_path / "models.toml"
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    reg.write_text(f'default = "m"\n[models.m]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\n')
    env = dict(os.environ, VSRQ_MODELS=str(reg), VSRQ_CACHE=str(tmp_path / "cache"))
    src, out = h.corrupt_middle(tmp_path), tmp_path / "out.mp4"
    result = subprocess.run([sys.executable, "-m", "vsrq", "upscale", str(src), str(out), "-q", "--preset",
                             "ultrafast", "--on-error", "skip"], capture_output=True, text=True, env=env, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) == 1 and lines[0].startswith("vsrq: warning: ") and "damaged video data" in lines[0], lines
    assert Path(out).is_file()


def test_probe_refuses_a_directory(tmp_path) -> None:
    """Callers that skip the CLI (which treats a folder as a batch) get the reason from probe()."""
    with pytest.raises(InputError, match="is a directory"):
        probe(h.directory(tmp_path))


def test_unreadable_file_is_refused(tmp_path, monkeypatch) -> None:
    """The chmod-000 CLI case is skipped as root (root reads anything); the check itself runs here."""
    src = h.one_frame(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(src) else real_access(p, mode, *a, **k))
    with pytest.raises(InputError, match="permission denied"):
        probe(src)
