"""Generators of bad and hostile inputs, made at test time with PyAV and numpy (no stored binaries).

Every generator takes a directory and returns the path of the file it made there. Sizes are tiny
(32x24, a handful of frames): the model's time grows with pixels, and 40-odd cases go through it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import numpy as np

from tests.media import ASS_HEADER, make_clip, pattern

W, H = 32, 24
MS = Fraction(1, 1000)


def _encode(path: Path, images: Iterable[np.ndarray], *, codec: str = "libx264", pix_fmt: str = "yuv420p",
            in_format: str = "rgb24", fps: int = 25, options: dict | None = None,
            setup: Callable[[av.video.stream.VideoStream], None] | None = None,
            fmt: str | None = None) -> Path:
    """Encode `images` (all one size) at a constant rate; `setup` can tag the stream before encoding."""
    images = list(images)
    out = av.open(str(path), "w", format=fmt)
    if options is None and codec == "libx264":
        options = {"preset": "ultrafast", "crf": "12"}
    stream = out.add_stream(codec, rate=fps, options=options or {})
    stream.height, stream.width = images[0].shape[:2]
    stream.pix_fmt = pix_fmt
    if setup is not None:
        setup(stream)
    for i, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format=in_format).reformat(format=pix_fmt)
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()
    return path


def _frames(n: int, width: int = W, height: int = H, *, deep: bool = False) -> list[np.ndarray]:
    return [pattern(i, width, height, deep=deep) for i in range(n)]


def _mux_packets(path: Path, codec: str, packets: list[tuple[bytes, int, int]], size: tuple[int, int],
                 pix_fmt: str) -> Path:
    """Write pre-encoded (payload, pts, dts) packets in milliseconds into Matroska, as given."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.time_base = MS
        for payload, pts, dts in packets:
            packet = av.Packet(payload)
            packet.stream = stream
            packet.time_base = MS
            packet.pts, packet.dts = pts, dts
            out.mux(packet)
    return path


def _mjpeg_payloads(images: Iterable[np.ndarray]) -> list[bytes]:
    """Each image as one JPEG (intra only: the decoder keeps packet order and timestamps)."""
    payloads = []
    for image in images:
        ctx = av.CodecContext.create("mjpeg", "w")
        ctx.height, ctx.width = image.shape[:2]
        ctx.pix_fmt, ctx.time_base = "yuvj420p", Fraction(1, 25)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
        payloads.append(b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)]))
    return payloads


def _still(path: Path, codec: str, pix_fmt: str) -> Path:
    """One encoded picture with no container at all (what a .png/.jpg file holds)."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = W, H, pix_fmt, Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(pattern(0, W, H), format="rgb24").reformat(format=pix_fmt)
    path.write_bytes(b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)]))
    return path


def _faststart(d: Path, frames: int = 20) -> Path:
    """mp4 with its index (moov) first: what is left after a cut can still be opened."""
    return Path(make_clip(str(d / "faststart.mp4"), width=W, height=H, frames=frames,
                          container_options={"movflags": "faststart"}).path)


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _mdat_payload(data: bytes) -> tuple[int, int]:
    """(start, end) of the media data inside an mp4, where the coded pictures are."""
    start = data.index(b"mdat") + 4
    return start, len(data)


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Turn a hang on a hostile input into a failing TimeoutError (SIGALRM, main thread only)."""
    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still busy after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- not media at all ------------------------------------------------------------------------------

def empty(d: Path) -> Path:
    path = d / "empty.mp4"
    path.write_bytes(b"")
    return path


def random_bytes(d: Path) -> Path:
    path = d / "random.mp4"
    path.write_bytes(random.Random(7).randbytes(4096))
    return path


def text_file(d: Path) -> Path:
    path = d / "notes.mp4"
    path.write_text("this is a shopping list, not a video\n" * 40)
    return path


def mp4_header_then_junk(d: Path) -> Path:
    """A real ftyp box followed by random bytes: looks like mp4 to the prober, is not."""
    path = d / "junk_after_ftyp.mp4"
    head = _faststart(d).read_bytes()[:32]
    path.write_bytes(head + random.Random(3).randbytes(4096))
    return path


def png_as_mp4(d: Path) -> Path:
    return _still(d / "picture_png.mp4", "png", "rgb24")


def jpeg_as_mp4(d: Path) -> Path:
    return _still(d / "picture_jpg.mp4", "mjpeg", "yuvj420p")


# -- paths that are not regular files ----------------------------------------------------------------

def missing(d: Path) -> Path:
    return d / "does_not_exist.mp4"


def directory(d: Path) -> Path:
    path = d / "folder.mp4"
    path.mkdir()
    return path


def fifo(d: Path) -> Path:
    path = d / "pipe.mp4"
    os.mkfifo(path)
    return path


def device(d: Path) -> Path:
    return Path("/dev/zero")


def broken_symlink(d: Path) -> Path:
    path = d / "link.mp4"
    path.symlink_to(d / "gone.mp4")
    return path


