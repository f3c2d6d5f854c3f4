"""VideoReader: lazy, upright RGB frames with the source's own timestamps; InputError on damage."""

from __future__ import annotations

import os
import random
import subprocess
import types

import av
import imageio_ffmpeg
import numpy as np
import pytest

from vsrq.errors import InputError
from vsrq.io import Frame, VideoReader


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def test_frames_are_streamed_one_by_one(media) -> None:
    clip = media["tagged"]
    with VideoReader(clip.path) as reader:
        frames = reader.frames()
        assert isinstance(frames, types.GeneratorType)  # lazy: nothing decoded until asked
        first = next(frames)
        assert isinstance(first, Frame)
        assert first.image.shape == (48, 64, 3) and first.image.dtype == np.uint8
        assert (first.pts, first.time, first.index) == (0, 0.0, 0)
        rest = list(frames)
    assert len(rest) == 11


def ffmpeg_first_frame(path: str, pix_fmt: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Independent reference: the ffmpeg binary's own conversion (it autorotates by default)."""
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype).reshape(shape)


def test_pixels_match_what_was_encoded(media) -> None:
    """Full-range BT.470BG source: same RGB as ffmpeg's conversion, and close to what was encoded
    (the 4:2:0 chroma of the colourful test pattern caps the latter near 34 dB)."""
    clip = media["tagged"]
    with VideoReader(clip.path) as reader:
        decoded = [f.image for f in reader.frames()]
    assert len(decoded) == len(clip.frames)
    assert psnr(decoded[0], ffmpeg_first_frame(clip.path, "rgb24", (48, 64, 3), "u1"), 255) > 45
    for got, want in zip(decoded, clip.frames):
        assert psnr(got, want, 255) > 30


def test_variable_frame_rate_timestamps_survive(media) -> None:
    clip = media["vfr"]
    with VideoReader(clip.path) as reader:
        frames = list(reader.frames())
        assert reader.info.time_base == clip.time_base
    assert [f.pts for f in frames] == clip.pts
    assert [f.time for f in frames] == pytest.approx([float(p * clip.time_base) for p in clip.pts])
    assert [f.index for f in frames] == list(range(len(clip.pts)))


def test_rotation_is_applied(media, tmp_path) -> None:
    """Compared with both np.rot90 of what was encoded and ffmpeg's own autorotation."""
    clip = media["rotated"]
    with VideoReader(clip.path) as reader:
        frames = [f.image for f in reader.frames()]
    assert frames[0].shape == (64, 48, 3) and frames[0].flags.c_contiguous
    for got, stored in zip(frames, clip.frames):
        assert psnr(got, np.rot90(stored, 1), 255) > 30
        assert psnr(got, np.rot90(stored, -1), 255) < 20  # the other direction is clearly wrong
    assert psnr(frames[0], ffmpeg_first_frame(clip.path, "rgb24", (64, 48, 3), "u1"), 255) > 45


def test_ten_bit_source_gives_uint16(media) -> None:
    clip = media["tenbit"]
    with VideoReader(clip.path) as reader:
        frames = [f.image for f in reader.frames()]
    assert frames[0].dtype == np.uint16 and frames[0].shape == (48, 64, 3)
    assert frames[0].max() > 60000  # full 16-bit scale, not 10-bit values in a 16-bit container
    got, want = frames[0].astype(np.int64), clip.frames[0].astype(np.int64)
    # On this grey ramp 10-bit precision leaves a median error near 20; cutting to 8 bits, near 64.
    assert np.median(np.abs(got - want)) < 40
    assert np.median(np.abs((got >> 8) * 257 - want)) > 40
    assert psnr(frames[0], ffmpeg_first_frame(clip.path, "rgb48le", (48, 64, 3), "<u2"), 65535) > 45


def test_odd_size(media) -> None:
    with VideoReader(media["odd"].path) as reader:
        shapes = {f.image.shape for f in reader.frames()}
    assert shapes == {(47, 63, 3)}


def test_frames_can_be_read_twice(media) -> None:
    with VideoReader(media["sar"].path) as reader:
        assert len(list(reader.frames())) == len(list(reader.frames())) == 8


def test_zero_frame_video(zero_frames: str) -> None:
    with pytest.raises(InputError, match="no video frames"):
        with VideoReader(zero_frames) as reader:
            list(reader.frames())


def _truncate(path: str, dest: str, fraction: float) -> str:
    data = open(path, "rb").read()
    with open(dest, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return dest


def _read_until_error(path: str) -> tuple[int, InputError]:
    count = 0
    with VideoReader(path) as reader:
        with pytest.raises(InputError) as err:
            for _ in reader.frames():
                count += 1
    assert "\n" not in str(err.value)
    return count, err.value


def test_truncated_mp4_with_index_first(media, tmp_path) -> None:
    """Index (moov) before the data: the file opens, so the reader must notice the missing tail."""
    cut = _truncate(media["long"].path, str(tmp_path / "cut.mp4"), 0.6)
    count, err = _read_until_error(cut)
    assert 0 < count < 30
    assert f"truncated after frame {count - 1}" in str(err)


def test_truncated_matroska(media, tmp_path) -> None:
    cut = _truncate(media["long_mkv"].path, str(tmp_path / "cut.mkv"), 0.5)
    count, err = _read_until_error(cut)
    assert 0 < count < 100 and "truncated" in str(err)


def test_damaged_data_names_the_frame(bbb_path: str, tmp_path) -> None:
    """Garbage in the middle of a real H.264 stream: the error says which frame broke."""
    faststart = str(tmp_path / "fs.mp4")
    with av.open(bbb_path) as src, av.open(faststart, "w") as dst:
        video = dst.add_stream_from_template(src.streams.video[0], opaque=True)
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = video
                dst.mux(packet)
    data = bytearray(open(faststart, "rb").read())
    rng = random.Random(0)
    for k in range(len(data) // 2, len(data) // 2 + 20000):
        data[k] = rng.randrange(256)
    damaged = str(tmp_path / "damaged.mp4")
    open(damaged, "wb").write(bytes(data))
    count, err = _read_until_error(damaged)
    assert f"at frame {count}" in str(err) and "damaged" in str(err)
    assert os.path.getsize(damaged) == len(data)
