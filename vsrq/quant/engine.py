"""Post-training quantization of a whole model: calibrate, decide per layer, swap in QuantLinears.

torchao-style: the recipe is configuration, the model is changed only by swapping modules, and
the result is an ordinary nn.Module whose QuantLinears run the fused kernels on CUDA and the
reference on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from vsrq.models.interfaces import FoldableModel
from vsrq.quant.calibrate import LayerStats, calibrate, target_layers
from vsrq.quant.checkpoint import set_module
from vsrq.quant.methods import LayerChoice, allocate_ranks, quantize_layer, search_granularity
from vsrq.quant.recipe import Recipe


@dataclass
class QuantResult:
    model: nn.Module
    choices: list[LayerChoice]
    stats: dict[str, LayerStats]
    calib_seconds: float
    quant_seconds: float
    refine: dict | None = None  # [refine] summary of vsrq.quant.refine.refine_model, when it ran
    mixed: dict = field(default_factory=dict)  # mixed-precision plan, when the recipe asks for one

    def report(self, recipe: Recipe) -> dict:
        """What goes into the checkpoint metadata and --report: recipe, per-layer choices, calibration summary."""
        quant = [c for c in self.choices]
        total_w = sum(self.model.get_submodule(c.name).in_features * self.model.get_submodule(c.name).out_features for c in quant)
        bpw = sum(c.bits_per_weight * self.model.get_submodule(c.name).in_features * self.model.get_submodule(c.name).out_features for c in quant) / max(1, total_w)
        return {
            "recipe": recipe.to_dict(),
            "layers": [c.to_dict() for c in self.choices],
            "calibration": {name: st.summary() for name, st in self.stats.items()},
            "calib_seconds": round(self.calib_seconds, 2),
            "quant_seconds": round(self.quant_seconds, 2),
            "bits_per_weight": bpw,
            "act_bits_8_share": act_share(self.model, [c.name for c in quant]),
            "min_sqnr_db": min((c.sqnr_db for c in self.choices), default=float("nan")),
            **({"refine": self.refine} if self.refine is not None else {}),  # [refine]
            **({"mixed": self.mixed} if self.mixed else {}),
        }


    def precision(self) -> str:
        """The checkpoint's label from what its layers hold: the lowest weight and activation bits
        of any quantized layer (a recipe that raised every activation to 8 bits is W4A8)."""
        mods = [self.model.get_submodule(c.name) for c in self.choices]
        w = min((getattr(m, "w_bits", 16) for m in mods), default=16)
        a = min((getattr(m, "a_bits", 16) for m in mods), default=16)
        return f"w{w}a{a}"


def act_share(model: nn.Module, names: list[str], bits: int = 8) -> float:
    """Share of the activation values per token (input widths) of `names` quantized with >= `bits`."""
    mods = [model.get_submodule(n) for n in names]
    total = sum(m.in_features for m in mods)
    return sum(m.in_features for m in mods if getattr(m, "a_bits", 16) >= bits) / max(total, 1)


def fold_constants(model: nn.Module) -> nn.Module:
    """Fold a model's constant adaLN modulation into stored vectors, in place (models without one
    are returned as they are).

    This runs before calibration, not after quantization: the fold is exact and removes the
    layers, so the vectors cost the same few numbers whatever precision the layers had, and a
    quantized adaLN would only add error to them. Folding first also means calibration, the
    mixed-precision sensitivity and refinement never see those layers (whatever `keep` says),
    and the low-bit layers are fitted to the same modulation the checkpoint stores.
    """
    if isinstance(model, FoldableModel):
        model.fold_modulation_()
    return model


def _plan_flicker(model: nn.Module, names: list[str], tags: dict[str, str], recipe: Recipe,
                  make: Callable, clips: list[torch.Tensor]) -> dict:
    """Raise the activations of the layers that flicker most (flicker.py) to `flicker_bits`, within
    `flicker_budget` of all quantized layers' activation values; updates `tags`, returns the plan."""
    from vsrq.quant.flicker import act_budget_bits, activation_count, plan_flicker_precision

    cands = [n for n in names if n not in tags]
    values = {n: activation_count(model.get_submodule(n)) for n in names}
    budget = act_budget_bits(recipe.flicker_budget, recipe.a_bits, recipe.flicker_bits, sum(values.values()),
                             sum(values[n] for n in cands))
    act_recipe = replace(recipe, a_bits=recipe.flicker_bits, mixed_budget=0.0, flicker_budget=0.0)
    raised, sens = plan_flicker_precision(model, cands, make(recipe, "low", True), make(act_recipe, "act", True), clips, budget)
    tags.update(dict.fromkeys(raised, "act"))
    return {"budget": recipe.flicker_budget, "bits": recipe.flicker_bits, "raised": sorted(raised),
            "sensitivity": [{"name": s.name, "flicker_low": s.err_low, "flicker_high": s.err_high} for s in sens]}


