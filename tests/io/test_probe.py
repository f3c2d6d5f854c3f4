"""probe(): the facts later stages rely on, and a clean InputError for everything that is not a video."""

from __future__ import annotations

import os
from fractions import Fraction

import pytest

from vsrq.errors import InputError
from vsrq.io import VideoInfo, probe


def test_probe_real_clip(bbb_path: str) -> None:
    info = probe(bbb_path)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (1280, 720, 1280, 720)
    assert info.rotation == 0
    assert info.fps == Fraction(25) and info.time_base == Fraction(1, 12800)
    assert info.num_frames == 132
    assert info.duration == pytest.approx(5.28)
    assert (info.codec, info.pix_fmt, info.bit_depth) == ("h264", "yuv420p", 8)
    assert info.sample_aspect_ratio == 1
    assert info.audio_streams == (1,) and info.num_audio_streams == 1
    assert info.subtitle_streams == () and info.num_subtitle_streams == 0


def test_probe_synthetic_fields(media, colour_tags) -> None:
    info = probe(media["tagged"].path)
    assert (info.width, info.height) == (64, 48)
    assert info.num_frames == 12 and info.fps == 25
    assert info.duration == pytest.approx(12 / 25)
    assert (info.color_range, info.color_primaries, info.color_trc, info.colorspace) == (
        colour_tags["range"], colour_tags["primaries"], colour_tags["trc"], colour_tags["space"])
    assert info.video_stream_index == 0
    assert info.num_audio_streams == 1 and info.num_subtitle_streams == 1


def test_probe_untagged_colour_is_none(media) -> None:
    info = probe(media["sar"].path)
    assert (info.color_range, info.color_primaries, info.color_trc, info.colorspace) == (None, None, None, None)


def test_probe_rotation_swaps_display_size(media) -> None:
    info = probe(media["rotated"].path)
    assert info.rotation == 90
    assert (info.coded_width, info.coded_height) == (64, 48)
    assert (info.width, info.height) == (48, 64)


def test_probe_sar_bit_depth_odd_size(media) -> None:
    assert probe(media["sar"].path).sample_aspect_ratio == Fraction(4, 3)
    deep = probe(media["tenbit"].path)
    assert (deep.pix_fmt, deep.bit_depth, deep.codec) == ("yuv420p10le", 10, "ffv1")
    odd = probe(media["odd"].path)
    assert (odd.width, odd.height, odd.pix_fmt) == (63, 47, "yuv444p")


def test_probe_mkv_frame_count_unknown_but_estimated(media) -> None:
    info = probe(media["srt"].path)
    assert info.num_frames is None  # Matroska does not store a frame count
    assert info.estimated_num_frames == 10


@pytest.mark.parametrize("make, expected", [
    (lambda d: os.path.join(d, "missing.mp4"), "file not found"),
    (lambda d: d, "is a directory"),
    (lambda d: _write(os.path.join(d, "empty.mp4"), b""), "file is empty"),
    (lambda d: _write(os.path.join(d, "notes.mp4"), b"just some text, not a video\n" * 50), "not a readable media file"),
])
def test_probe_bad_paths(tmp_path, make, expected: str) -> None:
    path = make(str(tmp_path))
    with pytest.raises(InputError, match=expected) as err:
        probe(path)
    assert "\n" not in str(err.value) and os.fspath(path) in str(err.value)


def test_probe_audio_only(audio_only: str) -> None:
    with pytest.raises(InputError, match="no video stream"):
        probe(audio_only)


def test_probe_zero_frames(zero_frames: str) -> None:
    with pytest.raises(InputError, match="no video frames"):
        probe(zero_frames)


def test_probe_truncated_real_mp4(bbb_path: str, tmp_path) -> None:
    """bigbuckbunny.mp4 keeps its index (moov) at the end: half a file cannot even be opened."""
    data = open(bbb_path, "rb").read()
    cut = _write(str(tmp_path / "half.mp4"), data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable media file, or truncated"):
        probe(cut)


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path