def unreadable(d: Path) -> Path:
    path = Path(make_clip(str(d / "locked.mp4"), width=W, height=H, frames=4).path)
    path.chmod(0)
    return path


def spaces_and_unicode(d: Path) -> Path:
    folder = d / "my vidéos ✓"
    folder.mkdir()
    return Path(make_clip(str(folder / "clip ünïcödé 日本.mp4"), width=W, height=H, frames=6).path)


# -- no usable video -------------------------------------------------------------------------------

def subtitles_only(d: Path) -> Path:
    """Matroska with one SRT subtitle track and nothing else."""
    path = d / "subs.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("srt")
        stream.codec_context.subtitle_header = ASS_HEADER
        for i, text in enumerate((b"hello", b"world")):
            cue = av.subtitles.subtitle.SubtitleSet.create(b"0,0,Default,,0,0,0,," + text, 0, 150, pts=i * 200_000)
            packet = stream.codec_context.encode_subtitle(cue)
            packet.stream, packet.time_base = stream, MS
            packet.pts = packet.dts = i * 200
            packet.duration = 150
            out.mux(packet)
    return path


def header_only_mp4(d: Path) -> Path:
    """Index and an empty-looking media box: the cut falls right where the pictures begin."""
    data = _faststart(d).read_bytes()
    path = d / "header_only.mp4"
    path.write_bytes(data[: _mdat_payload(data)[0]])
    return path


# -- damaged ---------------------------------------------------------------------------------------

def truncated(fraction: float) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        return _cut(_faststart(d), d / f"cut{int(fraction * 100)}.mp4", fraction)
    make.__name__ = f"truncated_{int(fraction * 100)}"
    return make


def truncated_index_last(d: Path) -> Path:
    """Plain mp4 (index written at the end) cut in half: the index is gone."""
    src = Path(make_clip(str(d / "plain.mp4"), width=W, height=H, frames=20).path)
    return _cut(src, d / "cut_plain.mp4", 0.5)


def truncated_mkv(d: Path) -> Path:
    src = Path(make_clip(str(d / "long.mkv"), width=W, height=H, frames=30, fps=Fraction(10)).path)  # 3 s
    return _cut(src, d / "cut.mkv", 0.5)


def corrupt_middle(d: Path) -> Path:
    """200 random bytes in the middle of the coded pictures (a bad sector, a broken download chunk)."""
    data = bytearray(_faststart(d).read_bytes())
    start, end = _mdat_payload(bytes(data))
    middle = (start + end) // 2
    rng = random.Random(11)
    for k in range(middle, middle + 200):
        data[k] = rng.randrange(256)
    path = d / "corrupt.mp4"
    path.write_bytes(bytes(data))
    return path


def starts_mid_gop(d: Path) -> Path:
    """A cut that starts after a keyframe: 3 pictures refer to one that is gone, then a keyframe every 4."""
    src = _encode(d / "gops.mp4", _frames(12), options={"preset": "ultrafast", "crf": "12",
                                                          "x264-params": "keyint=4:min-keyint=4:scenecut=0:bframes=0"})
    path = d / "mid_gop.mkv"
    with av.open(str(src)) as sin, av.open(str(path), "w") as out:
        video = out.add_stream_from_template(sin.streams.video[0], opaque=True)
        for n, packet in enumerate(p for p in sin.demux(sin.streams.video[0]) if p.size):
            if n > 0:
                packet.stream = video
                out.mux(packet)
    return path


def huge_declared(d: Path) -> Path:
    """FFV1 (which takes its size from the container) in Matroska whose header claims 16000x16000:
    small enough for FFmpeg to accept, 768 MB per RGB frame if anyone believed it."""
    src = _encode(d / "small.mkv", _frames(2, 300, 300), codec="ffv1")
    data = src.read_bytes()
    for element in (b"\xb0", b"\xba"):  # PixelWidth, PixelHeight: 2-byte values
        old = element + b"\x82" + (300).to_bytes(2, "big")
        assert data.count(old) == 1, element
        data = data.replace(old, element + b"\x82" + (16000).to_bytes(2, "big"))
    path = d / "huge_declared.mkv"
    path.write_bytes(data)
    return path


def huge_real(d: Path) -> Path:
    """A real, decodable 17000x16 picture: wider than any encoder can take."""
    return _encode(d / "huge_real.mkv", _frames(1, 17000, 16), codec="ffv1")


def output_too_wide(d: Path) -> Path:
    """4200 px wide: fine as input, but x4 makes 16800 px, past what the encoders accept."""
    return _encode(d / "wide.mkv", _frames(2, 4200, 16), codec="ffv1")


# -- unusual but valid ---------------------------------------------------------------------------

def one_frame(d: Path) -> Path:
    return Path(make_clip(str(d / "one.mp4"), width=W, height=H, frames=1).path)


def two_frames(d: Path) -> Path:
    return Path(make_clip(str(d / "two.mp4"), width=W, height=H, frames=2).path)


