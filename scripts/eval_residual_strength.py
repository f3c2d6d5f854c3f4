#!/usr/bin/env python
"""Held-out PSNR-Y / warping error of a model whose residual over bicubic is scaled by `a`:
output = bicubic + a * (model - bicubic). Answers whether turning the detail down buys steadiness.

    PYTHONPATH=. python scripts/eval_residual_strength.py MODEL 1.0,0.8,0.6 [--eval DATA/eval] [--clips 8] [--frames 8]

Same protocol and table as `vsrq eval --clips 8 --frames 8` (CPU, chunks of 8, overlap 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.eval.report import evaluate, format_table  # noqa: E402
from vsrq.models.dit import VSRDiT  # noqa: E402
from vsrq.models.loader import load_model  # noqa: E402
from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions, upscale_clip  # noqa: E402
from vsrq.train.data import load_eval_set  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("strengths", help="comma-separated values of a")
    ap.add_argument("--eval", default="data/eval")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(2)
    strength = {"a": 1.0}
    forward = VSRDiT.forward

    def scaled(self: VSRDiT, x: torch.Tensor) -> torch.Tensor:
        y = forward(self, x)
        if strength["a"] == 1.0:
            return y
        base = self.upsample_residual(x)
        return base + strength["a"] * (y - base)

    VSRDiT.forward = scaled  # this script's own process only
    clips = load_eval_set(a.eval, a.clips, a.frames)
    up = ChunkUpscaler(load_model(a.model), UpscaleOptions(chunk=8, overlap=2, device="cpu"))
    rows = evaluate("ground truth", None, clips)
    for value in (float(v) for v in a.strengths.split(",")):
        strength["a"] = value
        rows += evaluate(f"a={value:g}", lambda lr: upscale_clip(up, lr), clips)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