def quantize_model(
    model: nn.Module,
    recipe: Recipe,
    clips: Iterable[torch.Tensor],
    progress: Callable[[str], None] | None = None,
) -> QuantResult:
    """Quantize a copy of `model` (float, eval mode) with `recipe`, calibrated on `clips` (1, 3, T, H, W)."""
    torch.manual_seed(recipe.seed)
    model = copy.deepcopy(model).float().eval()
    if recipe.fold_modulation:
        fold_constants(model)
    # [refine] gradient refinement needs the FP model and re-reads the clips after calibration
    refining = bool(recipe.refine) or recipe.bias_align == "learn"
    fp_model = copy.deepcopy(model) if refining else None
    clips = list(clips) if refining or recipe.mixed_budget or recipe.flicker_budget else clips
    names = target_layers(model, recipe.keep)
    stats, calib_s = calibrate(model, names, clips, recipe.calib_tokens, recipe.seed)
    started = time.perf_counter()
    linears = {n: model.get_submodule(n) for n in names}
    groups = search_granularity(linears, stats, recipe) if recipe.granularity_search else {n: recipe.group_size for n in names}
    ranks = allocate_ranks(names, stats, recipe, linears)
    made: dict[tuple[str, str], tuple] = {}  # (layer, 'low'|'high'|'act') -> quantize_layer's result

    def make(r: Recipe, tag: str, act_bits: bool = False) -> Callable[[str], tuple[nn.Module, float]]:
        """Layer factory for a plan: (module, its bits per weight, or its activation bits)."""
        def one(n: str):
            if (n, tag) not in made:
                made[(n, tag)] = quantize_layer(linears[n], stats[n], r, group_size=groups[n], rank=ranks[n])
            q, choice = made[(n, tag)]
            return q, float(q.a_bits) if act_bits else choice.bits_per_weight
        return one

    tags: dict[str, str] = {}  # layer -> which of `made` it gets; 'low' when absent
    mixed: dict = {}
    if recipe.mixed_budget:
        from vsrq.quant.mixed import plan_mixed_precision

        high_recipe = replace(recipe, w_bits=recipe.mixed_bits, a_bits=recipe.mixed_bits, mixed_budget=0.0, flicker_budget=0.0)
        promoted, sens = plan_mixed_precision(model, names, make(recipe, "low"), make(high_recipe, "high"), clips[0], recipe.mixed_budget)
        tags.update(dict.fromkeys(promoted, "high"))
        mixed = {"budget": recipe.mixed_budget, "bits": recipe.mixed_bits, "promoted": sorted(promoted),
                 "sensitivity": [{"name": s.name, "err_low": s.err_low, "err_high": s.err_high} for s in sens]}
    if recipe.flicker_budget:
        mixed["flicker"] = _plan_flicker(model, names, tags, recipe, make, clips)
    choices = []
    for i, name in enumerate(names):
        tag = tags.get(name, "low")
        if (name, tag) in made:
            q, choice = made[(name, tag)]
        else:
            q, choice = quantize_layer(linears[name], stats[name], recipe, group_size=groups[name], rank=ranks[name])
        set_module(model, name, q)
        choices.append(choice)
        if progress is not None:
            progress(f"[{i + 1}/{len(names)}] {name}: {choice.sqnr_db:.1f} dB SQNR, {choice.bits_per_weight:.2f} bits/weight")
    # [refine] begin: after all layers are quantized (needs the calibration samples, cleared below)
    refine_summary = None
    if refining:
        from vsrq.quant.refine import refine_model

        refine_summary = refine_model(fp_model, model, clips, recipe, stats, log=progress)
        for c in choices:  # the report's SQNR describes the refined layer
            c.sqnr_db = refine_summary["layers"].get(c.name, {}).get("sqnr_db", c.sqnr_db)
    # [refine] end
    for st in stats.values():
        st.samples.clear()  # the samples were for fitting; the summary stays
    return QuantResult(model, choices, stats, calib_s, time.perf_counter() - started, refine_summary, mixed)  # [refine]
