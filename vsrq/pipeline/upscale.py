"""The whole path of a video: decode in chunks, upscale (tiled if asked), cross-fade, encode.

Memory stays constant with the video's length: one chunk of input frames, its output and
`overlap` held-back output frames are all that is alive at any time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vsrq.errors import Interrupted, OutputError, VsrqError
from vsrq.io import VideoInfo, VideoReader, VideoWriter, encoders, probe, segments
from vsrq.io.output_path import check_free_space, check_target
from vsrq.io.probe import MAX_SIDE
from vsrq.models.interfaces import ManagedRestorer, VSRModel
from vsrq.models.loader import LoadedModel
from vsrq.pipeline import faults
from vsrq.pipeline.chunking import CrossFader, check_chunking, iter_chunks
from vsrq.pipeline.device import pick_device, pick_dtype
from vsrq.pipeline.journal import Journal
from vsrq.pipeline.resize import resize_images
from vsrq.pipeline.segment_sink import SegmentSink
from vsrq.pipeline.tiling import tiled_apply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscaleOptions:
    """How frames go through the model (Real-ESRGAN-like knobs)."""

    chunk: int = 8
    overlap: int = 2
    tile: int = 0
    tile_overlap: int = 16
    outscale: float | None = None
    device: str = "auto"
    batch: int = 1
    segment_frames: int = 240  # output frames per resumable segment (a crash loses at most this many)
    on_error: str = "stop"  # damaged input: "stop" with an error, or "skip" the damage (vsrq.io.reader)
    max_vram: float | None = None  # GiB: choose chunk / VAE tile / offload to fit (SeedVR2; vram.py)
    auto_chunk: bool = False  # with max_vram: the chunk length is the plan's to choose


@dataclass(frozen=True)
class EncodeOptions:
    codec: str = "libx264"
    crf: int | None = 18
    preset: str | None = "medium"
    pix_fmt: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class UpscaleReport:
    frames: int
    seconds: float
    width: int
    height: int
    device: str
    peak_gpu_bytes: int = 0  # torch's peak allocation on the GPU during the job (0 on the CPU)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def even(n: float) -> int:
    """Nearest even integer >= 2: 4:2:0 encoders need even sizes."""
    return max(2, int(round(n / 2)) * 2)


def output_size(width: int, height: int, model_scale: int, outscale: float | None) -> tuple[int, int]:
    s = model_scale if outscale is None else outscale
    if s <= 0:
        raise VsrqError(f"--scale must be positive, got {s}")
    return even(width * s), even(height * s)


def frames_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(T of H, W, 3) uint8/uint16 -> (1, 3, T, H, W) float32 in [0, 1]."""
    arr = np.stack(images)
    peak = 65535.0 if arr.dtype == np.uint16 else 255.0
    return torch.from_numpy(arr).permute(3, 0, 1, 2).unsqueeze(0).float().div_(peak)


