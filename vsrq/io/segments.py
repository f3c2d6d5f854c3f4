"""Join separately encoded video segments into one stream, then publish it with the source's audio.

Why segments: a long job writes its video as a series of small files, each complete on its own,
so a crash or Ctrl-C loses at most the segment being written and `--resume` starts after the last
complete one. Segments are NUT files, used as carriers of the encoded packets and the codec
parameters (NUT asks encoders for global headers, so the packets copy unchanged into MP4/MKV/MOV).
Every container rewrites timestamps on the way (NUT and MP4 shift them to avoid negative dts,
Matroska rounds to milliseconds, NUT stores no dts), so the writer's own (pts, dts, duration) of
each packet travel beside the segment, in the encoder's time base, and are put back here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from vsrq.errors import OutputError
from vsrq.io.output_path import make_temp_beside, remove_quietly
from vsrq.io.probe import VideoInfo, describe_error
from vsrq.io.writer import publish_video

SEGMENT_SUFFIX = ".nut"


@dataclass(frozen=True)
class Segment:
    """One finished segment file and (pts, dts, duration) of its packets in `time_base`, in file order."""

    path: str
    packets: Sequence[tuple[int | None, int | None, int | None]]
    time_base: Fraction


def _check_same_stream(first: av.video.stream.VideoStream, other: av.video.stream.VideoStream, path: str) -> None:
    a, b = first.codec_context, other.codec_context
    if (a.name, a.width, a.height, a.format.name if a.format else None, bytes(a.extradata or b"")) != \
            (b.name, b.width, b.height, b.format.name if b.format else None, bytes(b.extradata or b"")):
        raise OutputError(f"{path}: segment was encoded with other settings than the first one; "
                          "remove the work directory and start again")


def concat_segments(segments: Sequence[Segment], out_path: str) -> str:
    """Copy the packets of `segments`, in order, into one video-only file at out_path (format from its
    name); returns the muxer's name (what the audio copy must fit into)."""
    if not segments:
        raise OutputError(f"{out_path}: no video segments to join")
    with av.open(segments[0].path) as head, av.open(out_path, "w") as out:
        template = head.streams.video[0]
        target = out.add_stream_from_template(template, opaque=True)
        target.time_base = segments[0].time_base  # the source's, as the one-file writer keeps it
        for seg in segments:
            with av.open(seg.path) as part:
                stream = part.streams.video[0]
                _check_same_stream(template, stream, seg.path)
                packets = [p for p in part.demux(stream) if p.size]
                if len(packets) != len(seg.packets):
                    raise OutputError(f"{seg.path}: segment holds {len(packets)} packets, its record {len(seg.packets)}; "
                                      "remove the work directory and start again")
                for packet, (pts, dts, duration) in zip(packets, seg.packets):
                    packet.time_base = seg.time_base
                    packet.pts, packet.dts = pts, dts
                    if duration:
                        packet.duration = duration
                    packet.stream = target
                    out.mux(packet)
        return out.format.name


def assemble(segments: Sequence[Segment], source: VideoInfo, target: str, *, overwrite: bool) -> None:
    """Join the segments, add the source's audio/subtitle streams, and rename the result onto target."""
    temps: list[str] = []
    try:
        video = make_temp_beside(target, "video")
        temps.append(video)
        try:
            format_name = concat_segments(segments, video)
        except (av.FFmpegError, OSError, IndexError, ValueError) as err:  # IndexError: a segment without video
            raise OutputError(f"{target}: joining the video segments failed ({describe_error(err)}); "
                              "remove the work directory and start again") from None
        publish_video(video, source, target, format_name, overwrite=overwrite, temps=temps)
    finally:
        remove_quietly(temps)
