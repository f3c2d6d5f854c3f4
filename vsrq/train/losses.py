"""Training losses for video SR: pixel fidelity, frequency content, and temporal consistency.

All take clips (B, C, T, H, W) in [0, 1]. Each term answers one failure: Charbonnier for overall
fidelity without the blur of L2; a frequency term because pixel losses under-weight fine texture;
a temporal term because frame-wise fidelity alone allows flicker between neighbouring frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred.float() - target.float()) ** 2 + eps * eps).mean()


def frequency_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of the 2-D spectra (real and imaginary parts), per frame, orthonormal FFT."""
    diff = torch.fft.rfft2(pred.float() - target.float(), norm="ortho")
    return diff.abs().mean()


def temporal_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the frame-to-frame changes of output and ground truth (0 for single frames)."""
    if pred.shape[2] < 2:
        return pred.new_zeros(())
    dp = pred[:, :, 1:].float() - pred[:, :, :-1].float()
    dt = target[:, :, 1:].float() - target[:, :, :-1].float()
    return (dp - dt).abs().mean()


def static_flicker(pred: torch.Tensor) -> torch.Tensor:
    """Mean |frame-to-frame change| of the output for a static scene (its truth does not change)."""
    if pred.shape[2] < 2:
        return pred.new_zeros(())
    return (pred[:, :, 1:].float() - pred[:, :, :-1].float()).abs().mean()


def static_clip(lr: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """A static scene seen through fresh noise each frame: frame 0 of `lr` repeated, plus Gaussian
    noise of `noise` code values, rounded to 8-bit codes (as docs/QUANT.md's flicker measure does).
    What a quantized model must not turn into flicker: its rounding error is re-drawn every frame."""
    first = lr[:, :, :1].expand_as(lr)
    n = torch.randn(lr.shape, generator=generator, device=lr.device, dtype=torch.float32) * (noise / 255.0)
    return ((first.float() + n) * 255.0).round().clamp(0, 255) / 255.0


@dataclass(frozen=True)
class LossWeights:
    pixel: float = 1.0
    frequency: float = 0.05
    temporal: float = 0.5
    static: float = 0.0  # output change on a static noisy clip (static_clip); 0 = no extra forward pass
    warp: float = 0.0  # motion-compensated temporal term (flow.warped_temporal_l1); needs the clips' flow
    warp_unknown: float = 1.0  # its weight on clips of unknown motion (zero flow: the in-place term); 0 = left out


def vsr_loss(pred: torch.Tensor, target: torch.Tensor, w: LossWeights = LossWeights(),
             static_pred: torch.Tensor | None = None, flow: torch.Tensor | None = None,
             flow_known: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum and its parts (detached 0-d tensors, so logging needs no device sync per step).
    `static_pred`: the model's output on a static_clip, scored by static_flicker (weight w.static);
    `flow`: the clips' forward flow (B, 2, T-1, H, W), for the warped temporal term (weight w.warp);
    `flow_known` (B,): 1 where the flow is the clip's true motion, 0 where it is a zero stand-in
    (those clips count with weight w.warp_unknown)."""
    parts = {
        "pixel": charbonnier(pred, target),
        "frequency": frequency_l1(pred, target),
        "temporal": temporal_l1(pred, target),
    }
    total = w.pixel * parts["pixel"] + w.frequency * parts["frequency"] + w.temporal * parts["temporal"]
    if static_pred is not None:
        parts["static"] = static_flicker(static_pred)
        total = total + w.static * parts["static"]
    if w.warp:
        if flow is None:
            raise ValueError("the warp loss needs the clips' flow")
        from vsrq.train.flow import warped_temporal_l1

        per_clip = None
        if flow_known is not None and w.warp_unknown != 1.0:
            known = flow_known.float()
            per_clip = known + (1.0 - known) * w.warp_unknown
        parts["warp"] = warped_temporal_l1(pred, target, flow, per_clip)
        total = total + w.warp * parts["warp"]
    return total, {k: v.detach() for k, v in parts.items()}
