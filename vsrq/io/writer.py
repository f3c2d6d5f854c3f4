"""Encode RGB frames to a video file that appears at its path only once it is complete.

Video is encoded into a hidden temp file beside the target; on close the source's audio and
subtitle packets are copied in (remux.py) and the result is renamed onto the target. Any
failure, or a writer dropped without close(), removes every temporary file.

Size rule: chroma-subsampled formats (yuv420p, the default) need even width/height. Rather than
silently pad or crop, the constructor raises OutputError for odd sizes with such a format; odd
sizes are accepted with a non-subsampled pix_fmt such as yuv444p.

Colour rule: range, primaries, transfer and matrix are copied from `source`. When the source
leaves the matrix or range unspecified, the writer still has to pick one to convert RGB to YUV,
so it tags what it used (BT.709 from 720 lines up, else BT.601; limited range) instead of leaving
players to guess differently for the new, larger size.
"""

from __future__ import annotations

import logging
import os
import weakref
from fractions import Fraction
from types import TracebackType

import av
import av.container
import av.video.stream
import numpy as np

from vsrq.errors import OutputError
from vsrq.io import colour, encoders, remux
from vsrq.io.output_path import check_target, make_temp_beside, publish, remove_quietly
from vsrq.io.probe import VideoInfo, describe_error

log = logging.getLogger(__name__)


