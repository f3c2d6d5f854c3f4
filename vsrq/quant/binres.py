"""Binary residual branch for salient weight-quantization errors (after MPQ-DMv2's Flexible
Z-Order Residual Mixed Quantization; what we could and could not verify: docs/QUANT.md).

Why: a uniform 4-bit grid per output row is set by the row's largest weight, so a few salient
weights make the step coarse for all the others. With a cheap binary branch that takes the
largest residuals, the grid may clip those weights (a finer step for the rest) and the branch
restores most of what clipping and rounding lost:

    W' ~ deq(Q_beta(W')) + D,   D[n, j] = +-a_n on `binary_k` entries per row, 0 elsewhere

* Q_beta: round-to-nearest with the weight range of each row / group shrunk by beta in
  DEFAULT_CLIP_RATIOS (beta = 1 is plain RTN: the stored integers and scales stay the usual ones).
* the entries: per row, the `binary_k` largest |R| of the residual R = W' - deq(Q_beta(W')),
  stored in ascending column order (the fixed traversal the signs are packed in); per row one
  scale a_n = mean |R| over them (the least-squares scale of a sign pattern on a fixed support,
  so the branch always lowers the row's residual energy by binary_k a_n^2).
* beta is chosen per layer by the layer's output error on its calibration tokens (the engine's
  usual score, activations quantized), beta = 1 included.

Storage per layer (QuantLinear buffers bin_idx / bin_sign / bin_scale, docs/FORMAT.md):
binary_k column indices per row in the smallest integer container (8 bits up to K = 256,
16 above), 1 packed sign bit per entry, one fp16 scale per row. `branch_bits` counts exactly
that; methods.bits_per_weight adds it.
"""

from __future__ import annotations

import torch
from torch import nn

from vsrq.quant.pack import DEFAULT_CLIP_RATIOS, dequantize_weight, quantize_weight
from vsrq.quant.qlinear import QuantLinear, binary_index_dtype

__all__ = ["binary_k_for", "branch_bits", "quantize_weight_clipped", "binary_residual", "fit_binary_residual"]


def binary_k_for(share: float, k: int) -> int:
    """Binary entries per output row for a share of a row's K weights (at least 1 when share > 0)."""
    if share <= 0:
        return 0
    return min(k, max(1, round(share * k)))


def branch_bits(q: QuantLinear) -> int:
    """Stored bits of the layer's binary branch: indices (container width), signs, fp16 scales."""
    if not q.binary_k:
        return 0
    n, bk = q.out_features, q.binary_k
    idx_bits = torch.iinfo(binary_index_dtype(q.in_features)).bits
    return n * bk * (idx_bits + 1) + n * 16


def quantize_weight_clipped(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                            scale_dtype: torch.dtype, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`pack.quantize_weight` of w with each row's (group's) range shrunk by `ratio` in (0, 1]:
    values beyond it saturate. ratio = 1 is exactly quantize_weight."""
    if ratio == 1.0:
        return quantize_weight(w, bits, group_size, symmetric, scale_dtype)
    n, k = w.shape
    g = k if group_size is None else group_size
    wg = w.float().reshape(n, k // g, g)
    r = torch.tensor(ratio, dtype=torch.float32)
    if symmetric:
        hi = wg.abs().amax(-1, keepdim=True) * r
        lo = -hi
    else:
        lo = wg.amin(-1, keepdim=True).clamp(max=0.0) * r
        hi = wg.amax(-1, keepdim=True).clamp(min=0.0) * r
    return quantize_weight(torch.maximum(torch.minimum(wg, hi), lo).reshape(n, k), bits, group_size, symmetric, scale_dtype)


def binary_residual(r: torch.Tensor, binary_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx (N, binary_k) ascending, positive (N, binary_k) bool, scale (N,)) of the binary branch
    for a residual r (N, K): per row the binary_k largest |r|, scale = their mean |r|."""
    top = r.abs().topk(binary_k, dim=1).indices
    idx = top.sort(dim=1).values
    sel = r.gather(1, idx)
    scale = sel.abs().mean(1).to(torch.float16)
    return idx, sel >= 0, scale


def _target_weight(linear: nn.Linear, q: QuantLinear) -> torch.Tensor:
    """The weight the low-bit branch stands for: W' = (W * s) H minus the stored low-rank branch."""
    w = QuantLinear.transform_weight(linear.weight, q.smooth, q.hadamard_block)
    if q.rank:
        w = w - (q.lora_down.float() @ q.lora_up.float()).T
    return w


@torch.no_grad()
def fit_binary_residual(linear: nn.Linear, q: QuantLinear, x: torch.Tensor,
                        ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS) -> float:
    """Fit q's binary branch (q.binary_k > 0) and the clip ratio of its low-bit weights to the
    layer's calibration inputs x (M, K); sets q's integer weights, scales and branch, returns beta."""
    from vsrq.quant.methods import layer_error  # methods imports this module

    w = _target_weight(linear, q)
    best: tuple[float, float, tuple] | None = None
    for ratio in ratios:
        qi, scale, zero = quantize_weight_clipped(w, q.w_bits, q.group_size, q.symmetric, q.wscale.dtype, ratio)
        resid = w - dequantize_weight(qi, scale, zero, q.group_size)
        branch = binary_residual(resid, q.binary_k)
        q.set_quantized_weight(qi, scale, zero)
        q.set_binary_residual(*branch)
        mse = layer_error(linear, q, x)[0]
        if best is None or mse < best[0]:
            best = (mse, ratio, (qi, scale, zero, branch))
    assert best is not None
    qi, scale, zero, branch = best[2]
    q.set_quantized_weight(qi, scale, zero)
    q.set_binary_residual(*branch)
    return best[1]
