"""Gradient refinement of a quantized model: QAO + VOLTS, joint dual-branch refinement + LBA, learnable boundaries.

Design (copied into docs/QUANT.md by the engine owner)
======================================================

What runs
---------
`refine_model(fp_model, q_model, clips, recipe, stats)` runs after the engine has swapped every
target layer for a `QuantLinear` (RTN / smoothing / rotation / low-rank / closed-form bias already
applied). It trains only quantization-side values against the full-precision (FP) model and
writes them back into the `QuantLinear` buffers, so the saved checkpoint holds what was trained
and the kernels run it unchanged. The FP model and the original float weights are never changed
(`fp_model` is only read, under `no_grad`; the float weight W is a frozen copy).

The training view (`QuantTrainView`)
------------------------------------
A differentiable stand-in for one `QuantLinear` whose forward *value* equals the layer's
numerics (`vsrq.quant.pack` + `vsrq.kernels.reference`) and whose backward uses straight-through
estimators (STE):

* activations: x_hat = (x / smooth) H as in the reference; its per-token (or per-group) dynamic
  4-bit quantization (with the layer's DRAQ clip ratio, when it has one) is computed by the
  reference function itself and passed straight through (identity gradient: nothing of the
  activation quantizer is learned here; the clip ratio is DRAQ's, fitted before refinement).
* weights: the integers are *re-derived every step* from the frozen float weight,
  q = clamp(round(R / s)) with R = (W * smooth) H - L_down L_up (the SVDQuant residual), or
  R = (W * smooth) H when the layer was built MPQ-DMv2 style (low-rank branch fitted to the
  error of Q(W')). Rounding is straight-through and the clamp passes no gradient outside the
  range, which is LSQ: the gradient of the step s is (round(v) - v) inside and qmin/qmax on
  clipped entries. So a moving low-rank branch changes the integers of the low-bit branch, as in
  QuantVSR's release (W - L1 L2 re-quantized every step).
* learned values (float32 masters): the weight step per output channel/group as a multiplicative
  log-offset s = s0 * exp(u) (symmetric: s * qmax is the learned clipping boundary, i.e. the
  PassionSR/QArtSR "learnable boundary quantizer"; asymmetric layers learn the lower and upper
  boundaries lo/hi and derive step and zero point from them); the low-rank factors L_down/L_up;
  the LBA vector; optionally the smoothing vector (PassionSR's learnable equivalent
  transformation, LET: smooth = smooth0 * exp(u), multiplying W and dividing x). The stored
  dtypes are respected in the forward (scales rounded to fp16, low-rank factors and the low-rank
  activation to bf16, each with STE), so the trained value is the value that gets stored.
* LBA is held as closed-form part + learned offset. When the steps or the low-rank branch move,
  the integers re-round and the mean output error changes, so a bias fitted to the old error is
  stale: measured on the tiny DiT, training steps with a frozen closed-form bias made the block
  loss *worse* (+20..80% in the first steps) and every unit was reverted. So before every step
  the closed-form part is re-centred on the current weights (mean error of the layer without
  LBA on 2048 of its calibration tokens, FP in, FP out: `retrack`), and only the offset is
  learned against the method's objective (it starts at 0, so LBA starts at the engine's
  closed-form mean). With `bias_align="mean"` the offset stays 0: the vector remains the
  closed-form mean error of the refined layer; with `"learn"` the offset is trained.
* How the view is tied to the layer: at construction the integers it derives must equal the
  stored ones bit for bit (it tries the residual form, then the anchored form); if neither
  matches (a quantizer that is not RTN, e.g. a future GPTQ), the view keeps the stored integers
  fixed and learns only steps, low-rank factors and LBA. Then its output is compared with the
  layer's own forward on calibration tokens; a layer it does not reproduce (relative error
  > 1e-3) is skipped and named in the summary's notes rather than trained against numerics it
  does not compute.
* `write_back()` re-quantizes the float weight with the learned step (same formula), re-packs it
  (`QuantLinear.set_quantized_weight`) and stores scales, zero points, low-rank factors, LBA and
  smoothing vector. Tests check that the written-back layer's forward equals the view's.

Objectives and optimisation
---------------------------
All losses are mean squared errors against FP outputs, normalised by their value before training
(Adam then sees O(1) gradients whatever the layer's scale). Adam with learning rates set by each
value's natural unit: log-offsets of steps/boundaries/smoothing 3e-2 per step; low-rank factors
such that one step moves an entry of L_down L_up by about 0.1 weight quantization step (a rate
relative to the factors' own size re-rounded whole rows at once and lost); LBA offset 0.2 x the
layer's RMS output error; `recipe.extra["refine_lr"]` multiplies all of them. A linear warm-up
over the first 20% of a unit's steps (Adam's first steps move every value by the full rate
whatever its gradient), then cosine decay to zero. These rates were picked on a small grid on the
toy layer and the tiny DiT (tests/quant/test_refine.py settings), not on the real model.
Minibatches come from a generator seeded with `recipe.seed`: deterministic. Every unit keeps its
result only if its objective went down on the whole calibration set; otherwise its values are
restored (reported as `reverted`). `recipe.refine_steps` is the total optimiser-step budget of
the whole refinement (0 means `DEFAULT_STEPS`). `recipe.extra`: `refine_lr` (multiplier, 1.0),
`refine_batch` (tokens per layer-wise step, 2048), `refine_smooth` (LET, False).

The methods
-----------
* "qao" (LSGQuant, Quantization-Aware Optimization + VOLTS). Paper: jointly refine the quantized
  branch and a retained high-precision (low-rank) branch so that together they match the FP
  layer; VOLTS uses layer-wise calibration variance to decide which layers are trained and how
  much. LSGQuant's code is not public, so the details are ours: layer-wise reconstruction on the
  layer's sampled FP calibration inputs (`LayerStats.x`, at most 16384 of them, minibatches of
  2048 tokens; the report's per-layer losses use the same tokens), target the
  FP layer's output; learned: weight steps (boundaries) + both low-rank factors (+ the LBA offset
  when `bias_align="learn"`). VOLTS: the `ceil(refine_layers * n)` layers with the highest input
  variance (`stats[name].variance`) are trained, the rest stay as quantized; the step budget is
  split among them in proportion to variance (largest-remainder rounding, so the steps add up).
  A layer without a low-rank branch (rank 0) gets only its steps trained (noted in the summary).
* "joint" (QuantVSR, dual-branch refinement + LBA). Paper: jointly refine the FP low-rank branch
  and the low-bit branch, plus a learnable bias alignment. (Their release trains the low-rank
  factors, the low-bit branch re-derived from W - L1 L2, then the LBA vectors in a second stage,
  both against the whole network's output.) Ours: block-wise reconstruction (one DiT block = one
  unit, in model order; layers outside any block are refined layer-wise): the block's FP inputs
  are captured with hooks on the FP model, the loss is the MSE of the quantized block's output
  against the FP block's; learned in one stage: low-rank factors + weight steps + the LBA offset
  of every layer that has an LBA vector (`bias_align` "mean" or "learn"; with None there is none
  to learn, noted). Blocks get equal shares of the budget. Block-wise rather than whole-network
  because it is cheap on CPU and each block's objective is well conditioned; the block inputs
  are FP (not the quantized model's), so blocks train independently and errors of earlier
  blocks are not compensated (lbq's end-to-end pass is the method that does that).
* "lbq" (PassionSR learnable boundaries, QArtSR reversed per-module quantization with module and
  image losses, then extended end-to-end training). Learned: weight steps (boundaries) only
  (+ the LBA offset when `bias_align="learn"`; + LET when asked). Units (blocks / loose layers)
  are calibrated from the output end backwards: while unit i trains, the units before it run in
  full precision (so its input is the FP input) and the units after it are already quantized
  with their learned boundaries; loss = module MSE (unit output vs the FP unit on the same
  input) + image MSE (the quantized model's output vs the FP model's, one clip per step), each
  normalised. Then a short end-to-end pass (a quarter of the budget) refines all boundaries
  together on the image loss alone. QArtSR's timestep retraining does not apply: our model has
  one fixed timestep.
* `bias_align="learn"` (QuantVSR LBA): LBA starts at the engine's closed-form mean and its offset
  is trained with whichever method runs. With `refine=None` it is an LBA-only block-wise
  refinement (only the offsets learn). For a single layer with everything else fixed the
  closed-form mean is already the MSE optimum, so learning pays only against block/model
  objectives (non-linear downstream, several layers interacting) or while other values move.

Not done / limits: asymmetric layers are supported by the view but only tested for write-back;
the activation quantizer (per-token absmax, DRAQ clip) is not learned here; block inputs are FP
(no QDrop-style mixing); the rates are tuned on toy models only.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.kernels.reference import act_quant_ref, gelu_tanh, hadamard_matrix, hadamard_scale, transform_input
from vsrq.quant.calibrate import LayerStats
from vsrq.quant.checkpoint import set_module
from vsrq.quant.pack import int_range, round_half_up
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import Recipe

__all__ = ["QuantTrainView", "refine_model", "volts_plan", "DEFAULT_STEPS"]

DEFAULT_STEPS = 200  # total optimiser steps when a refinement is asked for with refine_steps = 0
BASE_LR = 1.0  # multiplied by recipe.extra["refine_lr"]; the per-kind rates follow
SCALE_LR = 3e-2  # log-offset of weight steps / boundaries / smoothing, per step
LORA_LR = 1e-1  # in weight quantization steps moved per step
BIAS_LR = 2e-1  # in units of the layer's RMS output error
PROBE_TOKENS = 2048  # calibration tokens per layer on which the closed-form LBA part is re-centred
WARMUP = 0.2  # share of each unit's steps with a linear learning-rate warm-up
LAYER_BATCH = 2048  # tokens per step of a layer-wise reconstruction
MAX_LAYER_TOKENS = 16384  # calibration tokens per layer kept for layer-wise fitting and the report
E2E_SHARE = 0.25  # lbq: share of the budget for the final end-to-end pass
CHECK_TOL = 1e-3  # relative output error at which a view is judged not to reproduce its layer


# ----------------------------------------------------------------------------- STE helpers


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    """round_half_up in the forward, identity in the backward."""
    return v + (round_half_up(v) - v).detach()


def _ste_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value rounded to `dtype` (kept in float32), identity in the backward."""
    if dtype == torch.float32:
        return t
    return t + (t.detach().to(dtype).float() - t.detach())


