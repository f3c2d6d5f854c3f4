"""Mixed precision by measured sensitivity under a bit budget (MPQ-style layer-wise bit allocation).

Per-layer SQNR says how well a layer reproduces itself, not how much its error costs the model's
output: an early attention projection can matter more than a late MLP with worse SQNR. So each
candidate layer is put in the low-bit form *alone* into the float model and the change of the
model's output on a calibration clip is measured; layers are then promoted to the higher
precision in order of error removed per extra weight bit, while the average bits per weight stay
within the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vsrq.quant.checkpoint import set_module


@dataclass
class LayerSensitivity:
    name: str
    params: int  # cost units: weights, or activation values per token (flicker.py)
    err_low: float  # score (default: model output MSE) with only this layer in the low-bit form
    err_high: float  # same with the higher-precision form
    bits_low: float
    bits_high: float

    @property
    def gain_per_bit(self) -> float:
        extra = (self.bits_high - self.bits_low) * self.params
        return (self.err_low - self.err_high) / max(extra, 1e-9)


def weight_count(layer: nn.Module) -> int:
    """Weights of a linear layer: the cost unit of weight (W and A) bit allocation."""
    return int(layer.in_features * layer.out_features)


def output_error(clip: torch.Tensor, ref: torch.Tensor) -> Callable[[nn.Module], float]:
    """The default sensitivity score: MSE of the model's output on `clip` against `ref`."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        return float(((model(clip).float() - ref) ** 2).mean())

    return score


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    candidates: dict[str, tuple[nn.Module, nn.Module, float, float]],
    clip: torch.Tensor,
    score: Callable[[nn.Module], float] | None = None,
    cost: Callable[[nn.Module], int] = weight_count,
) -> list[LayerSensitivity]:
    """For each layer name -> (low module, high module, low bits, high bits), `score` of the model
    with that one layer swapped in (all others as they are in `model`); default: the output MSE on
    `clip` against the model's own output. `cost` gives the units the bits are counted in (weights
    by default; activation values per token for activation-only promotion, see flicker.py)."""
    score = score or output_error(clip, model(clip).float())
    out = []
    for name, (low, high, b_low, b_high) in candidates.items():
        original = model.get_submodule(name)
        errs = []
        for q in (low, high):
            set_module(model, name, q)
            errs.append(score(model))
        set_module(model, name, original)
        out.append(LayerSensitivity(name, cost(original), errs[0], errs[1], b_low, b_high))
    return out


def allocate_bits(sens: list[LayerSensitivity], budget_bits: float) -> set[str]:
    """Names promoted to the high precision: greedy by error removed per extra bit, while the
    parameter-weighted average bits per weight stays <= budget_bits."""
    total = sum(s.params for s in sens)
    used = sum(s.bits_low * s.params for s in sens)
    promoted: set[str] = set()
    for s in sorted(sens, key=lambda s: s.gain_per_bit, reverse=True):
        if s.err_low <= s.err_high:
            continue  # the higher precision does not help this layer
        extra = (s.bits_high - s.bits_low) * s.params
        if (used + extra) / max(total, 1) <= budget_bits + 1e-9:
            promoted.add(s.name)
            used += extra
    return promoted


def plan_mixed_precision(
    model: nn.Module,
    names: list[str],
    make_low: Callable[[str], tuple[nn.Module, float]],
    make_high: Callable[[str], tuple[nn.Module, float]],
    clip: torch.Tensor,
    budget_bits: float,
    score: Callable[[nn.Module], float] | None = None,
    cost: Callable[[nn.Module], int] = weight_count,
) -> tuple[set[str], list[LayerSensitivity]]:
    """Measure every layer's sensitivity in both forms and pick the promoted set under the budget
    (`score` and `cost` as in `measure_sensitivity`; the flicker plan passes its own)."""
    candidates = {}
    for n in names:
        low, b_low = make_low(n)
        high, b_high = make_high(n)
        candidates[n] = (low, high, b_low, b_high)
    sens = measure_sensitivity(model, candidates, clip, score, cost)
    return allocate_bits(sens, budget_bits), sens
