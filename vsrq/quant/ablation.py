"""The quantization ablation: every recipe on the same model, calibration set and held-out clips.

`python -m vsrq.quant.ablation --model vsrq-tiny-fp16 --eval DIR --out docs/quant_ablation.md`
prints (and writes) one row per method: PSNR-Y / SSIM-Y against ground truth, PSNR of the output
against the full-precision output, stored bits per weight of the quantized layers (scales and
low-rank branches counted), calibration + quantization time. Every number in docs/QUANT.md's
table comes from this command.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vsrq.eval.report import evaluate
from vsrq.models.loader import LoadedModel, load_model
from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions, upscale_clip
from vsrq.quant.calibrate import default_calibration_clips
from vsrq.quant.engine import quantize_model
from vsrq.quant.recipe import PRESETS, load_recipe

DEFAULT_METHODS = ("rtn-w8a8", "rtn", "smoothquant", "quarot", "qdit", "svdquant", "mpq-lowrank", "stca", "lba", "draq")


def psnr_vs(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (RGB, 0-255) of one output against another (the FP model's)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_rows(loaded: LoadedModel, clips, methods: list[str], *, chunk: int, overlap: int, log=print) -> list[dict]:
    opts = UpscaleOptions(chunk=chunk, overlap=overlap, device="cpu")

    def scored(name: str, model: LoadedModel, fp_out: list[np.ndarray] | None) -> tuple[dict, list[np.ndarray]]:
        up = ChunkUpscaler(model, opts)
        outs: list[np.ndarray] = []

        def upscale_and_keep(lr: np.ndarray) -> np.ndarray:
            outs.append(upscale_clip(up, lr))
            return outs[-1]

        per_clip = evaluate(name, upscale_and_keep, clips, temporal=False)
        row = {"method": name, "psnr_y": float(np.mean([r["psnr_y"] for r in per_clip])),
               "ssim_y": float(np.mean([r["ssim_y"] for r in per_clip])),
               "psnr_vs_fp": float("inf") if fp_out is None else float(np.mean([psnr_vs(o, f) for o, f in zip(outs, fp_out)]))}
        return row, outs

    row, fp_out = scored(f"{loaded.name} (full precision)", loaded, None)
    rows = [{**row, "bits": 16.0, "calib_s": 0.0}]
    log(rows[-1])
    calib = default_calibration_clips()
    for m in methods:
        recipe = load_recipe(m)
        t0 = time.perf_counter()
        result = quantize_model(loaded.module, recipe, calib)
        secs = time.perf_counter() - t0
        q = LoadedModel(name=m, module=result.model, precision=f"w{recipe.w_bits}a{recipe.a_bits}", weights_path=loaded.weights_path)
        row, _ = scored(f"{m} W{recipe.w_bits}A{recipe.a_bits}", q, fp_out)
        rows.append({**row, "bits": result.report(recipe)["bits_per_weight"], "calib_s": secs})
        log(rows[-1])
    return rows


def format_rows(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | PSNR-Y (dB) | SSIM-Y | PSNR vs FP (dB) | bits/weight | calib+quant (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr_y']:.2f} | {r['ssim_y']:.4f} | {r['psnr_vs_fp']:.2f} | {r['bits']:.2f} | {r['calib_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from vsrq.train.data import load_eval_set

    ap = argparse.ArgumentParser(prog="python -m vsrq.quant.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry name or checkpoint (default: the default model)")
    ap.add_argument("--eval", required=True, type=Path, help="held-out set (python -m vsrq.train.data eval)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated presets or recipe files (known: {', '.join(PRESETS)})")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip used (CPU time)")
    ap.add_argument("--clips", type=int, default=0, help="use only the first N clips (0 = all)")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    clips = load_eval_set(a.eval, a.clips, a.frames)
    loaded = load_model(a.model)
    rows = run_rows(loaded, clips, a.methods.split(","), chunk=a.chunk, overlap=a.overlap, log=lambda r: print(r, file=sys.stderr))
    header = (f"Ablation {time.strftime('%Y-%m-%d')}: model {loaded.name}, {len(clips)} held-out clips x {a.frames} frames "
              f"({', '.join(c.name for c in clips)}), CPU reference numerics, built-in calibration set.")
    table = format_rows(rows, header)
    print(table)
    if a.out:
        a.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