def _act_clip_kwargs(q: QuantLinear) -> dict:
    """The layer's DRAQ activation clip ratio as the reference quantizer takes it (`clip_ratio`),
    when both know one; {} otherwise. The view's self-check catches any numerics it misses."""
    clip = getattr(q, "act_clip", None)
    if clip is None or "clip_ratio" not in inspect.signature(act_quant_ref).parameters:
        return {}
    value = q.act_clip_value() if hasattr(q, "act_clip_value") else float(clip.reshape(-1)[0])
    return {} if value == 1.0 else {"clip_ratio": value}


# ----------------------------------------------------------------------------- training view


class QuantTrainView(nn.Module):
    """Differentiable stand-in for a QuantLinear (see the module doc): same forward value, STE
    backward, float masters of the learned values, `write_back()` into the layer.

    `weight` is the layer's frozen full-precision weight (N, K) (before smoothing/rotation).
    `fp=True` makes the view compute the FP layer instead (used by lbq for not-yet-calibrated units).
    """

    def __init__(
        self,
        q: QuantLinear,
        weight: torch.Tensor,
        *,
        scales: bool = True,
        lowrank: bool = False,
        bias_align: bool = False,
        smooth: bool = False,
        bias_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self._target = (q,)  # a tuple keeps the layer out of this module's tree
        dev = q.wscale.device
        n, k = q.out_features, q.in_features
        self.n, self.k = n, k
        self.symmetric = q.symmetric
        self.qmin, self.qmax = int_range(q.w_bits, signed=q.symmetric)
        self.groups = q.wscale.shape[1]
        self.gs = k // self.groups
        self.rank = q.rank
        self.had = q.hadamard_block
        self.fp = False
        self.bias_lr_scale = float(bias_lr_scale)
        self.register_buffer("weight", weight.detach().float().to(dev).clone(), persistent=False)
        self.register_buffer("fp_bias", None if q.bias is None else q.bias.detach().float().clone(), persistent=False)
        s0 = q.wscale.detach().float().clone()
        self.register_buffer("s0", s0, persistent=False)
        self.u_scale = nn.Parameter(torch.zeros_like(s0), requires_grad=scales and q.symmetric)
        z0 = None if q.wzero is None else q.wzero.detach().float().clone()
        self.register_buffer("z0", z0, persistent=False)
        if not self.symmetric:
            self.register_buffer("lo0", -z0 * s0, persistent=False)
            self.register_buffer("hi0", (self.qmax - z0) * s0, persistent=False)
            self.u_lo = nn.Parameter(torch.zeros_like(s0), requires_grad=scales)
            self.u_hi = nn.Parameter(torch.zeros_like(s0), requires_grad=scales)
        self.lowrank_dtype = q.lora_down.dtype if q.rank else torch.bfloat16
        if q.rank:
            self.lora_down = nn.Parameter(q.lora_down.detach().float().clone(), requires_grad=lowrank)
            self.lora_up = nn.Parameter(q.lora_up.detach().float().clone(), requires_grad=lowrank)
        else:
            self.lora_down = self.lora_up = None
        # LBA = closed-form part (re-centred while the weights move, see `retrack`) + learned offset
        has_lba = q.bias_align is not None
        self.register_buffer("bias_base", q.bias_align.detach().float().clone() if has_lba else None, persistent=False)
        self.bias_delta = nn.Parameter(torch.zeros_like(self.bias_base), requires_grad=bias_align) if has_lba else None
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None
        if q.smooth is not None:
            self.register_buffer("smooth0", q.smooth.detach().float().clone(), persistent=False)
            self.u_smooth = nn.Parameter(torch.zeros_like(self.smooth0), requires_grad=smooth)
        else:
            self.smooth0 = None
            self.u_smooth = None
        self.activation = q.activation
        self.act_kwargs = _act_clip_kwargs(q)
        self.mode = self._pick_mode(q)
        if self.mode == "fixed":
            self.register_buffer("q_fixed", q.int_weight().detach().float().clone(), persistent=False)
            if self.u_smooth is not None:
                self.u_smooth.requires_grad_(False)  # fixed integers: a moving W' would not be stored
            if not self.symmetric:
                self.u_lo.requires_grad_(False)
                self.u_hi.requires_grad_(False)
                self.u_scale.requires_grad_(scales)

    @property
    def target(self) -> QuantLinear:
        return self._target[0]

    # ------------------------------------------------------------------ weights

    def _smooth(self) -> torch.Tensor | None:
        if self.smooth0 is None:
            return None
        return self.smooth0 * torch.exp(self.u_smooth)

    def _wprime(self) -> torch.Tensor:
        """W' = (W * smooth) H, differentiable in the smoothing vector."""
        w = self.weight
        sm = self._smooth()
        if sm is not None:
            w = w * sm[None, :]
        if self.had:
            b = self.had
            h = hadamard_matrix(b, torch.float32, w.device) * hadamard_scale(b)
            w = (w.reshape(self.n, self.k // b, b) @ h).reshape(self.n, self.k)
        return w

    def _lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _ste_cast(self.lora_down, self.lowrank_dtype), _ste_cast(self.lora_up, self.lowrank_dtype)

    def _residual(self, mode: str) -> torch.Tensor:
        w = self._wprime()
        if mode == "residual" and self.rank:
            ld, lu = self._lowrank_factors()
            w = w - (ld @ lu).T
        return w

    def _cast_scale(self, s: torch.Tensor) -> torch.Tensor:
        dt = self.target.wscale.dtype
        fi = torch.finfo(dt)
        return _ste_cast(s.clamp(fi.tiny * fi.eps, fi.max), dt)

    def _scale_zero(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(step in the stored dtype's values, zero point or None), both (N, G)."""
        if not self.symmetric and self.mode != "fixed":
            lo = (self.lo0 + self.s0 * self.u_lo).clamp(max=0.0)
            hi = (self.hi0 + self.s0 * self.u_hi).clamp(min=0.0)
            s = self._cast_scale((hi - lo) / self.qmax)
            z = torch.clamp(_ste_round(-lo / s), self.qmin, self.qmax)
            return s, z
        return self._cast_scale(self.s0 * torch.exp(self.u_scale)), self.z0

    def _ints(self, mode: str, s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Integer weights (N, G, gs) as floats with STE rounding, LSQ-style clamping."""
        if mode == "fixed":
            return self.q_fixed.reshape(self.n, self.groups, self.gs)
        r = self._residual(mode).reshape(self.n, self.groups, self.gs)
        sg = s[..., None]
        if self.symmetric:
            return _ste_round(torch.clamp(r / sg, self.qmin, self.qmax))
        return torch.clamp(_ste_round(r / sg) + z[..., None], self.qmin, self.qmax)

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(dequantized W_hat (N, K) with STE, integers (N, K), step (N, G), zero (N, G) or None)."""
        s, z = self._scale_zero()
        qv = self._ints(self.mode, s, z)
        deq = (qv - z[..., None]) if z is not None else qv
        w = (deq * s[..., None]).reshape(self.n, self.k)
        return w, qv.detach().reshape(self.n, self.k), s.detach(), None if z is None else z.detach()

    @torch.no_grad()
    def _pick_mode(self, q: QuantLinear) -> str:
        """Which derivation reproduces the stored integers: SVDQuant residual, MPQ-DMv2 anchor, else fixed."""
        self.mode = "anchor"
        stored = q.int_weight().float().reshape(self.n, self.groups, self.gs)
        s, z = self._scale_zero()
        for mode in (("residual", "anchor") if self.rank else ("anchor",)):
            if torch.equal(self._ints(mode, s, z), stored):
                return mode
        return "fixed"

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.k).float()
        if self.fp:
            y = F.linear(x2, self.weight, self.fp_bias)
        else:
            sm = self._smooth()
            xd = x2 if sm is None else x2 * (1.0 / sm)
            if self.had:
                b = self.had
                h = hadamard_matrix(b, torch.float32, xd.device) * hadamard_scale(b)
                xd = (xd.reshape(-1, self.k // b, b) @ h).reshape(-1, self.k)
            with torch.no_grad():
                xh_val = transform_input(x2.detach(), None if sm is None else sm.detach(), self.had)
                group = self.target.act_group_size
                aq = act_quant_ref(xh_val, self.target.a_bits, group, **self.act_kwargs)
                ng = aq.scale.shape[1]
                deq = (aq.q.float().reshape(-1, ng, self.k // ng) * aq.scale[..., None]).reshape(-1, self.k)
            xh = xd + (xh_val - xd).detach()
            xq = xh + (deq - xh).detach()
            w, _, _, _ = self.quantized_weight()
            y = xq @ w.T
            if self.rank:
                ld, lu = self._lowrank_factors()
                low = _ste_cast(_ste_cast(xh, self.lowrank_dtype) @ ld, self.lowrank_dtype)
                y = y + low @ lu
            bias = self.fp_bias
            if self.bias_base is not None:
                lba = self.bias_base + self.bias_delta
                bias = lba if bias is None else bias + lba
            if bias is not None:
                y = y + bias[None, :]
        if self.activation == "gelu_tanh":
            y = gelu_tanh(y)
        if gate is not None:
            y = y * gate.reshape(-1, self.n).float()
        if residual is not None:
            y = y + residual.reshape(-1, self.n).float()
        return y.reshape(*lead, self.n).to(x.dtype)

    # ------------------------------------------------------------------ bookkeeping

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float) -> list[dict]:
        """Adam groups with learning rates relative to each value's natural size: log-offsets of
        steps/boundaries/smoothing as they are; low-rank factors so that one step moves an entry of
        L_down L_up by about `lr` weight quantization steps; LBA by `lr` x the layer's RMS error."""
        qstep = float(self.s0.mean())
        groups = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name in ("lora_down", "lora_up"):
                other = self.lora_up if name == "lora_down" else self.lora_down
                rms = float(other.detach().pow(2).mean().sqrt()) or 1.0
                scale = LORA_LR * qstep / (rms * math.sqrt(self.rank))
            elif name == "bias_delta":
                scale = BIAS_LR * self.bias_lr_scale
            else:
                scale = SCALE_LR
            groups.append({"params": [p], "lr": lr * scale})
        return groups

    def snapshot(self) -> dict[str, torch.Tensor]:
        snap = {n: p.detach().clone() for n, p in self.named_parameters()}
        if self.bias_base is not None:
            snap["bias_base"] = self.bias_base.clone()
        return snap

    @torch.no_grad()
    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        for n, p in self.named_parameters():
            p.copy_(snap[n])
        if self.bias_base is not None:
            self.bias_base.copy_(snap["bias_base"])

    @torch.no_grad()
    def retrack(self) -> None:
        """Re-centre the closed-form part of LBA on the current weights: bias_base becomes the mean
        output error of the layer without LBA on its probe tokens (FP inputs, FP outputs), so a
        moved step or low-rank factor never leaves a stale mean error behind; the learned offset
        `bias_delta` stays on top of it."""
        if self.bias_base is None or self.probe is None or self.fp:
            return
        x, y = self.probe
        err = (y - self(x).float()).mean(0)
        self.bias_base.add_(err + self.bias_delta)

    @torch.no_grad()
    def write_back(self) -> None:
        """Re-quantize with the learned values and store everything in the QuantLinear's buffers."""
        q = self.target
        _, ints, s, z = self.quantized_weight()
        q.set_quantized_weight(ints.to(torch.int8), s.to(q.wscale.dtype), None if z is None else z.to(torch.int8))
        if self.rank:
            q.lora_down.copy_(self.lora_down.to(q.lora_down.dtype))
            q.lora_up.copy_(self.lora_up.to(q.lora_up.dtype))
        if self.bias_base is not None:
            q.bias_align.data.copy_(self.bias_base + self.bias_delta)
        if self.smooth0 is not None:
            q.smooth.copy_(self._smooth())

    @torch.no_grad()
    def mismatch(self, x: torch.Tensor) -> float:
        """Relative output difference between this view and its QuantLinear on inputs x (M, K)."""
        fp, self.fp = self.fp, False
        try:
            a = self(x.float())
        finally:
            self.fp = fp
        b = self.target(x.float()).float()
        return float((a - b).norm() / b.norm().clamp_min(1e-20))


# ----------------------------------------------------------------------------- helpers


def volts_plan(variances: dict[str, float], fraction: float, steps: int) -> dict[str, int]:
    """VOLTS: the ceil(fraction * n) highest-variance layers, steps split in proportion to
    variance (largest remainder, so they add up to `steps`); other layers get 0."""
    names = sorted(variances, key=lambda n: (-variances[n], n))
    chosen = names[: max(1, math.ceil(fraction * len(names) - 1e-9))]
    total = sum(max(variances[n], 0.0) for n in chosen)
    if total <= 0:
        shares = {n: steps / len(chosen) for n in chosen}
    else:
        shares = {n: steps * max(variances[n], 0.0) / total for n in chosen}
    plan = {n: int(math.floor(v)) for n, v in shares.items()}
    rest = steps - sum(plan.values())
    for n in sorted(chosen, key=lambda n: (-(shares[n] - plan[n]), n))[:rest]:
        plan[n] += 1
    return {n: plan.get(n, 0) for n in variances}


def _split_equal(units: list[str], steps: int) -> dict[str, int]:
    base, rest = divmod(steps, max(1, len(units)))
    return {u: base + (1 if i < rest else 0) for i, u in enumerate(units)}


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


@torch.no_grad()
def _layer_mse(module: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(((module(x[i:i + chunk]).float() - y[i:i + chunk]) ** 2).sum())
    return total / max(1, y.numel())


def _optimize(groups: list[dict], steps: int, step_loss: Callable[[int], torch.Tensor]) -> None:
    """Adam; learning rates warm up linearly over the first WARMUP share of the steps (Adam's first
    steps move every value by the full rate whatever its gradient, which re-rounds every weight at
    once), then decay to zero on a cosine."""
    if steps <= 0 or not groups:
        return
    opt = torch.optim.Adam(groups)
    base = [g["lr"] for g in opt.param_groups]
    warm = max(1, int(WARMUP * steps))
    with torch.enable_grad():
        for t in range(steps):
            f = (t + 1) / warm if t < warm else 0.5 * (1.0 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * f
            opt.zero_grad(set_to_none=True)
            loss = step_loss(t)
            loss.backward()
            opt.step()


def _fit(views: list[QuantTrainView], steps: int, lr: float, step_loss, evaluate) -> dict:
    """Train `views` for `steps`; keep the result only if `evaluate()` (whole calibration set) went down."""
    before = evaluate()
    snaps = [v.snapshot() for v in views]
    groups = [g for v in views for g in v.param_groups(lr)]

    def tracked_loss(t):
        for v in views:
            v.retrack()
        return step_loss(t)

    _optimize(groups, steps, tracked_loss)
    if steps > 0 and groups:
        for v in views:
            v.retrack()
    after = evaluate()
    reverted = not after <= before
    if reverted:
        for v, s in zip(views, snaps):
            v.restore(s)
        after = evaluate()
    return {"loss_before": before, "loss_after": after, "steps": steps if groups else 0, "reverted": reverted}


@dataclass
class _Unit:
    name: str  # module name in both models
    kind: str  # "block" | "layer"
    layers: list[str]


def _units(q_model: nn.Module, names: list[str]) -> list[_Unit]:
    """Blocks (children of a ModuleList holding target layers) and loose layers, in model order."""
    block_names = []
    for list_name, mod in q_model.named_modules():
        if isinstance(mod, nn.ModuleList):
            block_names += [f"{list_name}.{i}" if list_name else str(i) for i in range(len(mod))]
    units: list[_Unit] = []
    index: dict[str, _Unit] = {}
    for n in names:
        owner = next((b for b in sorted(block_names, key=len) if n.startswith(b + ".")), None)
        if owner is None:
            units.append(_Unit(n, "layer", [n]))
        elif owner in index:
            index[owner].layers.append(n)
        else:
            index[owner] = _Unit(owner, "block", [n])
            units.append(index[owner])
    return units


@torch.no_grad()
def _capture(fp_model: nn.Module, unit_names: list[str], clips: list[torch.Tensor]):
    """FP inputs (args, kwargs) and outputs of the named modules for every clip, plus model outputs."""
    records: dict[str, list[list]] = {u: [] for u in unit_names}
    handles = []

    def pre(u):
        def hook(_m, args, kwargs):
            records[u].append([_detach(args), _detach(kwargs), None])
        return hook

    def post(u):
        def hook(_m, _args, _kwargs, out):
            records[u][-1][2] = _detach(out)
        return hook

    for u in unit_names:
        m = fp_model.get_submodule(u)
        handles.append(m.register_forward_pre_hook(pre(u), with_kwargs=True))
        handles.append(m.register_forward_hook(post(u), with_kwargs=True))
    outs = []
    try:
        for clip in clips:
            outs.append(fp_model(clip).detach().float())
    finally:
        for h in handles:
            h.remove()
    return records, outs


class _Installed:
    """Context: views swapped into the model in place of their QuantLinears; model params frozen."""

    def __init__(self, model: nn.Module, views: dict[str, QuantTrainView]) -> None:
        self.model, self.views = model, views

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        for n, v in self.views.items():
            set_module(self.model, n, v)
        return self

    def __exit__(self, *exc):
        for n, v in self.views.items():
            set_module(self.model, n, v.target)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return False


# ----------------------------------------------------------------------------- the methods


class _Refiner:
    def __init__(self, fp_model, q_model, clips, recipe: Recipe, stats: dict[str, LayerStats], log) -> None:
        self.fp_model, self.q_model, self.recipe, self.stats = fp_model, q_model, recipe, stats
        self.clips = list(clips)
        self.log = log or (lambda _line: None)
        self.gen = torch.Generator().manual_seed(recipe.seed)
        self.lr = BASE_LR * float(recipe.extra.get("refine_lr", 1.0))
        self.batch = int(recipe.extra.get("refine_batch", LAYER_BATCH))
        self.learn_smooth = bool(recipe.extra.get("refine_smooth", False))
        self.steps = recipe.refine_steps or DEFAULT_STEPS
        self.notes: list[str] = []
        self.names = [n for n, m in q_model.named_modules() if isinstance(m, QuantLinear)]
        self.fp_linear = {}
        for n in self.names:
            try:
                lin = fp_model.get_submodule(n)
            except AttributeError:
                lin = None
            if isinstance(lin, nn.Linear):
                self.fp_linear[n] = lin
            else:
                self.notes.append(f"{n}: no nn.Linear of that name in the FP model; left as quantized")
        self.names = [n for n in self.names if n in self.fp_linear]
        self.layer_data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in self.names:
            st = stats.get(n)
            if st is not None and st.samples:
                lin = self.fp_linear[n]
                x = st.x.float()
                if len(x) > MAX_LAYER_TOKENS:  # bounds memory (inputs + FP outputs of every layer)
                    x = x[torch.randperm(len(x), generator=self.gen)[:MAX_LAYER_TOKENS]]
                with torch.no_grad():
                    y = F.linear(x, lin.weight.detach().float(), None if lin.bias is None else lin.bias.detach().float())
                self.layer_data[n] = (x, y)

    # -------------------------------------------------------------- views

    def make_view(self, name: str, *, scales: bool, lowrank: bool, bias: bool) -> QuantTrainView | None:
        if name not in self.layer_data:  # no tokens to check the view against (or to re-centre LBA on)
            self.notes.append(f"{name}: no calibration samples (LayerStats.samples); not refined")
            return None
        q = self.q_model.get_submodule(name)
        lin = self.fp_linear[name]
        mse = self.layer_loss(name, q)
        bias_scale = math.sqrt(mse) if mse == mse and mse > 0 else 1e-3
        view = QuantTrainView(q, lin.weight, scales=scales, lowrank=lowrank and q.rank > 0,
                              bias_align=bias and q.bias_align is not None, smooth=self.learn_smooth, bias_lr_scale=bias_scale)
        x, y = self.layer_data[name]
        idx = torch.randperm(len(x), generator=self.gen)[:PROBE_TOKENS]
        view.probe = (x[idx], y[idx])
        err = view.mismatch(x[idx[:256]])
        if not err < CHECK_TOL:
            self.notes.append(f"{name}: the training view does not reproduce the layer (rel. error {err:.2e}); not refined")
            return None
        if view.mode == "fixed":
            self.notes.append(f"{name}: stored integers are not RTN of the weight; integers kept fixed, steps/low-rank learned")
        return view

    def layer_loss(self, name: str, module: nn.Module | None = None) -> float:
        if name not in self.layer_data:
            return float("nan")
        x, y = self.layer_data[name]
        return _layer_mse(module if module is not None else self.q_model.get_submodule(name), x, y)

    # -------------------------------------------------------------- layer-wise

    def fit_layer(self, name: str, view: QuantTrainView, steps: int) -> dict:
        x, y = self.layer_data[name]
        m = len(x)
        norm = max(_layer_mse(view, x, y), 1e-30)
        bs = min(m, self.batch)

        def step_loss(_t):
            idx = torch.randint(0, m, (bs,), generator=self.gen) if bs < m else slice(None)
            return F.mse_loss(view(x[idx]), y[idx]) / norm

        res = _fit([view], steps, self.lr, step_loss, lambda: _layer_mse(view, x, y))
        view.write_back()
        return res

    # -------------------------------------------------------------- block-wise

    def fit_block(self, unit: _Unit, views: dict[str, QuantTrainView], steps: int, records) -> dict:
        block = self.q_model.get_submodule(unit.name)
        recs = records[unit.name]

        def run(i):
            args, kwargs, out = recs[i]
            return F.mse_loss(block(*args, **kwargs).float(), out.float())

        def evaluate():
            with torch.no_grad():
                return sum(float(run(i)) for i in range(len(recs))) / len(recs)

        with _Installed(self.q_model, views):
            norm = max(evaluate(), 1e-30)

            def step_loss(_t):
                i = int(torch.randint(0, len(recs), (1,), generator=self.gen))
                return run(i) / norm

            res = _fit(list(views.values()), steps, self.lr, step_loss, evaluate)
        for v in views.values():
            v.write_back()
        return res

    def blockwise(self, learn: dict) -> list[dict]:
        """Units in model order; blocks by block reconstruction, loose layers layer-wise."""
        units = _units(self.q_model, self.names)
        plan = _split_equal([u.name for u in units], self.steps)
        blocks = [u.name for u in units if u.kind == "block"]
        records = _capture(self.fp_model, blocks, self.clips)[0] if blocks else {}
        out = []
        for u in units:
            views = {n: v for n in u.layers if (v := self.make_view(n, **learn)) is not None}
            if not views:
                continue
            if u.kind == "block":
                res = self.fit_block(u, views, plan[u.name], records)
            else:
                res = self.fit_layer(u.name, views[u.name], plan[u.name])
            out.append({"unit": u.name, "kind": u.kind, "layers": list(views), **res})
            self.log(f"refine {u.name}: {res['loss_before']:.3e} -> {res['loss_after']:.3e} ({res['steps']} steps)")
        return out

    # -------------------------------------------------------------- methods

    def qao(self) -> list[dict]:
        names = [n for n in self.names if n in self.layer_data]
        plan = volts_plan({n: self.stats[n].variance for n in names}, self.recipe.refine_layers, self.steps)
        learn_bias = self.recipe.bias_align == "learn"
        out = []
        for n in names:
            if plan[n] == 0:
                continue
            view = self.make_view(n, scales=True, lowrank=True, bias=learn_bias)
            if view is None:
                continue
            if view.rank == 0:
                self.notes.append(f"{n}: no low-rank branch (rank 0); QAO refines its weight steps only")
            res = self.fit_layer(n, view, plan[n])
            out.append({"unit": n, "kind": "layer", "layers": [n], "variance": self.stats[n].variance, **res})
            self.log(f"refine {n}: {res['loss_before']:.3e} -> {res['loss_after']:.3e} ({res['steps']} steps)")
        return out

    def joint(self) -> list[dict]:
        if self.recipe.bias_align is None:
            self.notes.append("joint: the recipe has bias_align=None, so the layers carry no LBA vector to learn")
        return self.blockwise({"scales": True, "lowrank": True, "bias": True})

    def lba(self) -> list[dict]:
        return self.blockwise({"scales": False, "lowrank": False, "bias": True})

    def lbq(self) -> list[dict]:
        units = _units(self.q_model, self.names)
        learn_bias = self.recipe.bias_align == "learn"
        views = {n: v for n in self.names if (v := self.make_view(n, scales=True, lowrank=False, bias=learn_bias)) is not None}
        units = [u for u in units if any(n in views for n in u.layers)]
        if not units:
            return []
        e2e_steps = int(round(E2E_SHARE * self.steps)) if self.steps >= 2 else 0
        plan = _split_equal([u.name for u in reversed(units)], self.steps - e2e_steps)
        _, fp_outs = _capture(self.fp_model, [], self.clips)
        out = []
        with _Installed(self.q_model, views):
            for v in views.values():
                v.fp = True
            for u in reversed(units):
                uviews = [views[n] for n in u.layers if n in views]
                for v in uviews:
                    v.fp = False
                res = self._fit_module(u, uviews, plan[u.name], fp_outs)
                out.append({"unit": u.name, "kind": u.kind, "layers": [n for n in u.layers if n in views], **res})
                self.log(f"refine {u.name} (reversed): {res['loss_before']:.3e} -> {res['loss_after']:.3e} ({res['steps']} steps)")
            if e2e_steps:
                res = self._fit_e2e(list(views.values()), e2e_steps, fp_outs)
                out.append({"unit": "<model>", "kind": "model", "layers": list(views), **res})
                self.log(f"refine end-to-end: {res['loss_before']:.3e} -> {res['loss_after']:.3e} ({res['steps']} steps)")
        for v in views.values():
            v.write_back()
        return out

    def _image_mse(self, i: int) -> torch.Tensor:
        return F.mse_loss(self.q_model(self.clips[i]).float(), self.fp_outs[i])

    def _fit_module(self, u: _Unit, uviews: list[QuantTrainView], steps: int, fp_outs) -> dict:
        """lbq: module loss (unit vs FP unit on the same, FP, input) + image loss, both normalised."""
        self.fp_outs = fp_outs
        qmod = self.q_model.get_submodule(u.name)
        fpmod = self.fp_model.get_submodule(u.name)
        got: list[torch.Tensor] = []

        def hook(_m, args, kwargs, out):
            with torch.no_grad():
                ref = fpmod(*args, **kwargs).float()
            got.append(F.mse_loss(out.float(), ref))

        def both(i):
            got.clear()
            img = self._image_mse(i)
            return got[0], img

        handle = qmod.register_forward_hook(hook, with_kwargs=True)
        try:
            def raw():
                with torch.no_grad():
                    pairs = [both(i) for i in range(len(self.clips))]
                return sum(float(p[0]) for p in pairs) / len(pairs), sum(float(p[1]) for p in pairs) / len(pairs)

            mod0, img0 = raw()
            mod0, img0 = max(mod0, 1e-30), max(img0, 1e-30)

            def evaluate():
                m, i = raw()
                return m / mod0 + i / img0

            def step_loss(_t):
                i = int(torch.randint(0, len(self.clips), (1,), generator=self.gen))
                m, img = both(i)
                return m / mod0 + img / img0

            res = _fit(uviews, steps, self.lr, step_loss, evaluate)
            m, i = raw()
        finally:
            handle.remove()
        return {**res, "module_mse_before": mod0, "module_mse_after": m, "image_mse_before": img0, "image_mse_after": i}

    def _fit_e2e(self, views: list[QuantTrainView], steps: int, fp_outs) -> dict:
        self.fp_outs = fp_outs
        for v in views:
            v.fp = False

        def evaluate():
            with torch.no_grad():
                return sum(float(self._image_mse(i)) for i in range(len(self.clips))) / len(self.clips)

        norm = max(evaluate(), 1e-30)

        def step_loss(_t):
            i = int(torch.randint(0, len(self.clips), (1,), generator=self.gen))
            return self._image_mse(i) / norm

        return _fit(views, steps, self.lr, step_loss, evaluate)


def refine_model(
    fp_model: nn.Module,
    q_model: nn.Module,
    clips: Iterable[torch.Tensor],
    recipe: Recipe,
    stats: dict[str, LayerStats],
    log: Callable[[str], None] | None = None,
) -> dict:
    """Refine `q_model`'s quantization values in place against `fp_model` (see the module doc).

    `stats` must still hold the calibration samples (`LayerStats.samples`): call before the engine
    clears them. Returns a JSON-able summary: method, budget, seconds, per-unit objectives, and per
    layer the calibration-token MSE against the FP layer before/after, its steps and SQNR.
    """
    started = time.perf_counter()
    r = _Refiner(fp_model, q_model, clips, recipe, stats, log)
    before = {n: r.layer_loss(n) for n in r.names}
    if recipe.refine == "qao":
        units = r.qao()
    elif recipe.refine == "joint":
        units = r.joint()
    elif recipe.refine == "lbq":
        units = r.lbq()
    elif recipe.bias_align == "learn":
        units = r.lba()
    else:
        units = []
    if recipe.refine_steps == 0 and (recipe.refine or recipe.bias_align == "learn"):
        r.notes.append(f"refine_steps = 0: used the default budget of {DEFAULT_STEPS} steps")
    steps_of = {}
    for u in units:
        for n in u["layers"]:
            steps_of[n] = steps_of.get(n, 0) + u["steps"]
    layers = {}
    for n in r.names:
        after = r.layer_loss(n)
        power = float((r.layer_data[n][1] ** 2).mean()) if n in r.layer_data else float("nan")
        sqnr = 10 * math.log10(power / max(after, 1e-20)) if after == after and power > 0 else float("nan")
        layers[n] = {"loss_before": before[n], "loss_after": after, "steps": steps_of.get(n, 0)}
        if math.isfinite(sqnr):
            layers[n]["sqnr_db"] = sqnr
    return {
        "method": recipe.refine or ("lba" if recipe.bias_align == "learn" else None),
        "bias_align": recipe.bias_align,
        "steps_budget": r.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "units": units,
        "layers": layers,
        "notes": r.notes,
    }
