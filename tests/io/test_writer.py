"""VideoWriter: round trips keep timing, aspect, colour, audio and subtitles; output is atomic."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from fractions import Fraction

import numpy as np
import pytest

import vsrq.io.remux
from vsrq.errors import OutputError
from vsrq.io import VideoReader, VideoWriter, available_video_encoders, probe


def copy_video(src: str, dst: str, **kwargs) -> list[Fraction]:
    """Read every frame of src and write it to dst with its own pts; returns the source frame times."""
    with VideoReader(src) as reader:
        info = reader.info
        options = dict(width=info.width, height=info.height, fps=info.fps, time_base=info.time_base,
                       source=info, preset="ultrafast")
        options.update(kwargs)
        times = []
        with VideoWriter(dst, **options) as writer:
            for frame in reader.frames():
                writer.write(frame.image, pts=frame.pts, duration=frame.duration)
                times.append(frame.pts * info.time_base)
    return times


def frame_times(path: str) -> list[Fraction]:
    """Exact presentation times (pts x time_base) of every decoded frame."""
    with VideoReader(path) as reader:
        return [f.pts * reader.info.time_base for f in reader.frames()]


def read_images(path: str) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return [f.image for f in reader.frames()]


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def leftovers(directory) -> list[str]:
    """Temporary files the writer may have left (they all carry '.vsrq-' in their name)."""
    return sorted(name for name in os.listdir(directory) if ".vsrq-" in name)


def tiny_writer(path, **kwargs) -> VideoWriter:
    options = dict(width=64, height=48, fps=Fraction(25), preset="ultrafast")
    options.update(kwargs)
    return VideoWriter(path, **options)


def grey(value: int = 128, shape=(48, 64, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


# -- round trips -------------------------------------------------------------------------------

def test_real_clip_round_trip(bbb_path: str, tmp_path, read_packets) -> None:
    out = str(tmp_path / "bbb_out.mp4")
    source_times = copy_video(bbb_path, out)
    src, dst = probe(bbb_path), probe(out)
    assert (dst.width, dst.height, dst.num_frames, dst.fps) == (1280, 720, 132, Fraction(25))
    assert dst.duration == pytest.approx(src.duration)
    assert frame_times(out) == source_times
    assert dst.num_audio_streams == 1
    src_audio, dst_audio = read_packets(bbb_path, "audio"), read_packets(out, "audio")
    assert len(src_audio) == len(dst_audio) == 249
    assert [b for b, _ in dst_audio] == [b for b, _ in src_audio]  # bit-identical, in order
    assert [t for _, t in dst_audio] == pytest.approx([t for _, t in src_audio])
    assert leftovers(tmp_path) == []
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_colour_sar_audio_subtitles_kept(media, tmp_path, read_packets, colour_tags) -> None:
    clip = media["tagged"]
    out = str(tmp_path / "tagged_out.mp4")
    copy_video(clip.path, out, crf=0)
    info = probe(out)
    assert (info.color_range, info.color_primaries, info.color_trc, info.colorspace) == (
        colour_tags["range"], colour_tags["primaries"], colour_tags["trc"], colour_tags["space"])
    assert info.num_frames == 12 and info.duration == pytest.approx(probe(clip.path).duration)
    assert read_packets(out, "audio") == read_packets(clip.path, "audio")
    subs = read_packets(out, "subtitle")
    assert subs == read_packets(clip.path, "subtitle") and len(subs) >= 2
    assert b"hello" in subs[0][0]
    # Lossless x264; what is lost is a second 4:2:0 chroma subsampling of a saturated test pattern.
    for before, after in zip(read_images(clip.path), read_images(out)):
        assert psnr(before, after, 255) > 35


@pytest.mark.parametrize("colour_range", [1, 2])
def test_lossless_444_round_trip_is_near_exact(media, tmp_path, colour_range) -> None:
    """Without chroma subsampling, RGB -> YUV -> RGB must agree within rounding (same matrix and
    range on both sides) for limited and full range."""
    clip = media["tagged"]
    source = dataclasses.replace(probe(clip.path), color_range=colour_range)
    out = str(tmp_path / "lossless.mkv")
    with VideoWriter(out, width=64, height=48, fps=Fraction(25), source=source, codec="ffv1",
                     pix_fmt="yuv444p") as writer:
        writer.write(clip.frames[0])
    info = probe(out)
    assert (info.color_range, info.colorspace) == (colour_range, source.colorspace)
    after = read_images(out)[0].astype(np.int64)
    assert np.abs(after - clip.frames[0]).max() <= 2


def test_sample_aspect_ratio_kept(media, tmp_path) -> None:
    out = str(tmp_path / "sar_out.mp4")
    copy_video(media["sar"].path, out)
    assert probe(out).sample_aspect_ratio == Fraction(4, 3)


def test_variable_frame_rate_round_trip(media, tmp_path, read_packets) -> None:
    clip = media["vfr"]
    out = str(tmp_path / "vfr_out.mp4")
    source_times = copy_video(clip.path, out)
    assert source_times == [p * clip.time_base for p in clip.pts]
    assert frame_times(out) == source_times  # exact, irregular gaps included
    assert probe(out).duration == pytest.approx(probe(clip.path).duration)
    assert read_packets(out, "audio") == read_packets(clip.path, "audio")


def test_variable_frame_rate_into_matroska(media, tmp_path, read_packets) -> None:
    """Matroska stores milliseconds and no negative times: the AAC priming packet (at -21 ms) makes
    the muxer shift every stream by the same amount, so gaps and audio/video offset survive to 1 ms."""
    clip = media["vfr"]
    out = str(tmp_path / "vfr_out.mkv")
    source_times = [float(t) for t in copy_video(clip.path, out)]
    got = [float(t) for t in frame_times(out)]
    assert np.diff(got) == pytest.approx(np.diff(source_times), abs=1e-3)
    audio_in, audio_out = read_packets(clip.path, "audio"), read_packets(out, "audio")
    assert [b for b, _ in audio_out] == [b for b, _ in audio_in]
    assert got[0] - audio_out[0][1] == pytest.approx(source_times[0] - audio_in[0][1], abs=1e-3)


def test_rotated_input_written_upright(media, tmp_path) -> None:
    clip = media["rotated"]
    out = str(tmp_path / "rotated_out.mp4")
    copy_video(clip.path, out, crf=0)
    info = probe(out)
    assert (info.rotation, info.width, info.height) == (0, 48, 64)
    for before, after in zip(read_images(clip.path), read_images(out)):
        assert psnr(before, after, 255) > 35


def test_ten_bit_in_ten_bit_out(media, tmp_path) -> None:
    clip = media["tenbit"]
    out = str(tmp_path / "tenbit_out.mp4")
    copy_video(clip.path, out, crf=0)
    info = probe(out)
    assert (info.pix_fmt, info.bit_depth) == ("yuv420p10le", 10)
    before, after = read_images(clip.path)[0], read_images(out)[0]
    assert after.dtype == np.uint16
    assert np.median(np.abs(before.astype(np.int64) - after.astype(np.int64))) < 40  # finer than 8-bit


def test_uint8_frames_default_to_eight_bit(tmp_path) -> None:
    out = str(tmp_path / "plain.mp4")
    with tiny_writer(out) as writer:
        for i in range(5):
            writer.write(grey(40 * i))
    info = probe(out)
    assert (info.pix_fmt, info.num_frames, info.fps, info.duration) == ("yuv420p", 5, 25, pytest.approx(0.2))


@pytest.mark.parametrize("codec", [c for c in available_video_encoders() if not c.endswith("_nvenc")])
def test_each_codec_writes_a_readable_file(codec: str, tmp_path) -> None:
    out = str(tmp_path / f"{codec}.mkv")
    with VideoWriter(out, width=64, height=64, fps=Fraction(25), codec=codec, preset="ultrafast") as writer:
        for i in range(6):
            writer.write(grey(30 * i, (64, 64, 3)))
    frames = read_images(out)
    assert len(frames) == 6 and frames[0].shape == (64, 64, 3)
    assert abs(int(frames[3].mean()) - 90) <= 3


def test_odd_size_rule(media, tmp_path) -> None:
    """4:2:0 needs even sizes: refused up front; 4:4:4 takes odd sizes as they are."""
    clip = media["odd"]
    with pytest.raises(OutputError, match="needs even width and height, got 63x47"):
        copy_video(clip.path, str(tmp_path / "odd420.mp4"))
    out = str(tmp_path / "odd444.mp4")
    copy_video(clip.path, out, pix_fmt="yuv444p")
    info = probe(out)
    assert (info.width, info.height, info.pix_fmt, info.num_frames) == (63, 47, "yuv444p", 8)
    assert leftovers(tmp_path) == []


# -- companion streams ---------------------------------------------------------------------------

def test_subrip_kept_in_matroska(media, tmp_path, read_packets) -> None:
    clip = media["srt"]
    out = str(tmp_path / "srt_out.mkv")
    copy_video(clip.path, out)
    assert read_packets(out, "subtitle") == read_packets(clip.path, "subtitle")
    assert read_packets(out, "audio") == read_packets(clip.path, "audio")


def test_subtitle_mp4_cannot_hold_is_dropped_with_warning(media, tmp_path, read_packets, caplog) -> None:
    clip = media["srt"]
    out = str(tmp_path / "srt_out.mp4")
    with caplog.at_level(logging.WARNING, logger="vsrq.io.remux"):
        copy_video(clip.path, out)
    assert "subtitle stream #2 (srt) cannot be copied into mp4 output; dropping it" in caplog.text
    info = probe(out)
    assert info.num_subtitle_streams == 0 and info.num_frames == 10
    assert read_packets(out, "audio") == read_packets(clip.path, "audio")
    assert leftovers(tmp_path) == []


def test_ffmpeg_fallback_when_pyav_cannot_copy(media, tmp_path, read_packets, monkeypatch) -> None:
    real = vsrq.io.remux.remux_pyav

    def pyav_refuses_companions(video, source, indices, out):
        if list(indices):
            raise RuntimeError("simulated PyAV refusal")
        real(video, source, indices, out)

    monkeypatch.setattr(vsrq.io.remux, "remux_pyav", pyav_refuses_companions)
    clip = media["tagged"]
    out = str(tmp_path / "fallback.mp4")
    copy_video(clip.path, out)
    assert read_packets(out, "audio") == read_packets(clip.path, "audio")
    assert read_packets(out, "subtitle") == read_packets(clip.path, "subtitle")
    assert frame_times(out) == frame_times(clip.path)


# -- refusals and atomicity -------------------------------------------------------------------------

def test_output_equal_to_input_is_refused(media, tmp_path) -> None:
    src = probe(media["sar"].path)
    link = tmp_path / "link.mp4"
    link.symlink_to(src.path)
    before = os.path.getsize(src.path)
    for target in (src.path, str(link)):
        with pytest.raises(OutputError, match="would overwrite the input"):
            tiny_writer(target, source=src, overwrite=True)
    assert os.path.getsize(src.path) == before
    assert leftovers(os.path.dirname(src.path)) == [] and leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path) -> None:
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="file exists"):
        tiny_writer(str(out))
    assert out.read_bytes() == b"keep me"
    with tiny_writer(str(out), overwrite=True) as writer:
        writer.write(grey())
    assert probe(str(out)).num_frames == 1
    assert leftovers(tmp_path) == []


def test_missing_directory(tmp_path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        tiny_writer(str(tmp_path / "nope" / "out.mp4"))


def test_unwritable_directory(tmp_path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
        target = "/proc/vsrq-test-output.mp4"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "out.mp4")
    with pytest.raises(OutputError, match="not writable|cannot create a file"):
        tiny_writer(target)
    assert not os.path.exists(target)


def test_unknown_and_unavailable_codecs(tmp_path) -> None:
    with pytest.raises(OutputError, match="not a supported video codec; choose one of: libx264") as err:
        tiny_writer(str(tmp_path / "a.mp4"), codec="divx")
    assert "\n" not in str(err.value)
    if "h264_nvenc" not in available_video_encoders():
        with pytest.raises(OutputError, match="'h264_nvenc' is not available on this machine"):
            tiny_writer(str(tmp_path / "a.mp4"), codec="h264_nvenc")
    with pytest.raises(OutputError, match="preset 'warp' is not valid"):
        tiny_writer(str(tmp_path / "a.mp4"), preset="warp")
    with pytest.raises(OutputError, match="cannot encode pix_fmt 'yuv420p12le'; it accepts: yuv420p"):
        tiny_writer(str(tmp_path / "a.mp4"), pix_fmt="yuv420p12le")
    assert leftovers(tmp_path) == [] and not os.path.exists(tmp_path / "a.mp4")


def test_unknown_extension(tmp_path) -> None:
    with pytest.raises(OutputError, match="cannot write this container type"):
        tiny_writer(str(tmp_path / "out.notaformat"))
    assert os.listdir(tmp_path) == []


def test_exception_inside_with_leaves_nothing(media, tmp_path) -> None:
    src = probe(media["tagged"].path)  # has audio and subtitles, so a remux would follow
    out = tmp_path / "never.mp4"
    with pytest.raises(KeyboardInterrupt):
        with tiny_writer(str(out), source=src) as writer:
            writer.write(grey())
            assert leftovers(tmp_path)  # work in progress lives in a temp file
            assert not out.exists()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_writer_never_closed_cleans_up(tmp_path) -> None:
    writer = tiny_writer(str(tmp_path / "forgotten.mp4"))
    writer.write(grey())
    assert leftovers(tmp_path)
    del writer
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_closing_without_frames(tmp_path) -> None:
    with pytest.raises(OutputError, match="no frames were written"):
        with tiny_writer(str(tmp_path / "empty.mp4")):
            pass
    assert os.listdir(tmp_path) == []


def test_bad_frames_are_programming_errors(tmp_path) -> None:
    with tiny_writer(str(tmp_path / "x.mp4")) as writer:
        with pytest.raises(ValueError, match="expected an image of shape"):
            writer.write(grey(shape=(48, 63, 3)))
        with pytest.raises(ValueError, match="uint8 or uint16"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        writer.write(grey(), pts=10)
        with pytest.raises(ValueError, match="pts must increase"):
            writer.write(grey(), pts=10)


def test_available_encoders() -> None:
    encoders = available_video_encoders()
    assert {"libx264", "ffv1"} <= set(encoders)
    assert set(encoders) <= {"libx264", "libx265", "libsvtav1", "ffv1", "h264_nvenc", "hevc_nvenc"}
