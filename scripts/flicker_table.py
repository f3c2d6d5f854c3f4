"""Per-layer flicker table of a quantized model (issue 4: which 4-bit activations make it flicker).

For every QuantLinear of the model (default: the shipped `vsrq-tiny`), with that layer *alone*
switched to 8-bit activations (weights unchanged, `vsrq.quant.flicker.with_act_bits`):
  * flicker   - error flicker on static noisy calibration clips (`error_flicker`: RMS frame-to-
                frame change of the error against the full-precision model, [0, 1] units x 1e3)
  * pert      - mean |output change| for a 1e-6 input perturbation (x 1e3)
  * warp/psnr - warping error and PSNR-Y on held-out clips through `vsrq eval`'s functions
and, for the layer in the float model alone (as mixed precision measures), its flicker with 4-
and 8-bit activations ("alone A4/A8"), plus statistics that might predict it: activation values
per token (K), mean quantization step, share of values within 1e-3 steps of a rounding boundary,
share of codes flipping between frames of the static clip, mean change of the layer output those
flips cause, and the downstream gain of the layer's output in the float model.

    python scripts/flicker_table.py --eval data/eval --clips bigbuckbunny-3,ColorfulCups-0,Path-0 --frames 8

`--checkpoints a,b,...` instead scores whole checkpoints on the same held-out clips (quick
comparison of candidate recipes) and prints one row each.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from vsrq.eval.report import evaluate
from vsrq.models.loader import LoadedModel, load_model
from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions, upscale_clip
from vsrq.quant.calibrate import default_calibration_clips
from vsrq.quant.checkpoint import set_module
from vsrq.quant.engine import fold_constants
from vsrq.quant.flicker import (activation_stats, downstream_gain, flicker_score, perturbation_sensitivity,
                                static_clip, with_act_bits)
from vsrq.quant.qlinear import QuantLinear


def held_out(model: torch.nn.Module, clips: list, name: str) -> tuple[float, float]:
    """(PSNR-Y, warping error) means over `clips`, exactly as `vsrq eval` scores a model."""
    if not clips:
        return float("nan"), float("nan")
    up = ChunkUpscaler(LoadedModel(name, model, "mixed", None), UpscaleOptions(chunk=8, overlap=2, device="cpu"))  # type: ignore[arg-type]
    rows = evaluate(name, lambda lr: upscale_clip(up, lr), clips, temporal=True)
    return float(np.mean([r["psnr_y"] for r in rows])), float(np.mean([r["warp_err"] for r in rows]))


def rms(v: float) -> float:
    """A squared flicker score as an RMS change in 1e-3 pixel units."""
    return 1e3 * float(np.sqrt(v))


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected): does a predictor order the layers like the measurement?"""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def eval_clips(a: argparse.Namespace) -> list:
    """The named held-out clips, first `--frames` frames (none without --eval)."""
    if not a.eval:
        return []
    from vsrq.train.data import load_eval_set

    wanted = a.clips.split(",")
    return [c for c in load_eval_set(a.eval, 0, a.frames) if c.name in wanted]


def score_checkpoints(specs: list[str], clips: list) -> None:
    """One row per model: PSNR-Y, warping error, bits/weight and share of 8-bit activations."""
    print("| model | PSNR-Y | warping error | bits/weight | activations at 8 bits |\n|---|---|---|---|---|")
    for spec in specs:
        loaded = load_model(spec)
        psnr, warp = held_out(loaded.module.float().eval(), clips, loaded.name)
        rep = loaded.quant
        print(f"| {loaded.name} | {psnr:.2f} | {warp:.3f} | {rep.get('bits_per_weight', 16.0):.2f} | "
              f"{rep.get('act_bits_8_share', float('nan')):.2f} |", flush=True)


def whole_row(model: torch.nn.Module, score, static: torch.Tensor, clips: list, name: str) -> dict:
    """Flicker score, 1e-6 perturbation sensitivity and held-out PSNR-Y / warping error of a model."""
    r = {"flicker": score(model), "pert": perturbation_sensitivity(model, static)[0]}
    r["psnr"], r["warp"] = held_out(model, clips, name)
    return r


def layer_row(qm: torch.nn.Module, fp: torch.nn.Module, n: str, score, static: torch.Tensor, clips: list) -> dict:
    """Layer `n` alone at A8 in the quantized model, and alone at A4 / A8 in the float model."""
    low = qm.get_submodule(n)
    high = with_act_bits(low, 8)
    set_module(qm, n, high)
    r = {"name": n, "K": low.in_features, **whole_row(qm, score, static, clips, n)}
    set_module(qm, n, low)
    orig = fp.get_submodule(n)
    for key, layer in (("alone4", low), ("alone8", high)):
        set_module(fp, n, layer)
        r[key] = score(fp)
    set_module(fp, n, orig)
    r["gain"] = downstream_gain(fp, n, static)
    return r