def tensor_to_image(frame: torch.Tensor, high_depth: bool) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, or uint16 for >8-bit sources.

    Rounding and the layout change happen where the frame is (the GPU for a CUDA run), so only
    the finished integers cross to the host: a quarter of the float32 bytes, and no float work
    on 1080p frames for the host's few cores (the bottleneck of the GPU path before).
    """
    peak = 65535.0 if high_depth else 255.0
    ints = frame.clamp(0, 1).mul(peak).round().to(torch.int32 if high_depth else torch.uint8)
    arr = ints.permute(1, 2, 0).contiguous().cpu().numpy()
    return arr.astype(np.uint16) if high_depth else arr


class ChunkUpscaler:
    """Runs a model on (1, 3, T, H, W) chunks: device, dtype, tiling, output resizing, OOM retries."""

    def __init__(self, model: LoadedModel, opts: UpscaleOptions, on_warning: Callable[[str], None] | None = None) -> None:
        check_chunking(opts.chunk, opts.overlap)
        self.opts = opts
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(self.device)
        module = model.module
        # a restorer places itself (DiT block offload); a plain network just moves
        self.net = (module.place(self.device, self.dtype) if isinstance(module, ManagedRestorer)
                    else module.to(self.device, self.dtype)).eval()
        self.scale = model.scale
        self.align = int(self.net.config.pixel_align[1]) if isinstance(self.net, VSRModel) else 1
        self.tile = opts.tile  # shrinks, for the rest of the job, when a chunk runs out of memory
        if self.tile and not float(self.scale).is_integer():
            raise VsrqError(f"--tile needs a whole output scale (this model runs at x{self.scale:g}); "
                            "for SeedVR2 use --vae-tile, --offload or --max-vram to save memory")
        self._warn = on_warning or (lambda msg: log.warning("%s", msg))

    @torch.inference_mode()
    def __call__(self, chunk: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upscale a chunk; returns (T, 3, H', W') float32 on the model's device (cross-fade and
        rounding run there too), resized to `size` (w, h) if given."""
        x = chunk.to(self.device)
        while True:
            try:
                out = self._run(x)
                break
            except (torch.OutOfMemoryError, MemoryError) as err:
                self._shrink_tile(x, err)
        frames = out[0].transpose(0, 1)  # (T, 3, H, W)
        if size is not None and (frames.shape[-1], frames.shape[-2]) != size:
            frames = resize_images(frames, (size[1], size[0]))
        return frames

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_apply(
            lambda t: self.net(t.to(self.dtype)).float(),
            x,
            scale=self.scale,
            tile=self.tile,
            overlap=self.opts.tile_overlap,
            align=self.align,
            batch=self.opts.batch,
        )

    def _shrink_tile(self, x: torch.Tensor, err: BaseException) -> None:
        """Halve the tile (the whole frame counts as one tile) or give up below the smallest useful one."""
        del err  # frees the frames the failed forward still references through the traceback
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if isinstance(self.net, ManagedRestorer):  # SeedVR2: frame tiles would change its attention windows
            raise VsrqError(f"out of memory on {self.device}; try --max-vram (GiB of your GPU), or --vae-tile 512 "
                            "and --offload, or a shorter --chunk") from None
        current = self.tile if self.tile > 0 else max(x.shape[-2:])
        smaller = max(self.align, (current // 2) // self.align * self.align)
        if current <= MIN_TILE or smaller <= self.opts.tile_overlap:
            raise VsrqError(f"out of memory on {self.device} even with --tile {current}; "
                            "try a smaller --chunk, or --device cpu") from None
        self.tile = max(smaller, MIN_TILE)
        self._warn(f"out of memory on {self.device}; retrying this chunk with --tile {self.tile} (kept for the rest)")


MIN_TILE = 32


def upscale_clip(upscaler: ChunkUpscaler, clip: np.ndarray) -> np.ndarray:
    """Upscale an in-memory clip (T, h, w, 3) uint8 with the same chunking and cross-fade as files."""
    fader = CrossFader(upscaler.opts.overlap)
    out = []
    for start, chunk in iter_chunks(list(clip), upscaler.opts.chunk, upscaler.opts.overlap):
        out.append(fader.push(start, upscaler(frames_to_tensor(chunk))))
    out.append(fader.flush())
    return np.stack([tensor_to_image(f, high_depth=False) for f in torch.cat(out)])


def _file_identity(path: Path) -> dict:
    """Path, size and modification time: a replaced file is noticed without hashing gigabytes."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def job_fingerprint(info: VideoInfo, model: LoadedModel, opts: UpscaleOptions, enc: EncodeOptions,
                    size: tuple[int, int]) -> dict:
    """What must not change between a job and its resumption (device and batch only move rounding)."""
    st = os.stat(info.path)
    weights = str(model.weights_path)
    fp = {
        "input": {"path": os.path.abspath(info.path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
        "model": {"name": model.name, "precision": model.precision, "weights": weights,
                  "bytes": os.path.getsize(weights) if os.path.isfile(weights) else None},
        "chunking": [opts.chunk, opts.overlap],
        "tiling": [opts.tile, opts.tile_overlap],
        "output size": list(size),
        "encoder": [enc.codec, enc.crf, enc.preset, enc.pix_fmt],
        "segment frames": opts.segment_frames,
        "on error": opts.on_error,
    }
    if model.other_files:  # the VAE and text embeddings change a SeedVR2 output as much as the DiT does
        fp["model files"] = {role: _file_identity(path) for role, path in sorted(model.other_files.items())}
    if isinstance(model.module, ManagedRestorer):  # what changes a restorer's output beyond the options above (SeedVR2)
        fp["model settings"] = model.module.settings.fingerprint()
    return fp


# bits per output pixel, generous: x264/x265/AV1 at CRF 18 on upscaled video stay well below
# 0.3; lossless FFV1 of natural video needs about half of the raw 24 bits
_BITS_PER_PIXEL = {"ffv1": 14.0}
_LOSSY_BITS_PER_PIXEL = 0.35


def estimate_output_bytes(info: VideoInfo, size: tuple[int, int], enc: EncodeOptions) -> int:
    """A high estimate of the finished video's size, for the free-space check before a job starts."""
    frames = info.estimated_num_frames or 0
    bpp = _BITS_PER_PIXEL.get(enc.codec, _LOSSY_BITS_PER_PIXEL)
    if enc.crf is not None and enc.crf < 18 and enc.codec not in _BITS_PER_PIXEL:
        bpp *= 2 ** ((18 - enc.crf) / 6)  # about twice the bits for every 6 CRF steps
    return int(frames * size[0] * size[1] * bpp / 8)


def upscale_file(
    src: Path,
    dst: Path,
    model: LoadedModel,
    opts: UpscaleOptions = UpscaleOptions(),
    enc: EncodeOptions = EncodeOptions(),
    progress: bool = True,
    on_frames: Callable[[int], None] | None = None,
    resume: bool = False,
    check_space: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> UpscaleReport:
    """Upscale one video file into another, atomically and resumably.

    The video is encoded as segments in a work directory beside the target (journal.py); the
    target appears, by rename, only once every frame is in; after an interruption `resume=True`
    continues after the last complete segment and gives the same frames as an uninterrupted run.
    """
    info = probe(src)
    width, height = output_size(info.width, info.height, model.scale, opts.outscale)
    if max(width, height) > MAX_SIDE:
        raise OutputError(f"{dst}: the output would be {width}x{height}, more than the {MAX_SIDE} pixels on a side "
                          "that video encoders accept; choose a smaller --scale")
    target = check_target(dst, overwrite=enc.overwrite, inputs=(info.path,))
    encoders.check_encoder(enc.codec)
    if opts.max_vram is not None:
        from vsrq.pipeline.vram import apply_memory_plan

        opts = apply_memory_plan(model, opts, (width, height), on_warning or (lambda msg: log.warning("%s", msg)))
    upscaler = ChunkUpscaler(model, opts, on_warning)
    if upscaler.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(upscaler.device)
    high_depth = info.bit_depth > 8
    sar = info.sample_aspect_ratio if info.sample_aspect_ratio else Fraction(1)
    fingerprint = job_fingerprint(info, model, opts, enc, (width, height))
    started = time.perf_counter()
    journal = Journal.open(target, fingerprint, info.time_base, resume=resume, overwrite=enc.overwrite)
    published = False
    try:
        if check_space:
            total = info.estimated_num_frames or 0
            left = 1.0 - min(1.0, journal.frames_done / total) if total else 1.0
            # segments still to write, plus the joined file beside them before the segments go
            check_free_space(target, int(estimate_output_bytes(info, (width, height), enc) * (1.0 + left)))
        job = _SegmentedJob(journal, info, upscaler, enc, (width, height), sar, high_depth, on_frames)
        if not journal.complete:
            with tqdm(total=info.estimated_num_frames, initial=journal.frames_done, unit="frame", disable=not progress,
                      desc="upscale", dynamic_ncols=True) as bar:
                job.bar = bar
                job.run()
        segments.assemble(journal.segments(), info, target, overwrite=enc.overwrite)
        published = True
    except KeyboardInterrupt:
        raise Interrupted("interrupted; " + _saved_note(journal, "run the same command with --resume to continue")) from None
    except OutputError as err:  # full disk, lost mount: the saved segments stay usable
        raise OutputError(f"{err}; " + _saved_note(journal, "fix the cause and run the same command with --resume")) from None
    finally:
        if published or journal.frames_done == 0:
            journal.remove()  # nothing worth keeping, or the output is published
        else:
            journal.close()
    peak = torch.cuda.max_memory_allocated(upscaler.device) if upscaler.device.type == "cuda" else 0
    return UpscaleReport(frames=job.emitted - job.first_frame, seconds=time.perf_counter() - started,
                         width=width, height=height, device=str(upscaler.device), peak_gpu_bytes=peak)


def _saved_note(journal: Journal, how: str) -> str:
    if journal.frames_done == 0:
        return "no output was written"
    return f"{journal.frames_done} frames are saved in {journal.work_dir}: {how}"


class _SegmentedJob:
    """The decode -> upscale -> cross-fade loop of one job (fresh or resumed); frames go to a
    SegmentSink, which encodes them on its own thread and commits the segments."""

    def __init__(self, journal: Journal, info: VideoInfo, upscaler: ChunkUpscaler, enc: EncodeOptions,
                 size: tuple[int, int], sar: Fraction, high_depth: bool, on_frames: Callable[[int], None] | None) -> None:
        self.journal, self.info, self.upscaler, self.enc = journal, info, upscaler, enc
        self.size, self.sar, self.high_depth, self.on_frames = size, sar, high_depth, on_frames
        self.first_frame = journal.frames_done
        self.emitted = journal.frames_done  # absolute index of the next output frame handed to the sink
        self.segment_frames = upscaler.opts.segment_frames
        self.segment_start = self.emitted
        self.bar: tqdm | None = None
        self.fault = faults.planned()

    def run(self) -> None:
        opts = self.upscaler.opts
        skip_until = self.journal.chunks_done
        # the chunk before the restart point is recomputed: its last `overlap` frames are the
        # cross-fade partner of the first new chunk (its other frames are already in a segment)
        recompute = skip_until - 1 if opts.overlap and skip_until else skip_until
        pts_of: dict[int, int] = {}  # frame index -> pts, until the frame is sent (the reader's pts increase)
        fader = CrossFader(opts.overlap)
        sink = SegmentSink(self.journal, self._open_writer, self.fault, self._progress)
        try:
            with VideoReader(self.info.path, on_error=opts.on_error) as reader:
                chunks = 0
                for ci, (start, chunk) in enumerate(iter_chunks(reader.frames(), opts.chunk, opts.overlap)):
                    chunks = ci + 1
                    for i, frame in enumerate(chunk):
                        pts_of.setdefault(start + i, frame.pts)
                    if ci < recompute:
                        continue
                    out = fader.push(start, self.upscaler(frames_to_tensor([f.image for f in chunk]), self.size))
                    if ci < skip_until:
                        continue  # frames already saved
                    self._emit(sink, out, pts_of)
                    # only after a full chunk: its held-back frames are unblended, so recomputing
                    # this one chunk on resume restores the cross-fade state exactly
                    if len(chunk) == opts.chunk and self.emitted - self.segment_start >= self.segment_frames:
                        sink.close_segment(chunks)
                        self.segment_start = self.emitted
                self._emit(sink, fader.flush(), pts_of)
                sink.close_segment(chunks)
                sink.finish()
                self.journal.mark_complete()
                self.fault.before_join()
        finally:
            sink.abort()

    def _emit(self, sink: SegmentSink, frames: torch.Tensor, pts_of: dict[int, int]) -> None:
        for frame in frames:
            sink.write(tensor_to_image(frame, self.high_depth), pts_of.pop(self.emitted))
            self.emitted += 1

    def _progress(self, written: int) -> None:
        """Called by the encoding thread after each frame it encoded."""
        if self.bar is not None:
            self.bar.update(1)
        if self.on_frames is not None:
            self.on_frames(written)

    def _open_writer(self, path: str) -> VideoWriter:
        w, h = self.size
        return VideoWriter(
            path, width=w, height=h, fps=self.info.fps, time_base=self.info.time_base,
            source=self.info, codec=self.enc.codec, crf=self.enc.crf, preset=self.enc.preset, pix_fmt=self.enc.pix_fmt,
            overwrite=True, sample_aspect_ratio=self.sar, copy_streams=False)
