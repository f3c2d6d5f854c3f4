"""Stream decoded pictures as upright RGB arrays, one at a time, with their original timestamps.

Frames are yielded lazily so a two-hour video never has to fit in memory; pts are passed through
untouched so variable-frame-rate timing can be written back exactly (only timestamps that are
missing, repeated or go backwards are replaced, because no encoder can take those).

Damaged input follows a policy (`on_error`): "stop" raises InputError at the first damaged
packet, concealed frame or missing tail, naming the frame; "skip" decodes what is valid, keeps
going and reports what was lost, one warning line per kind of loss.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, Literal, get_args

import av
import av.container
import av.video.stream
import numpy as np

from vsrq.errors import InputError
from vsrq.io import colour
from vsrq.io.probe import VideoInfo, describe_error, open_input, probe, select_video_stream
from vsrq.io.truncation import missing_tail

log = logging.getLogger(__name__)

OnError = Literal["stop", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = get_args(OnError)
_SKIP_HINT = "use --on-error skip to upscale the readable part"


def _checked(policy: str) -> OnError:
    if policy not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {policy!r}")
    return policy  # type: ignore[return-value]


@dataclass(frozen=True)
class Frame:
    """One decoded picture: (H, W, 3) RGB, uint8 for 8-bit sources, uint16 (rgb48) above."""

    image: np.ndarray
    pts: int  # in the video stream's time_base, as decoded; strictly increasing (see _pts)
    time: float  # seconds
    index: int  # 0-based position in decode (presentation) order
    duration: int | None = None  # in time_base; None when the container does not say


@dataclass
class _Pass:
    """State of one pass over the file: position, timestamps handed out, and what was lost (skip)."""

    index: int = 0  # of the next frame to yield
    end_time: float = 0.0  # seconds, end of the last frame yielded
    last_pts: int | None = None
    retimed: int = 0  # frames whose timestamp had to be replaced
    undecodable: int = 0  # packets the decoder rejected
    concealed: int = 0  # frames the decoder output with errors papered over
    first_damage: int | None = None  # frame index where the first problem showed
    unreadable: str | None = None  # why demuxing ended early, if it did
    truncated: str | None = None  # why the file looks cut short, if it does
    resized_from: tuple[int, int] | None = None  # last picture size that differed from the first


class VideoReader:
    """Context manager that decodes the main video stream of `path` frame by frame.

    `on_error` ("stop" or "skip") says what damaged data does.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0, on_error: str = "stop") -> None:
        self.on_error: OnError = _checked(on_error)
        self.info: VideoInfo = probe(path)
        self._threads = threads
        self._container: av.container.InputContainer | None = None
        self._rgb_format = "rgb24" if self.info.bit_depth <= 8 else "rgb48le"
        self._is_rgb = colour.is_rgb(self.info.pix_fmt)
        self._matrix = None if self._is_rgb else colour.sws_matrix(self.info.colorspace, self.info.coded_height)
        self._step = max(1, round(1 / (self.info.fps * self.info.time_base)))  # one frame, in time_base
        for note in self.info.notes:
            log.warning("%s", note)

    @property
    def path(self) -> str:
        return self.info.path

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the open file; safe to call twice."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def frames(self) -> Iterator[Frame]:
        """Yield every frame in presentation order. Raises InputError on damaged data (per `on_error`) or no frames."""
        self.close()  # a second call restarts from the beginning
        container = open_input(self.path)
        self._container = container
        stream = select_video_stream(container, self.path)
        stream.thread_type = "AUTO"  # frame + slice threads: the decoder is often the bottleneck
        stream.thread_count = self._threads
        state = _Pass()
        try:
            for vframe in self._decoded(container, stream, state):
                if state.index == 0:
                    self._check_head(stream, vframe)
                frame = self._to_frame(vframe, state)
                if frame is None:  # could not be converted; skipped under on_error="skip"
                    continue
                state.end_time = frame.time + (float(frame.duration * self.info.time_base) if frame.duration else 0.0)
                yield frame
                state.index += 1
            if state.index == 0:
                raise InputError(f"{self.path}: no video frames could be decoded")
            self._check_tail(container, stream, state)
            self._report(state)
        finally:
            if self._container is container:
                self.close()

    # -- damage policy --------------------------------------------------------------------------

    def _decoded(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 state: _Pass) -> Iterator[av.VideoFrame]:
        """Decoded pictures; damaged packets and concealed frames raise (stop) or are counted (skip)."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)  # the final empty packet flushes the decoder
            except StopIteration:
                return
            except (av.FFmpegError, OSError, ValueError) as err:
                self._damaged(state, f"unreadable from here on: {describe_error(err)}")
                state.unreadable = describe_error(err)
                # a demuxer that failed once cannot be trusted to find the next packet, but the
                # (threaded) decoder still holds good pictures of the packets it already had
                try:
                    yield from stream.decode(None)
                except (av.FFmpegError, OSError, ValueError):
                    pass
                return
            try:
                decoded = stream.decode(packet)
            except (av.FFmpegError, OSError, ValueError) as err:
                where = f", packet at byte {packet.pos}" if packet.pos is not None and packet.pos >= 0 else ""
                self._damaged(state, f"{describe_error(err)}{where}")
                state.undecodable += 1
                continue
            for vframe in decoded:
                if vframe.is_corrupt:
                    self._damaged(state, "the decoder had to conceal errors in it")
                    state.concealed += 1
                yield vframe

    def _damaged(self, state: _Pass, why: str) -> None:
        """Stop, naming the frame; or (skip) remember where the first damage was and go on."""
        if self.on_error == "stop":
            raise InputError(f"{self.path}: damaged or truncated video data at frame {state.index} ({why}); {_SKIP_HINT}")
        if state.first_damage is None:
            state.first_damage = state.index

    def _check_head(self, stream: av.video.stream.VideoStream, first: av.VideoFrame) -> None:
        """Warn when the first picture comes later than the stream starts: decoders silently drop
        pictures that refer to a keyframe before the cut, so a file cut mid-GOP loses its first frames."""
        if first.pts is None or stream.start_time is None:
            return
        lost = round((first.pts - stream.start_time) / self._step)
        if lost >= 1:
            log.warning("%s: the first %d frame(s) cannot be decoded (the file starts after a keyframe); "
                        "the output begins %.2f s later, at the first decodable picture", self.path, lost,
                        float((first.pts - stream.start_time) * self.info.time_base))

    def _check_tail(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    state: _Pass) -> None:
        """A file that ends before its header says it should is truncated, though it decoded cleanly."""
        missing = None if state.unreadable else missing_tail(container, stream, state.end_time)
        if missing and self.on_error == "stop":
            raise InputError(f"{self.path}: file is truncated after frame {state.index - 1} ({missing}); {_SKIP_HINT}")
        state.truncated = missing

    def _report(self, state: _Pass) -> None:
        """One warning line per kind of loss, after the last frame; "stop" only gets here undamaged."""
        cut = state.truncated or state.unreadable
        if cut:
            log.warning("%s: file is truncated after frame %d (%s); kept the %d frames before the cut",
                        self.path, state.index - 1, cut, state.index)
        if state.undecodable or state.concealed:
            log.warning("%s: damaged video data from frame %d on: %d packet(s) could not be decoded, %d frame(s) "
                        "were patched up by the decoder; kept going, %d frames read",
                        self.path, state.first_damage, state.undecodable, state.concealed, state.index)
        if state.retimed:
            log.warning("%s: %d frame(s) had repeated or backward timestamps; each was moved one frame after "
                        "the previous one", self.path, state.retimed)

    # -- conversion -----------------------------------------------------------------------------

    def _range(self, vframe: av.VideoFrame) -> int | None:
        """Source range for swscale: untagged YUV is limited range, RGB has no range to convert."""
        if self._is_rgb:
            return None
        return vframe.color_range or colour.RANGE_LIMITED

    def _pts(self, pts: int | None, state: _Pass) -> int:
        """The frame's pts, or one frame after the previous when it is missing or not after it.

        Encoders need strictly increasing timestamps; missing ones (raw streams) are not counted
        as retimed, repeated or backward ones (broken muxers) are.
        """
        if state.last_pts is not None and (pts is None or pts <= state.last_pts):
            state.retimed += pts is not None
            pts = state.last_pts + self._step
        elif pts is None:
            pts = 0
        state.last_pts = pts
        return pts

    def _size(self, vframe: av.VideoFrame, state: _Pass) -> dict[str, int]:
        """Reformat arguments that scale a picture of another size to the first one's: the model and
        the encoder take one size per video, and players show such streams scaled to one window too."""
        size = (self.info.coded_width, self.info.coded_height)
        if (vframe.width, vframe.height) == size:
            return {}
        if state.resized_from != (vframe.width, vframe.height):
            state.resized_from = (vframe.width, vframe.height)
            log.warning("%s: picture size changes from %dx%d to %dx%d at frame %d; scaling it back to %dx%d",
                        self.path, *size, vframe.width, vframe.height, state.index, *size)
        return {"width": size[0], "height": size[1]}

    def _to_frame(self, vframe: av.VideoFrame, state: _Pass) -> Frame | None:
        try:
            image = vframe.to_ndarray(
                format=self._rgb_format,
                src_colorspace=self._matrix,
                src_color_range=self._range(vframe),
                **self._size(vframe, state),
            )
        except (av.FFmpegError, ValueError) as err:
            self._damaged(state, f"picture cannot be converted: {describe_error(err)}")  # raises under "stop"
            state.undecodable += 1
            return None
        if self.info.rotation:
            image = np.ascontiguousarray(np.rot90(image, k=self.info.rotation // 90))
        pts = self._pts(vframe.pts, state)
        time = float(pts * self.info.time_base)
        return Frame(image=image, pts=pts, time=time, index=state.index, duration=vframe.duration or None)
