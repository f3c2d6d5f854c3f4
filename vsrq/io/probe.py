"""Read what the rest of vsrq needs to know about an input video, without decoding all of it.

Everything a later stage must preserve (timing, aspect, colour tags, companion streams) is
collected here once, so the writer can be configured from a single `VideoInfo`.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import av.container
import av.logging
import av.stream
import av.video.stream

from vsrq.errors import InputError
from vsrq.io import colour

# How many packets probe() may demux while looking for the first picture (rotation and the
# real pixel format live on decoded frames); generous for long GOPs with leading junk.
_MAX_PROBE_PACKETS = 2000
_HMS = re.compile(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$")

# Largest input vsrq accepts, checked on the header before a frame is decoded (a hostile header can
# claim a picture of hundreds of megabytes that FFmpeg would allocate). A side over 16384 px can
# never give an output: the encoders vsrq offers stop there (libx264 fails to open at 16386 px,
# SVT-AV1 says "Source Width must be less than or equal to 16384"). The area limit is the largest
# frame any H.264 or HEVC level defines (8192x4352, level 6.2); even its x4 output is past what the
# encoders take, so nothing larger is worth decoding.
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 4352
# AVFieldOrder values that mean interlaced, by the field shown first (TT, BB, TB, BT: coded, then
# displayed first); 0 is unknown, 1 progressive.
_INTERLACED_FIELD_ORDERS = {2: "top field first", 3: "bottom field first", 4: "bottom field first",
                            5: "top field first"}


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
    # What the user should be told about this input (interlaced, alpha dropped, guessed rate);
    # probe() only collects them, the reader logs them once, so probing twice never repeats one.
    notes: tuple[str, ...] = ()

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


def quiet_ffmpeg() -> None:
    """Keep FFmpeg's own log lines off stderr, where only vsrq's one-line messages belong.

    VSRQ_DEBUG=1 leaves whatever level was set, so FFmpeg's view can still be seen."""
    if not os.environ.get("VSRQ_DEBUG"):
        av.logging.set_level(None)


def _check_is_file(p: str) -> None:
    """One-line reasons for paths that are not regular files; a FIFO would block av.open forever."""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except OSError as err:
        raise InputError(f"{p}: cannot be read ({describe_error(err)})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: is a directory, not a video file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{p}: is not a regular file (a pipe, device or socket); save the video to a file first")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied")
    if os.path.getsize(p) == 0:
        raise InputError(f"{p}: file is empty")


def open_input(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a media file for reading, turning every failure into a one-line InputError."""
    p = os.fspath(path)
    _check_is_file(p)
    quiet_ffmpeg()
    try:
        return av.open(p, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: not a readable media file, or truncated ({describe_error(err)})") from None


def check_size(width: int, height: int, path: str) -> None:
    """InputError for pictures past MAX_SIDE or MAX_PIXELS (see there why); 0 means "not known yet"."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"{path}: picture size {width}x{height} is too large; vsrq takes at most "
                         f"{MAX_SIDE} pixels on a side and {MAX_PIXELS / 1e6:.1f} megapixels (8192x4352)")


def select_video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The main video stream: the first one that is not cover art (attached picture) and can be decoded."""
    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    for stream in candidates:
        if stream.codec_context is not None:  # None: FFmpeg has no decoder for what the header names
            return stream
    if candidates:
        raise InputError(f"{path}: no decoder for its video codec (an unsupported codec, or a damaged header)")
    raise InputError(f"{path}: no video stream (audio-only or data file)")


def decode_first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                       path: str) -> av.VideoFrame:
    """First decodable picture; rotation and the true pixel format are only known from it.

    Packets that fail to decode are passed over: whether damage is fatal is the reader's call
    (--on-error), and it meets the same packets again with their position.
    """
    error: BaseException | None = None
    packets = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except (av.FFmpegError, ValueError) as err:
                error, frames = err, []
            if frames:
                return frames[0]
            packets += 1
            if packets >= _MAX_PROBE_PACKETS:
                break
    except (av.FFmpegError, OSError, ValueError) as err:
        error = err
    if error is not None:
        raise InputError(f"{path}: damaged or truncated video data before the first frame ({describe_error(error)})")
    raise InputError(f"{path}: no video frames (the video stream is empty or undecodable)")


def _fps(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    return None


def _notes(path: str, stream: av.video.stream.VideoStream, first: av.VideoFrame, fps: Fraction | None) -> tuple[str, ...]:
    """What is unusual about this input and what vsrq does about it, one line each."""
    notes = []
    if fps is None:
        notes.append(f"{path}: frame rate unknown, assuming 25 fps")
    field_order = _INTERLACED_FIELD_ORDERS.get(stream.codec_context.field_order)
    if field_order or first.interlaced_frame:
        notes.append(f"{path}: interlaced video ({field_order or 'field order unknown'}); frames are upscaled "
                     "as they are, so combing stays: deinterlace first (e.g. ffmpeg -vf bwdif) for a clean result")
    if any(c.is_alpha for c in first.format.components):
        notes.append(f"{path}: the alpha channel (transparency) is dropped; the output is opaque")
    return tuple(notes)


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
        check_size(ctx.width, ctx.height, p)  # as declared: before a frame of that size is decoded
        first = decode_first_frame(container, stream, p)
        check_size(first.width, first.height, p)
        fps = _fps(stream)
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
            fps=fps or Fraction(25),
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
            notes=_notes(p, stream, first, fps),
        )
    finally:
        container.close()


def _tag(frame_value: int, stream_value: int) -> int:
    """Prefer the decoded frame's colour tag; fall back to the stream's when the frame has none."""
    return frame_value if frame_value != colour.UNSPECIFIED else stream_value
