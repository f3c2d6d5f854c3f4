"""`vsrq bench`: speed of the pipeline's parts measured in one run on the same input.

This first version times what exists: decode+encode alone and the full upscale. The low-bit
GEMM and per-layer figures join when the fused kernels land (issue 5); until then the table says so.
"""

from __future__ import annotations

import platform
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vsrq.io import VideoReader, VideoWriter, probe
from vsrq.models.loader import load_model
from vsrq.pipeline.upscale import UpscaleOptions, upscale_file


def synthetic_clip(path: Path, size: tuple[int, int], frames: int, fps: int = 25) -> None:
    """A moving, textured test clip (never zeros: flat input can run faster than real data)."""
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(h + frames, w + frames, 3), dtype=np.uint8)
    with VideoWriter(path, width=w, height=h, fps=Fraction(fps), time_base=Fraction(1, fps), source=None, crf=18, preset="veryfast") as writer:
        for t in range(frames):
            writer.write(np.ascontiguousarray(base[t:t + h, t:t + w]), t)


def time_transcode(src: Path, dst: Path) -> tuple[int, float]:
    """Decode every frame and re-encode it at the same size: the floor the model adds to."""
    info = probe(src)
    start = time.perf_counter()
    n = 0
    with VideoReader(src) as reader, VideoWriter(dst, width=info.width - info.width % 2, height=info.height - info.height % 2,
                                                 fps=info.fps, time_base=info.time_base, source=info, overwrite=True) as writer:
        for frame in reader.frames():
            writer.write(np.ascontiguousarray(frame.image[: info.height - info.height % 2, : info.width - info.width % 2]), frame.pts)
            n += 1
    return n, time.perf_counter() - start


def run_pipeline_bench(*, model: str | None, input: Path | None, size: tuple[int, int], frames: int, device: str, chunk: int) -> dict:
    loaded = load_model(model)
    with tempfile.TemporaryDirectory(prefix="vsrq-bench-") as tmp:
        tmpdir = Path(tmp)
        src = input
        if src is None:
            src = tmpdir / "input.mp4"
            synthetic_clip(src, size, frames)
        info = probe(src)
        n_io, t_io = time_transcode(src, tmpdir / "transcode.mp4")
        rep = upscale_file(src, tmpdir / "upscaled.mp4", loaded, UpscaleOptions(chunk=chunk, overlap=min(2, chunk // 2), device=device), progress=False)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": rep.device,
        "model": loaded.name,
        "precision": loaded.precision,
        "input": f"{info.width}x{info.height}, {n_io} frames",
        "output": f"{rep.width}x{rep.height}",
        "decode_encode_fps": n_io / t_io,
        "upscale_fps": rep.fps,
        "not_yet": "per-layer GEMM timings and bf16 vs W8A8 vs W4A4 (issue 5)",
    }
    result["table"] = [
        f"vsrq bench  {result['date']}  device={result['device']}  host={result['host']}",
        f"model {result['model']} [{result['precision']}]  input {result['input']} -> output {result['output']}",
        f"{'decode+encode (input size)':<34}{result['decode_encode_fps']:>9.2f} frames/s",
        f"{'full upscale (decode+model+encode)':<34}{result['upscale_fps']:>9.2f} frames/s",
        f"not yet available: {result['not_yet']}",
    ]
    return result
