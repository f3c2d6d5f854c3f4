"""Layer-level quantization methods: each turns (a linear layer, its calibration inputs) into a QuantLinear.

Every method is scored the same way: the output error of the quantized layer against the
full-precision layer on the layer's own sampled calibration tokens (`layer_error`). Search-based
methods (SmoothQuant's alpha, Q-DiT's granularity) pick the candidate with the least error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vsrq.quant.binres import binary_k_for, branch_bits, fit_binary_residual
from vsrq.quant.calibrate import LayerStats
from vsrq.quant.pack import DEFAULT_CLIP_RATIOS, dequantize_weight, fake_quant_activation, fake_quant_weight, quantize_weight
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import Recipe

SMOOTH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class LayerChoice:
    """What was decided for one layer, and how well it reproduces the layer (for the report)."""

    name: str
    group_size: int | None
    rank: int
    smooth_alpha: float | None
    hadamard_block: int
    sqnr_db: float
    bits_per_weight: float
    act_clip: float = 1.0
    a_bits: int = 0  # activation bits (0: not recorded, reports written before it existed)
    binary_k: int = 0  # binary residual entries per output row (MPQ-DMv2-style branch)
    weight_clip: float = 1.0  # weight range ratio chosen with the binary branch (1 = plain RTN)
    smooth_stat: str | None = None  # which activation statistic the smoothing vector came from ("max" | "static")

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@torch.no_grad()
def layer_error(linear: nn.Linear, q: QuantLinear, x: torch.Tensor) -> tuple[float, float]:
    """(mean squared output error, SQNR in dB) of `q` against `linear` on inputs x (M, K)."""
    ref = linear(x.to(linear.weight.dtype)).float()
    out = q(x.float()).float()
    mse = float(((out - ref) ** 2).mean())
    power = float((ref**2).mean())
    return mse, 10 * math.log10(power / max(mse, 1e-20))


def hadamard_block_for(k: int, largest: int = 128) -> int:
    """The largest power of two <= `largest` dividing K (0 if K is odd: no rotation possible)."""
    b = 1
    while b * 2 <= largest and k % (b * 2) == 0:
        b *= 2
    return b if b > 1 else 0


def smoothing_vector(weight: torch.Tensor, act_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), moving activation outliers into weights."""
    w_max = weight.detach().float().abs().amax(0).clamp_min(1e-5)
    a_max = act_absmax.float().clamp_min(1e-5)
    s = a_max.pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(1e-4, 1e4)


def bits_per_weight(q: QuantLinear) -> float:
    """Storage bits per weight of the layer: values, scales (16-bit), zero points, low-rank factors,
    smoothing vector (fp32) and the binary residual branch (indices, sign bits, fp16 row scales)."""
    n, k = q.out_features, q.in_features
    groups = q.wscale.shape[1]
    bits = n * k * q.w_bits + n * groups * 16
    if q.wzero is not None:
        bits += n * groups * 8
    if q.rank:
        bits += (n + k) * q.rank * 16
    if q.smooth is not None:
        bits += k * 32
    bits += branch_bits(q)
    return bits / (n * k)


def build(linear: nn.Linear, recipe: Recipe, *, group_size: int | None, rank: int, smooth: torch.Tensor | None, hadamard_block: int) -> QuantLinear:
    """RTN (plus optional smoothing, rotation and the SVDQuant low-rank split) of one layer."""
    agroup = recipe.act_group_size if recipe.act_group_size is not None else ("same" if group_size else None)
    return QuantLinear.from_linear(
        linear, bits=recipe.w_bits, act_bits=recipe.a_bits, group_size=group_size, act_group_size=agroup,
        symmetric=recipe.symmetric, rank=rank,
        smooth=smooth, hadamard_block=hadamard_block, bias_align=recipe.bias_align is not None,
        binary_k=binary_k_for(recipe.binary_residual, linear.in_features),
    )


