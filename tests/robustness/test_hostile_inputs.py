"""Every bad or hostile input through the real `vsrq upscale` command.

Each case ends in one of two ways, and nothing else: exit 0 with a correct output (frame count,
size and whatever the case is about, checked with PyAV), or a non-zero exit with exactly one
stderr line `vsrq: error: ...` and no file at the target. Never a traceback; warnings are single
`vsrq: warning: ...` lines. docs/RELIABILITY.md lists what these tests observe (set
VSRQ_OBSERVED=file.jsonl to record it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import av
import pytest
from typer.testing import CliRunner

from tests.robustness import hostile as h
from vsrq.cli import app
from vsrq.io import probe



@dataclass(frozen=True)
class Refused:
    match: str  # must appear in the one error line


@dataclass(frozen=True)
class Upscaled:
    frames: int | None  # None: the count the warning gives ("kept the N frames", "N frames read")
    size: tuple[int, int]
    warning: str | None = None  # must appear in the one warning line; None: stderr stays empty
    check: Callable[[Path, Path], None] | None = field(default=None)  # (input, output) -> asserts


def keeps_bit_depth_10(src: Path, out: Path) -> None:
    assert probe(out).bit_depth == 10 and probe(out).pix_fmt == "yuv420p10le"


def keeps_hdr_tags(src: Path, out: Path) -> None:
    a, b = probe(src), probe(out)
    assert (b.color_primaries, b.color_trc, b.colorspace) == (a.color_primaries, a.color_trc, a.colorspace)
    assert b.color_trc in (16, 18) and b.color_primaries == 9
    keeps_bit_depth_10(src, out)


def upright_without_rotation_tag(src: Path, out: Path) -> None:
    assert probe(src).rotation == 90 and probe(out).rotation == 0


def decoded_times(path: Path) -> list[float]:
    """Frame times as the file stores them (PyAV directly: VideoReader would repair bad ones)."""
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def same_timestamps(src: Path, out: Path) -> None:
    assert decoded_times(out) == pytest.approx(decoded_times(src), abs=1e-3)


def strictly_increasing_times(src: Path, out: Path) -> None:
    times = decoded_times(out)
    assert all(b > a for a, b in zip(times, times[1:])), times


def starts_later(src: Path, out: Path) -> None:
    assert probe(out).start_time == pytest.approx(probe(src).start_time + 0.12, abs=0.01)


UP = (128, 96)  # 32x24 x4
CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], Refused | Upscaled]] = {
    # not media at all
    "empty_file": (h.empty, (), Refused("file is empty")),
    "random_bytes": (h.random_bytes, (), Refused("not a readable media file")),
    "text_file": (h.text_file, (), Refused("not a readable media file")),
    "mp4_header_then_junk": (h.mp4_header_then_junk, (), Refused("not a readable media file")),
    "png_named_mp4": (h.png_as_mp4, (), Upscaled(1, UP)),
    "jpeg_named_mp4": (h.jpeg_as_mp4, (), Upscaled(1, UP)),
    # not a regular, readable file
    "missing_path": (h.missing, (), Refused("does not exist")),
    "directory": (h.directory, (), Refused("holds no video files")),  # a folder is a batch: an empty one
    "fifo": (h.fifo, (), Refused("is not a file")),
    "device_dev_zero": (h.device, (), Refused("is not a file")),
    "broken_symlink": (h.broken_symlink, (), Refused("does not exist")),
    "unreadable_chmod_000": (h.unreadable, (), Refused("permission denied")),
    "spaces_and_unicode_path": (h.spaces_and_unicode, (), Upscaled(6, UP)),
    "mkv_named_mp4": (h.mkv_named_mp4, (), Upscaled(4, UP)),
    # no usable video
    "audio_only": (None, (), Refused("no video stream")),  # the shared `audio_only` fixture
    "subtitles_only": (h.subtitles_only, (), Refused("no video stream")),
    "zero_video_frames": (None, (), Refused("no video frames")),  # the shared `zero_frames` fixture
    "header_only_mp4": (h.header_only_mp4, (), Refused("no video frames")),
    # damaged
    "truncated_10pc": (h.truncated(0.1), (), Refused("truncated")),
    "truncated_50pc_stop": (h.truncated(0.5), (), Refused("file is truncated after frame")),
    "truncated_90pc_stop": (h.truncated(0.9), (), Refused("file is truncated after frame")),
    "truncated_50pc_skip": (h.truncated(0.5), ("--on-error", "skip"), Upscaled(None, UP, "file is truncated after frame")),
    "truncated_90pc_skip": (h.truncated(0.9), ("--on-error", "skip"), Upscaled(None, UP, "file is truncated after frame")),
    "truncated_index_at_end": (h.truncated_index_last, (), Refused("not a readable media file, or truncated")),
    "truncated_mkv_stop": (h.truncated_mkv, (), Refused("the header promises 3.00 s of video")),
    "truncated_mkv_skip": (h.truncated_mkv, ("--on-error", "skip"), Upscaled(None, UP, "the header promises 3.00 s")),
    "corrupt_packets_stop": (h.corrupt_middle, (), Refused("damaged or truncated video data at frame")),
    "corrupt_packets_skip": (h.corrupt_middle, ("--on-error", "skip"), Upscaled(None, UP, "damaged video data from frame")),
    "starts_mid_gop": (h.starts_mid_gop, (), Upscaled(8, UP, "the first 3 frame(s) cannot be decoded", starts_later)),
    # sizes
    "huge_declared_16000x16000": (h.huge_declared, (), Refused("picture size 16000x16000 is too large")),
    "huge_real_17000x16": (h.huge_real, (), Refused("picture size 17000x16 is too large")),
    "output_too_wide_16800": (h.output_too_wide, (), Refused("the output would be 16800x64, more than the 16384 pixels")),
    "one_frame": (h.one_frame, (), Upscaled(1, UP)),
    "two_frames": (h.two_frames, (), Upscaled(2, UP)),
    "odd_size_31x23_444": (h.odd_size_444, (), Upscaled(4, (124, 92))),
    "odd_size_31x23_420": (h.odd_size_420, (), Upscaled(4, (124, 92))),
    "tiny_1x1": (h.tiny(1, 1), (), Upscaled(3, (4, 4))),
    "tiny_2x2": (h.tiny(2, 2), (), Upscaled(3, (8, 8))),
    "size_change_mid_stream": (h.size_change, (), Upscaled(6, UP, "picture size changes from 32x24 to 40x30 at frame 3")),
    # metadata and timing
    "rotation_90": (h.rotated, (), Upscaled(4, (96, 128), check=upright_without_rotation_tag)),
    "variable_frame_rate": (h.variable_frame_rate, (), Upscaled(6, UP, check=same_timestamps)),
    "duplicate_pts": (h.duplicate_pts, (), Upscaled(6, UP, "4 frame(s) had repeated or backward timestamps", strictly_increasing_times)),
    "backward_pts": (h.non_monotonic_pts, (), Upscaled(6, UP, "3 frame(s) had repeated or backward timestamps", strictly_increasing_times)),
    "raw_h264_no_timestamps": (h.raw_h264, (), Upscaled(6, UP, check=strictly_increasing_times)),
    # pixel formats
    "ten_bit_h264": (h.ten_bit, (), Upscaled(4, UP, check=keeps_bit_depth_10)),
    "twelve_bit_ffv1": (h.twelve_bit, (), Upscaled(4, UP, check=keeps_bit_depth_10)),
    "hdr10_pq": (h.hdr_pq, (), Upscaled(4, UP, check=keeps_hdr_tags)),
    "hlg": (h.hdr_hlg, (), Upscaled(4, UP, check=keeps_hdr_tags)),
    "interlaced_tff": (h.interlaced, (), Upscaled(6, UP, "interlaced video (top field first)")),
    "alpha_png_rgba_mov": (h.alpha_png_mov, (), Upscaled(4, UP, "the alpha channel (transparency) is dropped")),
    "alpha_prores_4444": (h.alpha_prores, (), Upscaled(4, UP, "the alpha channel (transparency) is dropped", keeps_bit_depth_10)),
}


def upscale(src: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["upscale", str(src), str(out), "-q", "--preset", "ultrafast", *extra])


def output_facts(path: Path) -> tuple[int, tuple[int, int]]:
    """(decoded frames, size) of the output, read with PyAV directly."""
    with av.open(str(path)) as c:
        sizes = [(f.width, f.height) for f in c.decode(video=0)]
    assert len(set(sizes)) == 1, set(sizes)
    return len(sizes), sizes[0]


def check_stderr(result) -> list[str]:
    """stderr as lines; each one is a vsrq error or warning line, and there is no traceback."""
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    lines = result.stderr.splitlines()
    for line in lines:
        assert line.startswith(("vsrq: error: ", "vsrq: warning: ")), line
    return lines


def check_refused(result, expected: Refused, out: Path) -> None:
    lines = check_stderr(result)
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("vsrq: error: "), lines
    assert expected.match in lines[0], lines[0]
    assert not out.exists()
    leftovers = sorted(p.name for p in out.parent.iterdir())
    assert not leftovers, leftovers


def check_upscaled(result, expected: Upscaled, src: Path, out: Path) -> int:
    lines = check_stderr(result)
    assert result.exit_code == 0, lines
    if expected.warning is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("vsrq: warning: ") and expected.warning in lines[0], lines
    frames, size = output_facts(out)
    want = expected.frames
    if want is None:
        match = re.search(r"kept the (\d+) frames|(\d+) frames read", lines[0])
        want = int(match.group(1) or match.group(2))
        assert want > 0
    assert (frames, size) == (want, expected.size)
    if expected.check is not None:
        expected.check(src, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporaries left
    return frames


def record(name: str, result, frames: int | None, paths: dict[str, str]) -> None:
    """Append what was observed to $VSRQ_OBSERVED (JSON lines) for docs/RELIABILITY.md; `paths`
    shortens temporary paths (longest first) so the rows read like what a user would see."""
    target = os.environ.get("VSRQ_OBSERVED")
    if not target:
        return
    text = result.stderr.strip()
    for long, short in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(long, short)
    row = {"case": name, "exit": result.exit_code, "stderr": text, "frames": frames}
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name: str, tiny_model, tmp_path, request) -> None:
    make, extra, expected = CASES[name]
    if name == "unreadable_chmod_000" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    if make is None:
        src = Path(request.getfixturevalue({"audio_only": "audio_only", "zero_video_frames": "zero_frames"}[name]))
    else:
        src = make(in_dir)
    out = out_dir / "out.mp4"
    result = upscale(src, out, *extra)
    frames = None
    if isinstance(expected, Refused):
        check_refused(result, expected, out)
    else:
        frames = check_upscaled(result, expected, src, out)
    paths = {str(out_dir): "<out dir>"}
    if make is not h.device:  # keep "/dev/zero" whole
        paths[str(src.parent) + os.sep] = ""
    record(name, result, frames, paths)