def print_table(rows: list[dict], stats: dict) -> None:
    print("| layer (alone at A8) | K | flicker x1e3 | pert x1e3 | warp | PSNR-Y | alone A4 / A8 x1e3 | step | near bound. | flip rate | flip effect | gain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["flicker"]):
        s = stats[r["name"]]
        print(f"| {r['name']} | {r['K']} | {rms(r['flicker']):.2f} | {1e3 * r['pert']:.2f} | {r['warp']:.3f} | {r['psnr']:.2f} | "
              f"{rms(r['alone4']):.2f} / {rms(r['alone8']):.2f} | {s.step:.3g} | {s.near_boundary:.4f} | {s.flip_rate:.3f} | "
              f"{s.flip_effect:.3g} | {r['gain']:.3g} |")


def print_correlations(rows: list[dict], stats: dict, base: dict, held: bool) -> None:
    """How well each per-layer number orders the layers by what raising them to A8 removes."""
    measured = ("flicker", "pert", "warp") if held else ("flicker", "pert")
    drop = {k: [base[k] - r[k] for r in rows] for k in measured}
    predict = {"flip effect x gain": [stats[r["name"]].flip_effect * r["gain"] for r in rows],
               "step x gain": [stats[r["name"]].step * r["gain"] for r in rows],
               "near boundary": [stats[r["name"]].near_boundary for r in rows],
               "flip rate": [stats[r["name"]].flip_rate for r in rows],
               "alone A4 - A8": [r["alone4"] - r["alone8"] for r in rows]}
    print(f"\nSpearman rank correlation with the drop when the layer alone goes to A8 ({' / '.join(measured)}):")
    for k, v in predict.items():
        print(f"  {k}: " + " / ".join(f"{spearman(v, drop[m]):+.2f}" for m in measured))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vsrq-tiny", help="quantized model (registry name or file)")
    ap.add_argument("--fp", default="vsrq-tiny-fp16", help="its full-precision model")
    ap.add_argument("--eval", default="data/eval", help="held-out set ('' to skip the warping-error columns)")
    ap.add_argument("--clips", default="bigbuckbunny-3,ColorfulCups-0,Path-0", help="held-out clip names")
    ap.add_argument("--frames", type=int, default=8, help="frames per held-out clip")
    ap.add_argument("--calib", type=int, default=2, help="built-in calibration clips made static for the flicker score")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoints", default="", help="comma-separated models to score whole on the clips (no table)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started = time.perf_counter()
    if a.checkpoints:
        score_checkpoints(a.checkpoints.split(","), eval_clips(a))
        return
    qm = load_model(a.model).module.float().eval()
    fp = fold_constants(load_model(a.fp).module.float().eval())
    names = [n for n, m in qm.named_modules() if isinstance(m, QuantLinear)]
    statics = [static_clip(c) for c in default_calibration_clips()[: a.calib]]
    with torch.no_grad():
        score = flicker_score(statics, [fp(s) for s in statics])  # mean over the clips, squared
    clips = eval_clips(a)
    stats = activation_stats(qm, names, statics[0])
    refs = {"fp": whole_row(fp, score, statics[0], clips, "fp"), "all A4 (as shipped)": whole_row(qm, score, statics[0], clips, "all A4")}
    rows = []
    for n in names:
        rows.append(layer_row(qm, fp, n, score, statics[0], clips))
        print(f"# {n} done at {time.perf_counter() - started:.0f} s", flush=True)
    all8 = copy.deepcopy(qm)
    for n in names:
        set_module(all8, n, with_act_bits(all8.get_submodule(n), 8))
    refs["every layer A8"] = whole_row(all8, score, statics[0], clips, "all A8")
    print(f"\nmodel {a.model}; flicker on {a.calib} static calibration clips; held-out {', '.join(c.name for c in clips)} x {a.frames} frames")
    print(" | ".join(f"{k}: flicker {rms(r['flicker']):.2f} pert {1e3 * r['pert']:.2f} psnr {r['psnr']:.2f} warp {r['warp']:.3f}"
                     for k, r in refs.items()) + "\n")
    print_table(rows, stats)
    print_correlations(rows, stats, refs["all A4 (as shipped)"], bool(clips))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