@torch.no_grad()
def lowrank_from_error(linear: nn.Linear, q: QuantLinear) -> None:
    """MPQ-DMv2 initialisation: keep Q(W') as the low-bit branch and let the low-rank branch be the
    top-r SVD of the quantization error W' - Q(W'), instead of the top of W' itself."""
    w = QuantLinear.transform_weight(linear.weight, q.smooth, q.hadamard_block)
    qi, scale, zero = quantize_weight(w, q.w_bits, q.group_size, q.symmetric, q.wscale.dtype)
    q.set_quantized_weight(qi, scale, zero)
    err = w - dequantize_weight(qi, scale, zero, q.group_size).float()
    u, s, vh = torch.linalg.svd(err, full_matrices=False)
    root = s[: q.rank].sqrt()
    q.lora_down.copy_((vh[: q.rank].T * root[None, :]).to(q.lora_down.dtype))
    q.lora_up.copy_((root[:, None] * u[:, : q.rank].T).to(q.lora_up.dtype))


@torch.no_grad()
def align_bias(linear: nn.Linear, q: QuantLinear, x: torch.Tensor) -> None:
    """LBA in closed form: the mean output error over calibration tokens is the biased part of the
    quantization error; a bias of that value cancels it (the learnable version starts here)."""
    q.bias_align.zero_()
    ref = linear(x.to(linear.weight.dtype)).float()
    q.bias_align.copy_((ref - q(x.float()).float()).mean(0))


@torch.no_grad()
def fit_layer_act_clip(linear: nn.Linear, q: QuantLinear, x: torch.Tensor) -> float:
    """DRAQ (LSGQuant): a per-layer activation range ratio for the layer's token-range distribution.

    Video tokens differ in range by orders of magnitude; clipping each token's range by a ratio
    gamma <= 1 trades a few saturated values for finer steps everywhere else. gamma is chosen by
    the layer's *output* error on its calibration tokens (which also sees the weights' error),
    among DEFAULT_CLIP_RATIOS; 1.0 (no clipping) is always a candidate, so it never hurts."""
    best = (layer_error(linear, q, x)[0], 1.0)
    for r in DEFAULT_CLIP_RATIOS:
        if r >= 1.0:
            continue
        q.set_act_clip(r)
        best = min(best, (layer_error(linear, q, x)[0], r))
    q.set_act_clip(best[1])
    return best[1]