class VideoWriter:
    """Context manager: `write()` upright RGB frames, `close()` (or leaving `with`) publishes the file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: Fraction,
        time_base: Fraction | None = None,
        source: VideoInfo | None = None,
        codec: str = "libx264",
        crf: int | None = 18,
        preset: str | None = "medium",
        pix_fmt: str | None = None,
        overwrite: bool = False,
        sample_aspect_ratio: Fraction | None = None,
        copy_streams: bool = True,
    ) -> None:
        self._temps: list[str] = []
        # Runs at garbage collection or interpreter exit if close()/abort() never did.
        self._finalizer = weakref.finalize(self, remove_quietly, self._temps)
        self.target = check_target(path, overwrite=overwrite, inputs=(source.path,) if source else ())
        self._overwrite = overwrite
        self.source = source
        self._copy_streams = copy_streams
        # (pts, dts, duration) in time_base, in mux (decode) order: the segment path puts them back exactly
        self.packet_log: list[tuple[int | None, int | None, int | None]] = []
        if width <= 0 or height <= 0:
            raise OutputError(f"{self.target}: invalid output size {width}x{height}")
        if not fps or fps <= 0:
            raise OutputError(f"{self.target}: invalid frame rate {fps}")
        self.width, self.height, self.fps = int(width), int(height), Fraction(fps)
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps

        encoders.check_encoder(codec)
        self.codec = codec
        self.pix_fmt = pix_fmt or encoders.default_pix_fmt(codec, source.bit_depth if source else 8)
        encoders.check_pix_fmt(codec, self.pix_fmt)
        if source is not None and source.bit_depth > 8 and colour.bit_depth(self.pix_fmt) <= 8 and pix_fmt is None:
            log.warning("%s has no 10-bit 4:2:0 format; writing 8-bit %s", codec, self.pix_fmt)
        self._check_even_size()
        settings = encoders.encoder_settings(codec, crf, preset)
        self._set_colour(source)
        self.sample_aspect_ratio = Fraction(
            sample_aspect_ratio if sample_aspect_ratio is not None
            else (source.sample_aspect_ratio if source else 1))

        self._frames_written = 0
        self._last_pts: int | None = None
        self._durations: dict[int, int] = {}  # pts -> duration, applied to packets before muxing
        self._closed = False
        self._video_temp = make_temp_beside(self.target, "video")
        self._temps.append(self._video_temp)
        try:
            self._container, self._stream = self._open_encoder(settings)
        except BaseException:
            self.abort()
            raise

    # -- set-up -------------------------------------------------------------------------------

    def _check_even_size(self) -> None:
        even_w, even_h = colour.needs_even_size(self.pix_fmt)
        if (even_w and self.width % 2) or (even_h and self.height % 2):
            raise OutputError(
                f"{self.target}: {self.pix_fmt} needs even width and height, got {self.width}x{self.height}; "
                "use an even size or pix_fmt yuv444p")

    def _set_colour(self, source: VideoInfo | None) -> None:
        """Keep the source's tags; untagged sources get explicit tags for the matrix actually used."""
        if colour.is_rgb(self.pix_fmt):
            self.colorspace, self.color_range = colour.SPACE_RGB, colour.RANGE_FULL
        else:
            known = source.colorspace if source else None
            self.colorspace = known if known is not None and known != colour.SPACE_RGB \
                else colour.guessed_colorspace(self.height)
            self.color_range = (source.color_range if source and source.color_range else colour.RANGE_LIMITED)
        self.color_primaries = (source.color_primaries if source else None) or colour.UNSPECIFIED
        self.color_trc = (source.color_trc if source else None) or colour.UNSPECIFIED
        self._matrix = None if colour.is_rgb(self.pix_fmt) else colour.sws_matrix(self.colorspace, self.height)

    def _open_encoder(self, settings: encoders.EncoderSettings) -> tuple[av.container.OutputContainer,
                                                                          av.video.stream.VideoStream]:
        try:
            container = av.open(self._video_temp, mode="w")
        except (av.FFmpegError, OSError, ValueError) as err:
            raise OutputError(f"{self.target}: cannot write this container type ({describe_error(err)})") from None
        try:
            stream = container.add_stream(self.codec, rate=self.fps, options=settings.options)
            ctx = stream.codec_context
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
            ctx.time_base = self.time_base
            stream.time_base = self.time_base
            ctx.framerate = self.fps
            ctx.sample_aspect_ratio = self.sample_aspect_ratio
            ctx.color_range = self.color_range
            ctx.colorspace = self.colorspace
            ctx.color_primaries = self.color_primaries
            ctx.color_trc = self.color_trc
            ctx.thread_count = 0
            if settings.bit_rate is not None:
                ctx.bit_rate = settings.bit_rate
            container.start_encoding()  # opens the encoder now, so bad settings fail here, not mid-job
        except (av.FFmpegError, OSError, ValueError) as err:
            container.close()
            raise OutputError(
                f"{self.target}: cannot set up {self.codec} ({self.width}x{self.height} {self.pix_fmt}, "
                f"container {container.format.name}): {describe_error(err)}") from None
        return container, stream

    # -- writing ------------------------------------------------------------------------------

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def frames_written(self) -> int:
        return self._frames_written

    def write(self, image: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Encode one (H, W, 3) RGB frame. pts/duration are in `time_base`; None means "next at fps"."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        frame = self._to_video_frame(image)
        pts = self._next_pts(pts)
        frame.pts = pts
        frame.time_base = self.time_base
        self._durations[pts] = duration if duration else self._nominal_duration()
        self._mux(self._stream.encode(frame))
        self._last_pts = pts
        self._frames_written += 1

    def _to_video_frame(self, image: np.ndarray) -> av.VideoFrame:
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != (self.height, self.width):
            raise ValueError(f"expected an image of shape ({self.height}, {self.width}, 3), got {image.shape}")
        if image.dtype == np.uint8:
            rgb_format = "rgb24"
        elif image.dtype == np.uint16:
            rgb_format = "rgb48le"
            image = image.astype("<u2", copy=False)
        else:
            raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=rgb_format)
        out = frame.reformat(format=self.pix_fmt, dst_colorspace=self._matrix,
                             dst_color_range=None if self._matrix is None else self.color_range)
        out.color_range = self.color_range
        out.colorspace = self.colorspace
        out.color_primaries = self.color_primaries
        out.color_trc = self.color_trc
        return out

    def _nominal_duration(self) -> int:
        return max(1, round(1 / (self.fps * self.time_base)))

    def _next_pts(self, pts: int | None) -> int:
        if pts is None:
            return 0 if self._last_pts is None else self._last_pts + self._nominal_duration()
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: got {pts} after {self._last_pts}")
        return pts

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            duration = self._durations.pop(packet.pts, None) if packet.pts is not None else None
            if duration:
                packet.duration = duration  # encoders drop frame durations; the last one sets the file's length
            if packet.size:
                self.packet_log.append((packet.pts, packet.dts, packet.duration or None))
            try:
                self._container.mux(packet)
            except (av.FFmpegError, OSError) as err:
                raise OutputError(f"{self.target}: writing failed ({describe_error(err)})") from None

    # -- finishing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the encoder, copy audio/subtitles, and move the finished file onto the target."""
        if self._closed:
            return
        try:
            if self._frames_written == 0:
                raise OutputError(f"{self.target}: no frames were written")
            self._mux(self._stream.encode(None))
            self._closed = True
            format_name = self._container.format.name
            try:
                self._container.close()  # writes the trailer: a full disk can show up only here
            except (av.FFmpegError, OSError) as err:
                raise OutputError(f"{self.target}: writing failed ({describe_error(err)})") from None
            publish_video(self._video_temp, self.source if self._copy_streams else None, self.target, format_name,
                          overwrite=self._overwrite, temps=self._temps)
        except BaseException:
            self.abort()
            raise
        finally:
            remove_quietly(self._temps)

    def abort(self) -> None:
        """Stop without publishing anything; removes all temporary files. Safe to call twice."""
        self._closed = True
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # the file is being thrown away; a failing trailer does not matter
                pass
        remove_quietly(self._temps)


def publish_video(video: str, source: VideoInfo | None, target: str, format_name: str, *, overwrite: bool,
                  temps: list[str]) -> None:
    """Put a finished video-only temp file at `target`: with the source's audio and subtitle
    streams copied in (into another temp, listed in `temps`) when there are any, then renamed.
    The caller removes whatever is left in `temps`."""
    final = video
    companions = list(source.audio_streams + source.subtitle_streams) if source else []
    if companions:
        final = make_temp_beside(target, "mux")
        temps.append(final)
        remux.remux(video, source.path, companions, final, format_name)  # type: ignore[union-attr]
    if not overwrite and os.path.lexists(target):
        raise OutputError(f"{target}: file appeared while encoding (pass overwrite to replace it)")
    publish(final, target)
    temps.remove(final)
