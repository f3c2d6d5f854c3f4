"""Flicker sensitivity: which activation quantizers make a low-bit model unsteady in time.

Why this exists (issue 4): a W4A4 model is piecewise constant in its input, with large steps.
Codec noise changes a static scene's input by a code value or two from frame to frame; every
4-bit activation rounding that the noise flips moves the output, and a flip early in the network
shifts the inputs of all later quantizers, which flip in turn. The quantization error is then
re-drawn every frame and the model flickers although its PSNR is fine (docs/QUANT.md). Weight
rounding does not do this (a layer with rounded weights is still smooth in its input), so flicker
is a property of the *activation* quantizers: raising them to 8 bits (16x finer steps, weights
unchanged) removes it. On vsrq-tiny no few layers carry it (docs/QUANT.md, 2026-11-23): one code
value of noise flips 2-62 % of a layer's 4-bit codes between frames (more in later blocks), the
MLP layers matter most, and the flicker falls about in proportion to the share of activations
raised.

The measure (`error_flicker`): run the model on a static scene seen through fresh codec-like
noise in every frame (`static_clip`), take its error against the full-precision model's output
on the same frames, and average how much that error changes from one frame to the next. The
static part of the quantization error cancels; what is left is exactly what a warping error
sees on static content. `plan_flicker_precision` is mixed precision (`vsrq.quant.mixed`) with that
score and activation values per token as the cost: every layer is scored alone with its
activations in the low and in the high precision, and the same greedy budgeted choice picks the
layers to raise. The engine does this when a recipe sets `flicker_budget`.

The other functions are diagnostics for `scripts/flicker_table.py`: the output's sensitivity
to a tiny input perturbation (how close the model sits to its rounding boundaries), and per-layer
activation statistics that could predict flicker without running the model per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vsrq.kernels.reference import transform_input
from vsrq.models.interfaces import VSRModel
from vsrq.quant.mixed import LayerSensitivity, plan_mixed_precision
from vsrq.quant.pack import int_range, quantize_act_groups
from vsrq.quant.qlinear import QuantLinear


def static_clip(clip: torch.Tensor, frames: int = 0, noise: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Frame 0 of `clip` (1, 3, T, H, W) in [0, 1] repeated `frames` times (0: T, at least 2), each copy with
    fresh Gaussian noise of `noise` 8-bit code values, rounded to 8-bit codes like a decoded video
    (on the held-out static clips most pixels keep their code and a few move by 1-2)."""
    t = frames or max(clip.shape[2], 2)
    gen = torch.Generator().manual_seed(seed)
    base = clip[:, :, :1].float().expand(-1, -1, t, -1, -1)
    noisy = base * 255 + noise * torch.randn(base.shape, generator=gen)
    return noisy.round().clamp(0, 255).div(255)


