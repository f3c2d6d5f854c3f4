"""The whole path of a video: decode in chunks, upscale (tiled if asked), cross-fade, encode.

Memory stays constant with the video's length: one chunk of input frames, its output and
`overlap` held-back output frames are all that is alive at any time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vsrq.errors import VsrqError
from vsrq.io import VideoReader, VideoWriter, probe
from vsrq.models.loader import LoadedModel
from vsrq.pipeline.chunking import CrossFader, check_chunking, iter_chunks
from vsrq.pipeline.device import pick_device, pick_dtype
from vsrq.pipeline.tiling import tiled_apply


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
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, or uint16 for >8-bit sources."""
    peak = 65535.0 if high_depth else 255.0
    arr = frame.clamp(0, 1).mul(peak).round().permute(1, 2, 0).cpu().numpy()
    return arr.astype(np.uint16 if high_depth else np.uint8)


class ChunkUpscaler:
    """Runs a model on (1, 3, T, H, W) chunks: device, dtype, tiling and output resizing."""

    def __init__(self, model: LoadedModel, opts: UpscaleOptions) -> None:
        check_chunking(opts.chunk, opts.overlap)
        self.opts = opts
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(self.device)
        self.net = model.module.to(self.device, self.dtype).eval()
        self.scale = model.scale
        cfg = getattr(self.net, "config", None)
        self.align = int(cfg.pixel_align[1]) if cfg is not None else 1

    @torch.inference_mode()
    def __call__(self, chunk: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upscale a chunk; returns (T, 3, H', W') float32 on the CPU, resized to `size` (w, h) if given."""
        x = chunk.to(self.device)
        out = tiled_apply(
            lambda t: self.net(t.to(self.dtype)).float(),
            x,
            scale=self.scale,
            tile=self.opts.tile,
            overlap=self.opts.tile_overlap,
            align=self.align,
            batch=self.opts.batch,
        )
        frames = out[0].transpose(0, 1)  # (T, 3, H, W)
        if size is not None and (frames.shape[-1], frames.shape[-2]) != size:
            frames = F.interpolate(frames, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False)
        return frames.cpu()


def upscale_clip(upscaler: ChunkUpscaler, clip: np.ndarray) -> np.ndarray:
    """Upscale an in-memory clip (T, h, w, 3) uint8 with the same chunking and cross-fade as files."""
    fader = CrossFader(upscaler.opts.overlap)
    out = []
    for start, chunk in iter_chunks(list(clip), upscaler.opts.chunk, upscaler.opts.overlap):
        out.append(fader.push(start, upscaler(frames_to_tensor(chunk))))
    out.append(fader.flush())
    return np.stack([tensor_to_image(f, high_depth=False) for f in torch.cat(out)])


def upscale_file(
    src: Path,
    dst: Path,
    model: LoadedModel,
    opts: UpscaleOptions = UpscaleOptions(),
    enc: EncodeOptions = EncodeOptions(),
    progress: bool = True,
    on_frames: Callable[[int], None] | None = None,
) -> UpscaleReport:
    """Upscale one video file into another, atomically (the target appears only when complete)."""
    info = probe(src)
    width, height = output_size(info.width, info.height, model.scale, opts.outscale)
    upscaler = ChunkUpscaler(model, opts)
    high_depth = info.bit_depth > 8
    sar = info.sample_aspect_ratio if info.sample_aspect_ratio else Fraction(1)
    started = time.perf_counter()
    written = 0
    with VideoReader(src) as reader, VideoWriter(
        dst,
        width=width,
        height=height,
        fps=info.fps,
        time_base=info.time_base,
        source=info,
        codec=enc.codec,
        crf=enc.crf,
        preset=enc.preset,
        pix_fmt=enc.pix_fmt,
        overwrite=enc.overwrite,
        sample_aspect_ratio=sar,
    ) as writer, tqdm(total=info.num_frames, unit="frame", disable=not progress, desc="upscale", dynamic_ncols=True) as bar:
        fader = CrossFader(opts.overlap)
        pending_pts: deque[int | None] = deque()
        queued = 0

        def emit(frames: torch.Tensor) -> None:
            nonlocal written
            for frame in frames:
                writer.write(tensor_to_image(frame, high_depth), pending_pts.popleft())
                written += 1
            bar.update(len(frames))
            if on_frames is not None:
                on_frames(written)

        for start, chunk in iter_chunks(reader.frames(), opts.chunk, opts.overlap):
            for i, frame in enumerate(chunk):
                if start + i >= queued:
                    pending_pts.append(frame.pts)
                    queued += 1
            out = upscaler(frames_to_tensor([f.image for f in chunk]), (width, height))
            emit(fader.push(start, out))
        emit(fader.flush())
    return UpscaleReport(frames=written, seconds=time.perf_counter() - started, width=width, height=height, device=str(upscaler.device))