def odd_size_444(d: Path) -> Path:
    return Path(make_clip(str(d / "odd.mp4"), width=31, height=23, frames=4, pix_fmt="yuv444p").path)


def odd_size_420(d: Path) -> Path:
    """31x23 4:2:0 (FFV1 allows odd sizes with subsampled chroma; H.264 does not)."""
    return _encode(d / "odd420.mkv", _frames(4, 31, 23), codec="ffv1")


def tiny(width: int, height: int) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        return _encode(d / f"tiny{width}x{height}.mkv", _frames(3, width, height), codec="ffv1",
                       pix_fmt="yuv444p")
    make.__name__ = f"tiny_{width}x{height}"
    return make


def rotated(d: Path) -> Path:
    return Path(make_clip(str(d / "rotated.mp4"), width=W, height=H, frames=4, rotation=90).path)


def variable_frame_rate(d: Path) -> Path:
    return Path(make_clip(str(d / "vfr.mp4"), width=W, height=H, pts=[0, 512, 1500, 3000, 3100, 6000]).path)


def ten_bit(d: Path) -> Path:
    return _encode(d / "tenbit.mp4", _frames(4, deep=True), pix_fmt="yuv420p10le", in_format="rgb48le")


def twelve_bit(d: Path) -> Path:
    return _encode(d / "twelve.mkv", _frames(4, deep=True), codec="ffv1", pix_fmt="yuv420p12le",
                   in_format="rgb48le")


def _hdr(trc: int) -> Callable[[av.video.stream.VideoStream], None]:
    def setup(stream: av.video.stream.VideoStream) -> None:
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 9, trc, 9, 1  # BT.2020, limited
    return setup


def hdr_pq(d: Path) -> Path:
    """10-bit BT.2020 with the PQ (SMPTE 2084) transfer: HDR10's tags."""
    return _encode(d / "hdr_pq.mp4", _frames(4, deep=True), pix_fmt="yuv420p10le", in_format="rgb48le",
                   setup=_hdr(16))


def hdr_hlg(d: Path) -> Path:
    """10-bit BT.2020 with the HLG (ARIB STD-B67) transfer."""
    return _encode(d / "hdr_hlg.mkv", _frames(4, deep=True), pix_fmt="yuv420p10le", in_format="rgb48le",
                   setup=_hdr(18))


def interlaced(d: Path) -> Path:
    """H.264 coded as interlaced fields, top field first."""
    return _encode(d / "interlaced.mp4", _frames(6),
                   options={"preset": "ultrafast", "crf": "12", "x264-params": "interlaced=1:tff=1"})


def alpha_png_mov(d: Path) -> Path:
    """RGBA PNG pictures in QuickTime (a common way to hand over graphics with transparency)."""
    images = [np.dstack([f, np.full(f.shape[:2], 128, np.uint8)]) for f in _frames(4)]
    return _encode(d / "alpha.mov", images, codec="png", pix_fmt="rgba", in_format="rgba")


def alpha_prores(d: Path) -> Path:
    """ProRes 4444 with alpha, 10-bit (the editing world's alpha format)."""
    return _encode(d / "alpha_prores.mov", _frames(4, deep=True), codec="prores_ks", pix_fmt="yuva444p10le",
                   in_format="rgb48le")


def duplicate_pts(d: Path) -> Path:
    """Two frames share a timestamp (a muxer bug seen in screen recorders)."""
    times = [0, 40, 40, 80, 120, 160]
    packets = [(p, t, t) for p, t in zip(_mjpeg_payloads(_frames(len(times))), times)]
    return _mux_packets(d / "dup_pts.mkv", "mjpeg", packets, (W, H), "yuvj420p")


def non_monotonic_pts(d: Path) -> Path:
    """Timestamps that go backwards (frames 2 and 3 swapped in time, decode order kept)."""
    times = [0, 40, 120, 80, 160, 200]
    packets = [(p, t, i) for i, (p, t) in enumerate(zip(_mjpeg_payloads(_frames(len(times))), times))]
    return _mux_packets(d / "backwards_pts.mkv", "mjpeg", packets, (W, H), "yuvj420p")


def size_change(d: Path) -> Path:
    """Motion JPEG whose pictures switch from 32x24 to 40x30 after three frames."""
    images = _frames(3) + _frames(3, 40, 30)
    packets = [(p, 40 * i, 40 * i) for i, p in enumerate(_mjpeg_payloads(images))]
    return _mux_packets(d / "size_change.mkv", "mjpeg", packets, (W, H), "yuvj420p")


def raw_h264(d: Path) -> Path:
    """An H.264 elementary stream: no container, so no timestamps and no frame count."""
    return _encode(d / "raw.h264", _frames(6), fmt="h264")


def mkv_named_mp4(d: Path) -> Path:
    """Matroska content behind an .mp4 name: the name must not matter."""
    src = Path(make_clip(str(d / "real.mkv"), width=W, height=H, frames=4).path)
    path = d / "actually_mkv.mp4"
    src.rename(path)
    return path
