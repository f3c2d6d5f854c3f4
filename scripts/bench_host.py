"""Host-side costs of an upscale, each timed alone (medians): what bounds a job when the GPU is fast.

Why: at 1080p the host's share (decode, RGB <-> YUV, float -> uint8, encode) decided the CUDA
path's speed (docs/PERF.md, GPU run 3 part 4), and on the CPU the low-bit reference's GEMM choice
(float32 matmul of integer values vs torch._int_mm) decides the W4A4 speed. Usage:
    python scripts/bench_host.py [--video data/gpu/bbb270.mp4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import av
import numpy as np
import torch

from vsrq.io import VideoReader
from vsrq.pipeline.upscale import tensor_to_image


def median_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default=None, help="a clip to decode (frames/s of decode + RGB conversion)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.video:
        t0 = time.perf_counter()
        with VideoReader(a.video) as r:
            n = sum(1 for _ in r.frames())
        print(f"decode + RGB of {a.video}: {n / (time.perf_counter() - t0):.0f} frames/s")
    img = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    print(f"RGB -> yuv420p, one 1080p frame: "
          f"{median_ms(lambda: av.VideoFrame.from_ndarray(img, format='rgb24').reformat(format='yuv420p')):.2f} ms")
    frame = torch.rand(3, 1080, 1920)
    print(f"tensor_to_image (float -> uint8 HWC), one 1080p frame on the CPU: {median_ms(lambda: tensor_to_image(frame, False)):.2f} ms")
    for m, k, n in [(28800, 96, 288), (28800, 96, 192), (28800, 192, 96)]:  # vsrq-tiny's layers, 160x90 x 8 frames
        qa = torch.randint(-8, 8, (m, k), dtype=torch.int8)
        qw = torch.randint(-8, 8, (k, n), dtype=torch.int8)
        fa, fw = qa.float(), qw.float()
        try:
            t_int = f"{median_ms(lambda: torch._int_mm(qa, qw), repeat=3):.1f} ms"
        except RuntimeError as err:
            t_int = f"unavailable ({str(err).splitlines()[0][:60]})"
        print(f"GEMM {m}x{k} @ {k}x{n} on the CPU: float32 of integer values {median_ms(lambda: fa @ fw):.1f} ms, "
              f"torch._int_mm {t_int}")


if __name__ == "__main__":
    main()
