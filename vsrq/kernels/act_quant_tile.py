"""Activation quantization with whole rows per program, optionally fused with LayerNorm + adaLN modulate.

Why another kernel: the two-pass kernel (`act_quant`) runs at ~40 % of the H100's copy rate
whatever it computes (docs/PERF.md, GPU run 4), and the row-resident single-pass kernel (removed
since) packed a few long rows per program into many registers per thread (few programs per SM).
This one is the LayerNorm-tutorial shape: one (or a few) rows per program, the whole row as one register tile
(next_pow2(K) columns over 4-16 warps), thousands of small programs in flight, x read once.

The same shape fits the op that produces a DiT block's qkv/fc1 input, LayerNorm without affine
followed by modulate (x * (1 + scale) + shift): `norm_act_quant` computes both and writes only the
4-bit values and scales, so the 16-bit normalized activation never goes to memory.

Modes: per-token or per-group scales, smoothing (x * (1/smooth)), row sums (per row or per the
scale's groups), DRAQ clip ratio. No Hadamard rotation or low-rank branch: `act_quant` runs the
two-pass kernel for those, and this one (`tile_applies`) for the rest. Numerics: `act_quant_ref`
(bit-identical q and scales without the norm); with the norm, `norm_modulate_ref` then
`act_quant_ref`, equal up to the float summation order of the row mean and variance.
This module has the kernel and its launch; the entry points are `act_quant` and `norm_act_quant`
in `vsrq.kernels.act_quant`, which validate and allocate for both kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vsrq.kernels._jit import mul_rn, round_clamp, safe_scale
from vsrq.kernels._triton import interpreting, next_pow2

__all__ = ["TILE_MAX_K", "launch_tile", "modulation_vectors", "norm_modulate_ref", "tile_config"]

TILE_MAX_K = 16384  # the whole row is one register tile: 64 values per thread at the default 8 warps


@triton.jit
def _tile_kernel(
    x_ptr, smooth_ptr, mmul_ptr, madd_ptr, q_ptr, s_ptr, rs_ptr,
    M, K, stride_xm, stride_qm, stride_sm, stride_rsm,
    clip, eps,
    QMAX: tl.constexpr, GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, NORM: tl.constexpr,
    HAS_MOD: tl.constexpr, WANT_ROWSUM: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * ROWS + tl.arange(0, ROWS)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    k_mask = rk < K
    mask = m_mask[:, None] & k_mask[None, :]
    xf = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=mask, other=0.0).to(tl.float32)
    if NORM:
        mean = tl.sum(xf, axis=1) / K
        d = tl.where(mask, xf - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / K + eps)
        xf = d * rstd[:, None]
        if HAS_MOD:
            mmul = tl.load(mmul_ptr + rk, mask=k_mask, other=0.0)  # 1 + scale, fp32 from the host
            madd = tl.load(madd_ptr + rk, mask=k_mask, other=0.0)
            xf = mul_rn(xf, tl.broadcast_to(mmul[None, :], xf.shape), INTERP) + madd[None, :]
    if HAS_SMOOTH:
        inv_sm = tl.load(smooth_ptr + rk, mask=k_mask, other=1.0)  # 1 / smooth, from the host
        xf = mul_rn(xf, tl.broadcast_to(inv_sm[None, :], xf.shape), INTERP)
    NG: tl.constexpr = BLOCK_K // GROUP
    xg = tl.reshape(xf, (ROWS, NG, GROUP))
    scale, inv = safe_scale(tl.max(tl.abs(xg), axis=2), clip, QMAX)  # (ROWS, NG)
    inv_full = tl.reshape(tl.broadcast_to(inv[:, :, None], (ROWS, NG, GROUP)), (ROWS, BLOCK_K))
    q = round_clamp(xf, inv_full, QMAX, INTERP)
    tl.store(q_ptr + rm[:, None] * stride_qm + rk[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)
    rg = tl.arange(0, NG)
    g_mask = m_mask[:, None] & (rg * GROUP < K)[None, :]
    tl.store(s_ptr + rm[:, None] * stride_sm + rg[None, :], scale, mask=g_mask)
    if WANT_ROWSUM:
        sums = tl.sum(tl.reshape(q.to(tl.int32), (ROWS, NG, GROUP)), axis=2)  # padded columns are 0
        tl.store(rs_ptr + rm[:, None] * stride_rsm + rg[None, :], sums, mask=g_mask)


def tile_config(norm: bool = False) -> dict:
    """Default launch shape (the same for every K up to TILE_MAX_K). Quantizing alone: one row per
    program on 8 warps, the fastest or within 7 % of the fastest of GPU run 5's sweeps for both
    modes at K=3072 and 12288. With the
    LayerNorm: 4 rows on 8 warps, within 4 % of the best of GPU run 6's sweep at K=2560 and 3072
    per token and per group (0.093-0.096 ms at M=16384, against 0.11-0.13 on one row; docs/PERF.md)."""
    return {"ROWS": 4, "num_warps": 8} if norm else {"ROWS": 1, "num_warps": 8}


def launch_tile(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, rowsum: torch.Tensor | None,
                inv_smooth: torch.Tensor | None, mod: tuple[torch.Tensor, torch.Tensor] | None,
                qmax: int, group: int, clip: float, eps: float | None, config: dict | None) -> None:
    """Run the kernel on validated operands (`act_quant._plan` / `_operands` made them).
    group 0 = per token; mod = (1 + scale, shift) fp32 (K,) vectors, with eps only."""
    m, k = x.shape
    block_k = next_pow2(k)
    cfg = {**tile_config(eps is not None), **(config or {})}
    rows = int(cfg["ROWS"])
    dummy = scale
    _tile_kernel[(triton.cdiv(m, rows),)](
        x, dummy if inv_smooth is None else inv_smooth, dummy if mod is None else mod[0],
        dummy if mod is None else mod[1], q, scale, dummy if rowsum is None else rowsum,
        m, k, x.stride(0), q.stride(0), scale.stride(0), 0 if rowsum is None else rowsum.stride(0),
        clip, float(eps or 0.0),
        QMAX=qmax, GROUP=group or block_k, HAS_SMOOTH=inv_smooth is not None, NORM=eps is not None,
        HAS_MOD=mod is not None, WANT_ROWSUM=rowsum is not None, ROWS=rows, BLOCK_K=block_k,
        INTERP=interpreting(), num_warps=int(cfg["num_warps"]), enable_fp_fusion=False,
    )


def modulation_vectors(shift: torch.Tensor | None, scale: torch.Tensor | None, k: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 + scale, shift) as fp32 (K,) vectors, computed as torch computes them in fp32. Made
    once and reused where the modulation is constant (QuantLinear._modulation caches them): made
    inside each timed call, run 5 measured the fused kernel host-bound (0.18-0.21 vs 0.13 ms)."""
    sc = torch.zeros(k, device=device) if scale is None else scale.to(device=device, dtype=torch.float32).reshape(k)
    sh = torch.zeros(k, device=device) if shift is None else shift.to(device=device, dtype=torch.float32).reshape(k)
    return (1 + sc).contiguous(), sh.contiguous()


def norm_modulate_ref(x: torch.Tensor, eps: float, mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """fp32 LayerNorm (no affine), then x * (1 + scale) + shift: what `norm_act_quant` quantizes."""
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return y if mod is None else y * mod[0] + mod[1]