def error_flicker(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean of (e_{t+1} - e_t)^2 over (B, C, T, H, W) outputs, e = out - ref: the energy of the
    part of the error that is re-drawn every frame ([0, 1] pixel units, squared). Squared like the
    output MSE of mixed precision, so the shares of layers whose roundings flip independently add
    up (measured: the per-layer values sum to about the whole model's) and a greedy choice per
    cost works; report its square root as an RMS pixel change."""
    e = out.float() - ref.float()
    return float((e[:, :, 1:] - e[:, :, :-1]).pow(2).mean())


@torch.no_grad()
def perturbation_sensitivity(model: nn.Module, clip: torch.Tensor, eps: float = 1e-6, seed: int = 0) -> tuple[float, float]:
    """(mean, max) |f(x + d) - f(x)| for d uniform in [-eps, eps]: a float model moves by ~eps, a
    model whose activations sit on rounding boundaries by whole quantization steps."""
    gen = torch.Generator().manual_seed(seed)
    d = (torch.rand(clip.shape, generator=gen) * 2 - 1) * eps
    diff = (model(clip + d).float() - model(clip).float()).abs()
    return float(diff.mean()), float(diff.max())


@torch.no_grad()
def with_act_bits(q: QuantLinear, bits: int, act_clip: float | None = 1.0) -> QuantLinear:
    """A copy of `q` whose activations are quantized to `bits`; weights, smoothing, rotation and
    biases are the same tensors' values. DRAQ's clip ratio was fitted for the old width (at 8 bits
    saturating the largest values costs more than finer steps gain), so it is reset to
    `act_clip` (None: kept)."""
    cfg = QuantLinear.config_from_meta(q.qmeta)
    cfg.update(a_bits=bits, scale_dtype=q.wscale.dtype)
    if q.rank:
        cfg["lowrank_dtype"] = q.lora_down.dtype
    k, n = cfg.pop("in_features"), cfg.pop("out_features")
    new = QuantLinear(k, n, **cfg, device=q.qweight.device)
    new.load_state_dict({**q.state_dict(), "qmeta": new.qmeta})
    if act_clip is not None:
        new.set_act_clip(act_clip)
    new.backend = q.backend
    return new


def activation_count(layer: nn.Module) -> int:
    """Activation values a layer quantizes per token (its input width): the cost of raising them."""
    return int(layer.in_features)


def flicker_score(clips: list[torch.Tensor], refs: list[torch.Tensor]) -> Callable[[nn.Module], float]:
    """`measure_sensitivity` score: the mean error flicker of a model on `clips` against `refs`,
    the full-precision outputs on the same clips (see `error_flicker`)."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        return sum(error_flicker(model(c), r) for c, r in zip(clips, refs)) / len(clips)

    return score


def act_budget_bits(share: float, low_bits: int, high_bits: int, values_all: int, values_candidates: int) -> float:
    """The average activation bits over the candidate layers that lets `share` of *all* quantized
    layers' activation values (per token) be raised from `low_bits` to `high_bits`."""
    return low_bits + (high_bits - low_bits) * share * values_all / max(values_candidates, 1)


@torch.no_grad()
def plan_flicker_precision(
    model: nn.Module,
    names: list[str],
    make_low: Callable[[str], tuple[nn.Module, float]],
    make_high: Callable[[str], tuple[nn.Module, float]],
    clips: list[torch.Tensor],
    budget_bits: float,
    n_clips: int = 2,
) -> tuple[set[str], list[LayerSensitivity]]:
    """Which layers of the float `model` get higher-precision activations: mixed precision
    (`plan_mixed_precision`) with the error flicker on static noisy versions of the first
    `n_clips` calibration clips as the score and activation values per token as the cost.
    `make_*` return (layer, its activation bits); `budget_bits` is the average activation bits
    allowed over `names` (`act_budget_bits`). Each layer is scored alone in the float model, as
    mixed precision does: measured on vsrq-tiny, the layers' shares add up (docs/QUANT.md)."""
    statics = [static_clip(c) for c in clips[:n_clips]]
    refs = [model(s).float() for s in statics]
    return plan_mixed_precision(model, names, make_low, make_high, statics[0], budget_bits,
                                score=flicker_score(statics, refs), cost=activation_count)


# ------------------------------------------------------------------ diagnostics (per-layer statistics)


@dataclass
class ActStats:
    """What a layer's activation quantizer sees on a static noisy clip (see `activation_stats`)."""

    name: str
    step: float  # mean quantization step (per-token scale) of the transformed input
    near_boundary: float  # share of unsaturated values within `tol` steps of a rounding boundary
    flip_rate: float  # share of codes differing between neighbouring frames of the static clip (its noise,
    # and past the first block also the frames' positions, which attention sees through RoPE)
    flip_effect: float  # mean |change of the layer's output| those flips (and scale changes) cause


def _codes(q: QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unrounded x_hat / scale, integer codes, scale per token) exactly as `q` quantizes (M, K)."""
    xh = transform_input(x.reshape(-1, q.in_features), q.smooth, q.hadamard_block)
    xg = xh.reshape(xh.shape[0], -1, q.act_group_size or q.in_features)
    codes, scale = quantize_act_groups(xg, q.a_bits, q.act_clip_value())
    return (xg * (1.0 / scale)[..., None]).reshape(xh.shape), codes.reshape(xh.shape), scale


@torch.no_grad()
def activation_stats(model: nn.Module, names: list[str], clip: torch.Tensor, tol: float = 1e-3) -> dict[str, ActStats]:
    """Per QuantLinear in `names`: step size, share of values near a rounding boundary, and how
    many codes flip between consecutive frames of `clip` (a static scene with noise), plus what
    those flips do to the layer's output. The inputs are recorded in the model as it is (so an
    upstream flip shows up downstream, as it does in the video)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen.__setitem__(n, args[0].detach().float())) for n in names]
    try:
        model(clip)
    finally:
        for h in hooks:
            h.remove()
    wt = _window_frames(model, clip.shape[2])
    out = {}
    for n in names:
        q = model.get_submodule(n)
        x = seen[n]
        v, codes, scale = _codes(q, x)
        qmax = int_range(q.a_bits, signed=True)[1]
        inside = v.abs() < qmax + 0.5
        near = ((v - torch.floor(v) - 0.5).abs() < tol) & inside
        flips = effect = float("nan")
        if wt > 1 and x.dim() == 4 and x.shape[2] % wt == 0:
            # window order (B, nW, L, C), frames outermost in a window: (B*nW, wt, L/wt, K). On a
            # static clip every frame is the same scene, so neighbours along wt are frame pairs.
            frames = (-1, wt, x.shape[2] // wt, q.in_features)
            c = codes.reshape(frames)
            d = (codes.reshape(*scale.shape, -1) * scale[..., None]).reshape(frames)  # dequantized input
            flips = float((c[:, 1:] != c[:, :-1]).float().mean())
            effect = float(((d[:, 1:] - d[:, :-1]) @ q.dequantized_weight().T).abs().mean())
        share = float(near.float().sum() / inside.float().sum().clamp_min(1))
        out[n] = ActStats(n, float(scale.mean()), share, flips, effect)
    return out


def _window_frames(model: nn.Module, frames: int) -> int:
    """Frames per attention window of a DiT-like model (its config.window[0]), at most `frames`;
    1 when the model has no such config (then flips between frames are not measured)."""
    cfg = model.config if isinstance(model, VSRModel) else None
    win = getattr(cfg, "window", None)  # DiTConfig's; a SeedVR2 restorer's config has none
    return min(int(win[0]), frames) if win else 1


@torch.no_grad()
def downstream_gain(model: nn.Module, name: str, clip: torch.Tensor, rel: float = 1e-3, seed: int = 0) -> float:
    """How much the model output moves per unit of change at `name`'s output: small Gaussian
    noise (`rel` x the output's rms) is added there, mean |d out| / mean |d y| is returned."""
    gen = torch.Generator().manual_seed(seed)
    moved: list[float] = []

    def hook(_m, _args, y):
        n = torch.randn(y.shape, generator=gen) * rel * float(y.float().pow(2).mean().sqrt())
        moved.append(float(n.abs().mean()))
        return y + n.to(y.dtype)

    ref = model(clip).float()
    h = model.get_submodule(name).register_forward_hook(hook)
    try:
        out = model(clip).float()
    finally:
        h.remove()
    return float((out - ref).abs().mean()) / max(moved[0], 1e-20)
