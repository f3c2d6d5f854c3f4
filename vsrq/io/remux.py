"""Put the newly encoded video together with the source's audio and subtitle packets, unchanged.

Audio is never re-encoded: packets are copied byte for byte. PyAV does the copy; the bundled
ffmpeg is the fallback for streams PyAV cannot place (it inserts bitstream filters, for example);
a stream neither can put into the target container is dropped with a warning rather than
failing a job whose video is fine.
"""

from __future__ import annotations

import heapq
import io
import logging
import subprocess
from typing import Iterable, Iterator

import av
import av.container
import av.stream

from vsrq.errors import OutputError

log = logging.getLogger(__name__)

_FFMPEG_TIMEOUT_S = 3600
_DRY_RUN_PACKETS = 20


def _timed_packets(container: av.container.InputContainer, streams: list[av.stream.Stream],
                   targets: dict[int, av.stream.Stream], order: int) -> Iterator[tuple[float, int, av.Packet]]:
    """(seconds, tie-breaker, packet) in demux order, with the packet pointed at its output stream."""
    for packet in container.demux(streams):
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None or packet.time_base is None:
            if packet.size:
                log.debug("skipping a packet without timestamps in stream %s", packet.stream.index)
            continue  # flush packets at the end of each stream, or packets that cannot be placed
        seconds = float(ts) * float(packet.time_base)
        packet.stream = targets[packet.stream.index]
        yield seconds, order, packet


def _copy_stream_attributes(source: av.stream.Stream, target: av.stream.Stream) -> None:
    """Language/title tags and default/forced flags travel with the packets."""
    for key, value in source.metadata.items():
        target.metadata[key] = value
    target.disposition = source.disposition


def remux_pyav(video_path: str, source_path: str, indices: Iterable[int], out_path: str) -> None:
    """Copy video_path's video and the source's `indices` streams into out_path, interleaved by dts."""
    with av.open(video_path) as vin, av.open(source_path) as sin, av.open(out_path, "w") as out:
        video = vin.streams.video[0]
        video_out = out.add_stream_from_template(video, opaque=True)
        companions = [sin.streams[i] for i in indices]
        companion_out = {}
        for stream in companions:
            companion_out[stream.index] = out.add_stream_from_template(stream)
            _copy_stream_attributes(stream, companion_out[stream.index])
        merged: Iterable[tuple[float, int, av.Packet]] = _timed_packets(vin, [video], {video.index: video_out}, 0)
        if companions:
            merged = heapq.merge(merged, _timed_packets(sin, companions, companion_out, 1), key=lambda t: t[:2])
        for _, _, packet in merged:
            out.mux(packet)


def remux_ffmpeg(video_path: str, source_path: str, indices: Iterable[int], out_path: str) -> None:
    """The same copy done by the ffmpeg binary that ships with imageio-ffmpeg."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-i", video_path, "-i", source_path, "-map", "0:v:0"]
    for index in indices:
        cmd += ["-map", f"1:{index}"]
    cmd += ["-c", "copy", "-copyts", out_path]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=_FFMPEG_TIMEOUT_S)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with code {result.returncode}")


def _pyav_accepts(source_path: str, index: int, format_name: str) -> bool:
    """Dry run: can PyAV put this one stream (header and first packets) into the target format?"""
    try:
        with av.open(source_path) as sin, av.open(io.BytesIO(), "w", format=format_name) as out:
            stream = sin.streams[index]
            target = out.add_stream_from_template(stream)
            for n, (_, _, packet) in enumerate(_timed_packets(sin, [stream], {index: target}, 0)):
                out.mux(packet)
                if n + 1 >= _DRY_RUN_PACKETS:
                    break
        return True
    except Exception as err:  # any refusal means "cannot copy this stream"
        log.debug("dry run of stream %d into %s failed: %s", index, format_name, err)
        return False


def _attempt(copy: object, video_path: str, source_path: str, indices: list[int], out_path: str) -> bool:
    try:
        copy(video_path, source_path, indices, out_path)  # type: ignore[operator]
        return True
    except Exception as err:  # noqa: BLE001 - every failure leads to the next fallback
        log.debug("%s with streams %s failed: %s", getattr(copy, "__name__", copy), indices, err)
        return False


def _describe(source_path: str, index: int) -> str:
    try:
        with av.open(source_path) as sin:
            stream = sin.streams[index]
            return f"{stream.type} stream #{index} ({stream.codec_context.name})"
    except Exception:
        return f"stream #{index}"


def remux(video_path: str, source_path: str, indices: list[int], out_path: str, format_name: str) -> list[int]:
    """Write video + copied streams to out_path; returns the source stream indices that made it."""
    if _attempt(remux_pyav, video_path, source_path, indices, out_path):
        return indices
    if _attempt(remux_ffmpeg, video_path, source_path, indices, out_path):
        return indices
    keep = [i for i in indices if _pyav_accepts(source_path, i, format_name)]
    for index in indices:
        if index not in keep:
            log.warning("%s: %s cannot be copied into %s output; dropping it",
                        source_path, _describe(source_path, index), format_name)
    if keep and (_attempt(remux_pyav, video_path, source_path, keep, out_path)
                 or _attempt(remux_ffmpeg, video_path, source_path, keep, out_path)):
        return keep
    if keep:
        log.warning("%s: could not copy audio/subtitle streams %s; writing video only", source_path, keep)
    try:
        remux_pyav(video_path, source_path, [], out_path)
    except Exception as err:
        raise OutputError(f"{out_path}: could not finalise the output container ({err})") from None
    return []
