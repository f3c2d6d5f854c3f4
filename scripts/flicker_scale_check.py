"""Would a time-consistent activation scale stop the W4A4 flicker? An emulation, not a feature.

The flicker mechanism could be the dynamic per-token scale: codec noise moves a token's absmax,
which moves every value of the token against the rounding grid. If so, a scale shared by the
tokens of one position across the frames of an attention window (4 frames) would remove much of
the flicker. This script emulates that in the CPU reference quantizer (it patches
`vsrq.kernels.reference.quantize_act_groups` for the run: the shipped kernels cannot do it) and
also tries DRAQ off (clip ratio 1, i.e. no saturation), on the shipped model, reporting the error
flicker on static noisy calibration clips (`vsrq.quant.flicker`) and the output PSNR against the
full-precision model on the moving calibration clips.

    python scripts/flicker_scale_check.py
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

import vsrq.kernels.reference as reference
from vsrq.models.loader import load_model
from vsrq.quant.calibrate import default_calibration_clips
from vsrq.quant.engine import fold_constants
from vsrq.quant.flicker import error_flicker, static_clip
from vsrq.quant.pack import div_by_int, int_range, round_half_up
from vsrq.quant.qlinear import QuantLinear

WINDOW_TOKENS, WINDOW_FRAMES = 256, 4  # vsrq-tiny: windows of 4 x 8 x 8 tokens, frames outermost


def time_shared(original: Callable) -> Callable:
    """quantize_act_groups with each token's absmax replaced by the max over the window's frames
    at the same position (inputs in window order; other shapes fall through unchanged)."""

    def quantize(xg: torch.Tensor, bits: int, clip_ratio: float = 1.0):
        m = xg.shape[0]
        if xg.dim() != 3 or m % WINDOW_TOKENS:
            return original(xg, bits, clip_ratio)
        amax = xg.abs().amax(-1).reshape(m // WINDOW_TOKENS, WINDOW_FRAMES, WINDOW_TOKENS // WINDOW_FRAMES, -1)
        amax = amax.amax(1, keepdim=True).expand_as(amax).reshape(m, -1)
        qmin, qmax = int_range(bits, signed=True)
        scale = div_by_int(amax * clip_ratio, qmax)  # the quantizer's own convention, shared absmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.clamp(round_half_up(xg * (1.0 / scale)[..., None]), qmin, qmax), scale

    return quantize


def main() -> None:
    torch.set_num_threads(1)
    qm = load_model("vsrq-tiny").module.float().eval()
    fp = fold_constants(load_model("vsrq-tiny-fp16").module.float().eval())
    calib = default_calibration_clips()[:2]
    statics = [static_clip(c) for c in calib]
    with torch.no_grad():
        refs_static, refs = [fp(s) for s in statics], [fp(c) for c in calib]

    def report(tag: str) -> None:
        with torch.no_grad():
            fl = sum(error_flicker(qm(s), r) for s, r in zip(statics, refs_static)) / len(statics)
            mse = sum(float(((qm(c) - r) ** 2).mean()) for c, r in zip(calib, refs)) / len(calib)
        print(f"| {tag} | {1e3 * math.sqrt(fl):.2f} | {10 * math.log10(1 / mse):.2f} |", flush=True)

    print("| activation scale | error flicker RMS x1e3 | output PSNR vs fp (dB) |\n|---|---|---|")
    report("per token, dynamic (shipped)")
    original = reference.quantize_act_groups
    reference.quantize_act_groups = time_shared(original)
    try:
        report("shared by a position's 4 frames (emulated)")
    finally:
        reference.quantize_act_groups = original
    for m in qm.modules():
        if isinstance(m, QuantLinear):
            m.set_act_clip(1.0)
    report("per token, DRAQ off (clip ratio 1)")


if __name__ == "__main__":
    main()
