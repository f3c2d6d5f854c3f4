"""Score any upscaler on the held-out eval set and print the comparison table.

`python -m vsrq.eval.report --eval DIR` scores the two baselines (and the ground truth's own
warping error, the floor for the temporal column), so a model's row can be read against them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .baselines import bicubic_upscale, lanczos_upscale
from .metrics import psnr_y, ssim_y, warping_error

Upscaler = Callable[[np.ndarray], np.ndarray]

__all__ = ["evaluate", "format_table", "BASELINES", "main"]

BASELINES: dict[str, Upscaler] = {"bicubic": bicubic_upscale, "lanczos3": lanczos_upscale}  # type: ignore[dict-item]


def evaluate(name: str, upscale: Upscaler | None, clips: Iterable, *, crop_border: int = 4, temporal: bool = True) -> list[dict]:
    """One row per clip: PSNR-Y, SSIM-Y (border `crop_border`), warping error with GT flow, seconds.

    `upscale` maps uint8 (T, h, w, 3) to uint8 (T, 4h, 4w, 3); None scores the ground truth itself
    (only its warping error is meaningful). `clips` are vsrq.train.data.EvalClip objects.
    """
    rows = []
    for c in clips:
        t0 = time.perf_counter()
        out = c.hr if upscale is None else np.asarray(upscale(c.lr))
        secs = time.perf_counter() - t0
        if out.shape != c.hr.shape:
            raise ValueError(f"{name} returned {out.shape} for {c.name}, expected {c.hr.shape}")
        row = {"method": name, "clip": c.name, "psnr_y": psnr_y(out, c.hr, crop_border).mean, "ssim_y": ssim_y(out, c.hr, crop_border).mean, "seconds": secs}
        if temporal:
            row["warp_err"] = warping_error(out, flow_frames=c.hr).mean
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of per-method means over clips (PSNR is averaged in dB, per frame then per clip)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = ["psnr_y", "ssim_y", "warp_err"]
    lines = ["| method | clips | PSNR-Y (dB) | SSIM-Y | warping error |", "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        vals = []
        for k in cols:
            v = [r[k] for r in rs if k in r]
            vals.append(np.mean(v) if v else float("nan"))
        warp = "-" if np.isnan(vals[2]) else f"{vals[2]:.3f}"  # not measured (--no-temporal)
        lines.append(f"| {m} | {len(rs)} | {vals[0]:.2f} | {vals[1]:.4f} | {warp} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from vsrq.train.data import load_eval_set

    ap = argparse.ArgumentParser(prog="python -m vsrq.eval.report", description="Score the baselines on an eval set.")
    ap.add_argument("--eval", required=True, type=Path, help="directory written by build_eval_set")
    ap.add_argument("--no-temporal", action="store_true", help="skip the optical-flow warping error")
    a = ap.parse_args(argv)
    clips = load_eval_set(a.eval)
    rows = evaluate("ground truth", None, clips, temporal=not a.no_temporal)
    for name, fn in BASELINES.items():
        rows += evaluate(name, fn, clips, temporal=not a.no_temporal)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
