"""Notice files that end early although their headers promise more video.

Demuxers treat a cut-off file as a normal end of stream, so without this check a half-copied
download would be upscaled into a shorter video without any warning.
"""

from __future__ import annotations

import os

import av.container
import av.video.stream

from vsrq.io.probe import stream_duration

# Allowed gap between the promised and the decoded video length; generous, because track
# durations may include a trailing frame's duration or rounding of the container's clock.
_MIN_SLACK_S = 1.0
_SLACK_FRACTION = 0.05


def _index_end(stream: av.video.stream.VideoStream) -> int | None:
    """Byte offset just past the last sample the container's index points at (mp4/mov, avi...)."""
    end = None
    for entry in stream.index_entries:
        if entry.size > 0:
            stop = entry.pos + entry.size
            end = stop if end is None or stop > end else end
    return end


def missing_tail(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 decoded_end_s: float) -> str | None:
    """Why the file looks cut short after decoding up to `decoded_end_s` seconds, or None if it does not."""
    index_end = _index_end(stream)
    if index_end is not None:
        size = os.path.getsize(container.name)
        if index_end > size:
            return f"its index refers to {index_end} bytes, the file has {size}"
        return None
    expected = stream_duration(stream)
    if expected is None:
        return None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    got = decoded_end_s - start
    if expected - got > max(_MIN_SLACK_S, _SLACK_FRACTION * expected):
        return f"the header promises {expected:.2f} s of video, only {got:.2f} s could be read"
    return None
