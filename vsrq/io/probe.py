"""Read what the rest of vsrq needs to know about an input video, without decoding all of it.

Everything a later stage must preserve (timing, aspect, colour tags, companion streams) is
collected here once, so the writer can be configured from a single `VideoInfo`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import av.container
import av.stream
import av.video.stream

from vsrq.errors import InputError
from vsrq.io import colour

log = logging.getLogger(__name__)

# How many packets probe() may demux while looking for the first picture (rotation and the
# real pixel format live on decoded frames); generous for long GOPs with leading junk.
_MAX_PROBE_PACKETS = 2000
_HMS = re.compile(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class VideoInfo:
    """Facts about one input video. Sizes are in display orientation unless named `coded_`."""

    path: str
    container_format: str
    codec: str
    video_stream_index: int
    width: int  # after rotation: what the viewer sees
    height: int
    coded_width: int  # as stored in the stream, before rotation
    coded_height: int
    rotation: int  # 0/90/180/270: counter-clockwise turn that makes the stored picture upright
    fps: Fraction  # average frame rate
    time_base: Fraction  # of the video stream; frame pts are in this unit
    num_frames: int | None  # from the container index/header; None when it does not say
    duration: float | None  # seconds
    start_time: float | None  # seconds, of the video stream
    pix_fmt: str
    bit_depth: int
    sample_aspect_ratio: Fraction
    color_range: int | None  # FFmpeg AVColorRange, None when unspecified
    color_primaries: int | None
    color_trc: int | None
    colorspace: int | None  # AVColorSpace (the YUV matrix)
    audio_streams: tuple[int, ...] = ()  # container stream indices
    subtitle_streams: tuple[int, ...] = ()

    @property
    def num_audio_streams(self) -> int:
        return len(self.audio_streams)

    @property
    def num_subtitle_streams(self) -> int:
        return len(self.subtitle_streams)

    @property
    def estimated_num_frames(self) -> int | None:
        """Exact count when known, else duration x fps (for progress bars only)."""
        if self.num_frames is not None:
            return self.num_frames
        if self.duration is not None:
            return max(1, round(self.duration * self.fps))
        return None


def describe_error(err: BaseException) -> str:
    """One-line reason from an av/OS error, without FFmpeg's errno noise."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def open_input(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a media file for reading, turning every failure into a one-line InputError."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(f"{p}: file not found")
    if os.path.isdir(p):
        raise InputError(f"{p}: is a directory, not a video file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied")
    if os.path.getsize(p) == 0:
        raise InputError(f"{p}: file is empty")
    try:
        return av.open(p, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: not a readable media file, or truncated ({describe_error(err)})") from None


def select_video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The main video stream: the first one that is not cover art (attached picture)."""
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    raise InputError(f"{path}: no video stream (audio-only or data file)")


def decode_first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                       path: str) -> av.VideoFrame:
    """First decodable picture; rotation and the true pixel format are only known from it."""
    packets = 0
    try:
        for packet in container.demux(stream):
            frames = stream.decode(packet)
            if frames:
                return frames[0]
            packets += 1
            if packets >= _MAX_PROBE_PACKETS:
                break
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InputError(f"{path}: damaged or truncated video data before the first frame ({describe_error(err)})") from None
    raise InputError(f"{path}: no video frames (the video stream is empty or undecodable)")


def _fps(stream: av.video.stream.VideoStream, path: str) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    log.warning("%s: frame rate unknown, assuming 25 fps", path)
    return Fraction(25)


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def stream_duration(stream: av.stream.Stream) -> float | None:
    """Length of one stream from its header, or from the DURATION tag Matroska muxers write per track."""
    seconds = _seconds(stream.duration, stream.time_base)
    if seconds is not None:
        return seconds
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    match = _HMS.match(tag.strip()) if tag else None
    if not match:
        return None
    hours, minutes, secs = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Video length; the container's duration (which includes audio) is only the last resort."""
    seconds = stream_duration(stream)
    if seconds is None and container.duration is not None:
        seconds = container.duration / av.time_base
    return seconds if seconds is not None and seconds > 0 else None


def _streams_of_type(container: av.container.InputContainer, kind: str) -> Iterator[int]:
    return (s.index for s in container.streams if s.type == kind)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe `path`; raises InputError if it is not a video vsrq can read."""
    p = os.fspath(path)
    container = open_input(p)
    try:
        stream = select_video_stream(container, p)
        ctx = stream.codec_context
        if stream.time_base is None:
            raise InputError(f"{p}: video stream has no time base")
        first = decode_first_frame(container, stream, p)
        rotation = int(first.rotation or 0) % 360
        rotation = (round(rotation / 90) * 90) % 360  # display matrices can carry rounding noise
        coded_w, coded_h = first.width, first.height
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        pix_fmt = first.format.name
        return VideoInfo(
            path=p,
            container_format=container.format.name,
            codec=ctx.name,
            video_stream_index=stream.index,
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            fps=_fps(stream, p),
            time_base=Fraction(stream.time_base),
            num_frames=stream.frames or None,
            duration=_duration(container, stream),
            start_time=_seconds(stream.start_time, stream.time_base),
            pix_fmt=pix_fmt,
            bit_depth=colour.bit_depth(pix_fmt),
            sample_aspect_ratio=Fraction(stream.sample_aspect_ratio or ctx.sample_aspect_ratio or 1),
            color_range=colour.optional_tag(first.color_range or ctx.color_range, colour.RANGE_UNSPECIFIED),
            color_primaries=colour.optional_tag(_tag(first.color_primaries, ctx.color_primaries), colour.UNSPECIFIED),
            color_trc=colour.optional_tag(_tag(first.color_trc, ctx.color_trc), colour.UNSPECIFIED),
            colorspace=colour.optional_tag(_tag(first.colorspace, ctx.colorspace), colour.SPACE_UNSPECIFIED),
            audio_streams=tuple(_streams_of_type(container, "audio")),
            subtitle_streams=tuple(_streams_of_type(container, "subtitle")),
        )
    finally:
        container.close()


def _tag(frame_value: int, stream_value: int) -> int:
    """Prefer the decoded frame's colour tag; fall back to the stream's when the frame has none."""
    return frame_value if frame_value != colour.UNSPECIFIED else stream_value
