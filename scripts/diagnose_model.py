"""Where a VSR model wins or loses against bicubic on held-out clips (the diagnosis in docs/MODELS.md).

Per clip: PSNR-Y of bicubic and of the model, the same after matching the mean luma to the HR
(so a brightness offset is told apart from detail), the mean luma offset, the squared-error
difference model - bicubic in dark (< 50), mid and bright (> 200) HR luma, and the mean absolute
Laplacian of the first frame (high-frequency energy) of bicubic, model and HR.

    python scripts/diagnose_model.py --eval DATA/eval --model weights.safetensors [--frames 8]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from vsrq.eval.baselines import bicubic_upscale
from vsrq.eval.metrics import psnr_y, rgb_to_y
from vsrq.models.loader import load_model
from vsrq.train.data import load_eval_set

BORDER = 4  # as vsrq eval


def float_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of float luma clips over the whole clip (for mean-matched luma, which is not uint8)."""
    c = (slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    return float(10 * np.log10(255**2 / np.mean((a[c] - b[c]) ** 2)))


def laplacian(y: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(y.astype(np.float32), cv2.CV_32F)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", type=int, default=8)
    a = ap.parse_args()
    model = load_model(a.model).module.float().eval()
    print("clip | PSNR bic / model | mean-matched bic / model | luma offset bic / model | dMSE dark / mid / bright | |lap| bic / model / HR")
    for c in load_eval_set(a.eval, 0, a.frames):
        x = torch.from_numpy(c.lr).permute(3, 0, 1, 2)[None].float() / 255
        with torch.no_grad():
            out = (model(x)[0].permute(1, 2, 3, 0).clamp(0, 1) * 255).round().numpy().astype(np.uint8)
        bic = np.asarray(bicubic_upscale(c.lr))
        yh, yb, ym = rgb_to_y(c.hr), rgb_to_y(bic), rgb_to_y(out)
        matched = [float_psnr(y - y.mean() + yh.mean(), yh) for y in (yb, ym)]
        regions = {"dark": yh < 50, "mid": (yh >= 50) & (yh <= 200), "bright": yh > 200}
        dmse = [float(((ym - yh) ** 2)[m].mean() - ((yb - yh) ** 2)[m].mean()) if m.any() else float("nan") for m in regions.values()]
        print(f"{c.name} | {psnr_y(bic, c.hr, BORDER).mean:.2f} / {psnr_y(out, c.hr, BORDER).mean:.2f} | {matched[0]:.2f} / {matched[1]:.2f} | "
              f"{yb.mean() - yh.mean():+.2f} / {ym.mean() - yh.mean():+.2f} | "
              + " / ".join(f"{d:+.1f}" for d in dmse)
              + f" | {laplacian(yb[0]):.2f} / {laplacian(ym[0]):.2f} / {laplacian(yh[0]):.2f}")


if __name__ == "__main__":
    main()