def smoothing_statistics(stats: LayerStats, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Per-channel activation ranges a smoothing vector may be computed from.

    "max": over every calibration token (SmoothQuant; ViDiT-Q's static scale calibrated over all
    timesteps, on this one-timestep model over all clips). With ViDiT-Q's static-dynamic
    balancing (`balance = "static-dynamic"`) also "static": per channel, the median over the
    calibration clips of each clip's range, i.e. the imbalance the clips share; what one clip
    has beyond it is left to the online rotation and the dynamic per-token scales."""
    out = {"max": stats.chan_absmax}
    if recipe.balance == "static-dynamic":
        static = stats.static_absmax()
        if static is not None:
            out["static"] = static
    return out


def quantize_layer(linear: nn.Linear, stats: LayerStats, recipe: Recipe, *, group_size: int | None, rank: int) -> tuple[QuantLinear, LayerChoice]:
    """One layer through the recipe's steps; returns the module and what was chosen."""
    x = stats.x
    k = linear.in_features
    had = hadamard_block_for(k) if recipe.rotate else 0
    rank = min(rank, k, linear.out_features, 128)
    alphas: tuple[float | None, ...] = (None,)
    if recipe.smooth == "fixed":
        alphas = (recipe.smooth_alpha,)
    elif recipe.smooth == "search":
        alphas = (None, *SMOOTH_ALPHAS)  # no smoothing stays a candidate: the search never makes a layer worse
    ranges = smoothing_statistics(stats, recipe) if recipe.smooth else {}
    candidates = [(a, st) for a in alphas for st in (ranges if a is not None else (None,))]
    best: tuple[float, QuantLinear, float | None, str | None] | None = None
    for alpha, stat in candidates:
        sm = None if alpha is None else smoothing_vector(linear.weight, ranges[stat], alpha)
        q = build(linear, recipe, group_size=group_size, rank=rank, smooth=sm, hadamard_block=had)
        if rank and recipe.lowrank_init == "svd_error":
            lowrank_from_error(linear, q)
        mse, _ = layer_error(linear, q, x)
        if best is None or mse < best[0]:
            best = (mse, q, alpha, stat)
    assert best is not None
    _, q, alpha, stat = best
    wclip = fit_binary_residual(linear, q, x) if q.binary_k else 1.0
    clip = 1.0
    if recipe.act_clip == "draq":
        clip = fit_layer_act_clip(linear, q, x)
    if recipe.bias_align is not None:
        align_bias(linear, q, x)
    _, sqnr = layer_error(linear, q, x)
    return q, LayerChoice(stats.name, q.group_size, q.rank, alpha, had, sqnr, bits_per_weight(q), clip, q.a_bits,
                          q.binary_k, wclip, stat)


def group_candidates(k: int) -> list[int | None]:
    return [None] + [g for g in (128, 64, 32) if k % g == 0 and g < k]


@torch.no_grad()
def search_granularity(linears: dict[str, nn.Linear], stats: dict[str, LayerStats], recipe: Recipe, budget_extra_bits: float = 0.25) -> dict[str, int | None]:
    """Q-DiT: per-layer weight/activation group size. Start per-channel everywhere, then give finer
    groups where they cut the output error most per extra stored bit, until the model's average
    scale overhead reaches `budget_extra_bits` bits per weight above per-channel."""
    choice: dict[str, int | None] = {n: None for n in linears}
    options = []
    total_weights = sum(l.weight.numel() for l in linears.values())
    for name, lin in linears.items():
        x = stats[name].x
        errs = {}
        for g in group_candidates(lin.in_features):
            w = fake_quant_weight(lin.weight.float(), recipe.w_bits, g, recipe.symmetric)
            agroup = g if recipe.act_group_size is None else recipe.act_group_size
            xq = fake_quant_activation(x, recipe.a_bits, agroup) if recipe.a_bits <= 8 else x
            out = xq @ w.T
            ref = x @ lin.weight.float().T
            errs[g] = float(((out - ref) ** 2).mean() / (ref**2).mean().clamp_min(1e-20))
        for g, e in errs.items():
            if g is None:
                continue
            extra = 16 * lin.weight.shape[0] * (lin.in_features // g - 1)  # more 16-bit scales
            gain = errs[None] - e
            if gain > 0:
                options.append((gain / extra, name, g, extra))
    spent = 0.0
    for _, name, g, extra in sorted(options, key=lambda o: -o[0]):
        cur = choice[name]
        if cur is not None and (g is None or cur <= g):
            continue
        cur_extra = 0 if cur is None else 16 * linears[name].weight.shape[0] * (linears[name].in_features // cur - 1)
        if spent - cur_extra + extra > budget_extra_bits * total_weights:
            continue
        spent += extra - cur_extra
        choice[name] = g
    return choice


def allocate_ranks(names: list[str], stats: dict[str, LayerStats], recipe: Recipe, linears: dict[str, nn.Linear]) -> dict[str, int]:
    """Uniform ranks, or QuantVSR's STCA: the same total rank spread in proportion to each layer's
    spatial + temporal complexity on the calibration clips (multiples of 4, at least 4)."""
    if recipe.rank == 0:
        return {n: 0 for n in names}
    if recipe.rank_alloc == "uniform":
        return {n: recipe.rank for n in names}
    cx = {n: stats[n].spatial_complexity + stats[n].temporal_complexity for n in names}
    total_cx = sum(cx.values()) or 1.0
    budget = recipe.rank * len(names)
    out = {}
    for n in names:
        cap = min(128, linears[n].in_features, linears[n].out_features)
        r = int(round(budget * cx[n] / total_cx / 4)) * 4
        out[n] = max(4, min(cap, r))
    return out
