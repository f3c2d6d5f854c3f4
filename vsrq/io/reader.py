"""Stream decoded pictures as upright RGB arrays, one at a time, with their original timestamps.

Frames are yielded lazily so a two-hour video never has to fit in memory; pts are passed through
untouched so variable-frame-rate timing can be written back exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import av
import av.container
import av.video.stream
import numpy as np

from vsrq.errors import InputError
from vsrq.io import colour
from vsrq.io.probe import VideoInfo, describe_error, open_input, probe, select_video_stream
from vsrq.io.truncation import missing_tail


@dataclass(frozen=True)
class Frame:
    """One decoded picture: (H, W, 3) RGB, uint8 for 8-bit sources, uint16 (rgb48) above."""

    image: np.ndarray
    pts: int | None  # in the video stream's time_base, as decoded
    time: float  # seconds
    index: int  # 0-based position in decode (presentation) order
    duration: int | None = None  # in time_base; None when the container does not say


class VideoReader:
    """Context manager that decodes the main video stream of `path` frame by frame."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        self.info: VideoInfo = probe(path)
        self._threads = threads
        self._container: av.container.InputContainer | None = None
        self._rgb_format = "rgb24" if self.info.bit_depth <= 8 else "rgb48le"
        self._is_rgb = colour.is_rgb(self.info.pix_fmt)
        self._matrix = None if self._is_rgb else colour.sws_matrix(self.info.colorspace, self.info.coded_height)

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
        """Yield every frame in presentation order. Raises InputError on damaged data or no frames."""
        self.close()  # a second call restarts from the beginning
        container = open_input(self.path)
        self._container = container
        stream = select_video_stream(container, self.path)
        stream.thread_type = "AUTO"  # frame + slice threads: the decoder is often the bottleneck
        stream.thread_count = self._threads
        packets = container.demux(stream)
        index = 0
        end_time = 0.0
        try:
            while True:
                try:
                    packet = next(packets)  # the final empty packet flushes the decoder
                    decoded = stream.decode(packet)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError, ValueError) as err:
                    raise self._damaged(index, err) from None
                for vframe in decoded:
                    frame = self._to_frame(vframe, index)
                    end_time = frame.time + (float(frame.duration * self.info.time_base) if frame.duration else 0.0)
                    yield frame
                    index += 1
            if index == 0:
                raise InputError(f"{self.path}: no video frames could be decoded")
            missing = missing_tail(container, stream, end_time)
            if missing:
                raise InputError(f"{self.path}: file is truncated after frame {index - 1} ({missing})")
        finally:
            if self._container is container:
                self.close()

    def _range(self, vframe: av.VideoFrame) -> int | None:
        """Source range for swscale: untagged YUV is limited range, RGB has no range to convert."""
        if self._is_rgb:
            return None
        return vframe.color_range or colour.RANGE_LIMITED

    def _damaged(self, index: int, err: BaseException) -> InputError:
        return InputError(f"{self.path}: damaged or truncated video data at frame {index} ({describe_error(err)})")

    def _to_frame(self, vframe: av.VideoFrame, index: int) -> Frame:
        try:
            image = vframe.to_ndarray(
                format=self._rgb_format,
                src_colorspace=self._matrix,
                src_color_range=self._range(vframe),
            )
        except (av.FFmpegError, ValueError) as err:
            raise self._damaged(index, err) from None
        if self.info.rotation:
            image = np.ascontiguousarray(np.rot90(image, k=self.info.rotation // 90))
        return Frame(
            image=image,
            pts=vframe.pts,
            time=float(vframe.time) if vframe.time is not None else index / float(self.info.fps),
            index=index,
            duration=vframe.duration or None,
        )
