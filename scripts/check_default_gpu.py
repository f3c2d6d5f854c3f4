#!/usr/bin/env python
"""The default W4A4 model on CUDA (Triton kernels, bf16 as the upscaler runs it) against its CPU
reference (fp32) and against vsrq-tiny-fp16, on 8 real frames: how far apart the two paths land.

    PYTHONPATH=. python3 scripts/check_default_gpu.py [--video data/gpu/bbb270.mp4] [--models vsrq-tiny OTHER.safetensors ...]

Prints PSNR (dB, RGB, [0, 1]) between the outputs; 4-bit activation roundings that flip between the
paths cascade through later layers, so the paths agree to a PSNR, not bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.io import VideoReader  # noqa: E402
from vsrq.models.loader import load_model  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.clamp(0, 1) - b.clamp(0, 1)).double().square().mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--video", default="data/gpu/bbb270.mp4")
    ap.add_argument("--models", nargs="+", default=["vsrq-tiny"])
    ap.add_argument("--frames", type=int, default=8)
    a = ap.parse_args()
    with VideoReader(a.video) as r:
        frames = np.stack([f.image for _, f in zip(range(a.frames), r.frames())])
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255
    def run(name: str, device: str, dtype: torch.dtype) -> torch.Tensor:
        model = load_model(name).module.to(device, dtype).eval()  # loading is not inference-mode work
        with torch.inference_mode():
            return model(x.to(device, dtype)).float().cpu()

    fp = run("vsrq-tiny-fp16", "cpu", torch.float32)
    print(f"on {torch.cuda.get_device_name()}, input {tuple(x.shape)}")
    for name in a.models:
        cpu, gpu = run(name, "cpu", torch.float32), run(name, "cuda", torch.bfloat16)
        print(f"{name}: cuda (bf16, Triton) vs cpu (fp32, reference) {psnr(gpu, cpu):.2f} dB, "
              f"max |diff| {float((gpu - cpu).abs().max()):.4f}; vs the fp16 model: cpu {psnr(cpu, fp):.2f} dB, "
              f"cuda {psnr(gpu, fp):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
