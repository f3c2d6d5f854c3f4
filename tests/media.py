"""Tiny synthetic media made with PyAV directly (not with vsrq's writer, which is under test).

Shared by every test folder: tests/conftest.py re-exports the fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import Colorspace

ASS_HEADER = (
    b"[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\n\r\n"
    b"[V4+ Styles]\r\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, "
    b"Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\r\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\r\n\r\n"
    b"[Events]\r\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\r\n"
)
SUBTITLE_TEXTS = (b"hello", b"world")


def pattern(index: int, width: int, height: int, *, deep: bool = False) -> np.ndarray:
    """Smooth gradients plus a bright block in the top-left corner whose colour changes per frame.

    The corner block makes orientation visible. `deep` gives a uint16 grey ramp: without chroma
    detail, what is left of the round-trip error is the bit depth, which is what 10-bit tests check.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    if deep:
        ramp = 0.1 + 0.8 * (x + y + index) / (width + height + index)
        img = np.stack([ramp, ramp, ramp], axis=-1)
    else:
        img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                        0.5 + 0.4 * np.sin((x + y + 3 * index) / 9.0)], axis=-1)
    img[: height // 4, : width // 4] = (1.0, 1.0 - (index % 5) / 5.0, 0.2)
    if deep:
        return np.round(img * 65535).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)


@dataclass
class Clip:
    """A generated file plus what was put into it."""

    path: str
    frames: list[np.ndarray]
    pts: list[int]
    time_base: Fraction
    fps: Fraction
    extra: dict = field(default_factory=dict)


def make_clip(path: str, *, width: int = 64, height: int = 48, frames: int = 12, fps: Fraction = Fraction(25),
              time_base: Fraction = Fraction(1, 12800), pts: list[int] | None = None, codec: str = "libx264",
              pix_fmt: str = "yuv420p", rotation: int = 0, sar: Fraction | None = None,
              colour: dict | None = None, audio: bool = False, subtitle: str | None = None,
              deep: bool = False, container_options: dict | None = None) -> Clip:
    """Write a small clip; colour = dict(range=, primaries=, trc=, space=) of FFmpeg enum ints."""
    if pts is None:
        step = round(1 / (fps * time_base))
        pts = [i * step for i in range(frames)]
    images = [pattern(i, width, height, deep=deep) for i in range(len(pts))]
    out = av.open(path, "w", options=container_options or {})
    options = {"preset": "ultrafast", "crf": "10"} if codec == "libx264" else {}
    video = out.add_stream(codec, rate=fps, options=options)
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    video.codec_context.time_base = time_base
    video.time_base = time_base
    if rotation:
        video.set_display_rotation(rotation)
    if sar:
        video.codec_context.sample_aspect_ratio = sar
    space, rng = Colorspace.ITU601, None
    if colour:
        ctx = video.codec_context
        ctx.color_range, ctx.color_primaries = colour["range"], colour["primaries"]
        ctx.color_trc, ctx.colorspace = colour["trc"], colour["space"]
        rng = colour["range"]
        space = {1: Colorspace.ITU709, 5: Colorspace.ITU601, 6: Colorspace.ITU601}[colour["space"]]
    audio_stream = subtitle_stream = None
    if audio:
        audio_stream = out.add_stream("aac", rate=48000)
        audio_stream.layout = "mono"
    if subtitle:
        subtitle_stream = out.add_stream(subtitle)
        subtitle_stream.codec_context.subtitle_header = ASS_HEADER
    for image, p in zip(images, pts):
        frame = av.VideoFrame.from_ndarray(image, format="rgb48le" if deep else "rgb24")
        frame = frame.reformat(format=pix_fmt, dst_colorspace=space, dst_color_range=rng)
        if colour:
            frame.color_primaries, frame.color_trc = colour["primaries"], colour["trc"]
        frame.pts, frame.time_base = p, time_base
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    seconds = float((pts[-1] - pts[0]) * time_base) + 0.1
    if audio_stream is not None:
        _write_sine(out, audio_stream, seconds)
    if subtitle_stream is not None:
        _write_subtitles(out, subtitle_stream)
    out.close()
    return Clip(path, images, list(pts), time_base, fps)


def _write_sine(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = 48000
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    for start in range(0, samples.shape[1], 1024):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="flt",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = rate, start
        out.mux(stream.encode(chunk))
    out.mux(stream.encode(None))


def _write_subtitles(out: av.container.OutputContainer, stream: av.stream.Stream) -> None:
    for i, text in enumerate(SUBTITLE_TEXTS):
        start_ms = i * 200
        cue = av.subtitles.subtitle.SubtitleSet.create(b"0,0,Default,,0,0,0,," + text, 0, 150, pts=start_ms * 1000)
        packet = stream.codec_context.encode_subtitle(cue)
        packet.stream = stream
        packet.time_base = Fraction(1, 1000)
        packet.pts = packet.dts = start_ms
        packet.duration = 150
        out.mux(packet)


def packets_of(path: str, kind: str) -> list[tuple[bytes, float | None]]:
    """(payload, pts seconds) of every non-empty packet of the first stream of `kind`."""
    with av.open(path) as container:
        streams = [s for s in container.streams if s.type == kind]
        if not streams:
            return []
        return [(bytes(p), float(p.pts * p.time_base) if p.pts is not None else None)
                for p in container.demux(streams[0]) if p.size]


# Distinctive colour tags (not what an untagged source would get by default): full range,
# BT.470BG primaries, SMPTE 170M transfer, BT.470BG matrix.
TAGS = {"range": 2, "primaries": 5, "trc": 6, "space": 5}


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    """All synthetic clips, generated once per test session (about a second in total)."""
    d = tmp_path_factory.mktemp("media")

    def p(name: str) -> str:
        return os.path.join(d, name)

    clips = {
        "tagged": make_clip(p("tagged.mp4"), frames=12, colour=TAGS, audio=True, subtitle="mov_text"),
        "rotated": make_clip(p("rotated.mp4"), frames=8, rotation=90),
        "vfr": make_clip(p("vfr.mp4"), pts=[0, 512, 1500, 3000, 3100, 6000, 9000, 9500, 12345, 12800],
                         audio=True),
        "tenbit": make_clip(p("tenbit.mkv"), frames=8, codec="ffv1", pix_fmt="yuv420p10le", deep=True),
        "sar": make_clip(p("sar.mp4"), frames=8, sar=Fraction(4, 3)),
        "odd": make_clip(p("odd.mp4"), width=63, height=47, frames=8, pix_fmt="yuv444p"),
        "srt": make_clip(p("srt.mkv"), frames=10, audio=True, subtitle="srt"),
        "long": make_clip(p("long.mp4"), frames=30, container_options={"movflags": "faststart"}),
        "long_mkv": make_clip(p("long.mkv"), frames=100),
    }
    return clips


@pytest.fixture(scope="session")
def audio_only(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("audio") / "tone.m4a")
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        _write_sine(out, stream, 0.5)
    return path


@pytest.fixture(scope="session")
def zero_frames(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Matroska file that declares a video stream but holds only audio packets."""
    path = str(tmp_path_factory.mktemp("zero") / "empty_video.mkv")
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        _write_sine(out, stream, 0.5)
    return path


@pytest.fixture(scope="session")
def colour_tags() -> dict[str, int]:
    return dict(TAGS)


@pytest.fixture(scope="session")
def read_packets():
    """packets_of(path, kind) for tests (test modules cannot import conftest)."""
    return packets_of
