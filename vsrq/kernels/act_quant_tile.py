"""Activation quantization with whole rows per program, optionally fused with LayerNorm + adaLN modulate.

Why another kernel: the two-pass kernel (`act_quant`) runs at ~40 % of the H100's copy rate
whatever it computes (docs/PERF.md, GPU run 4), and the row-resident single-pass kernel packs a
few long rows per program into many registers per thread (few programs per SM). This one is the
LayerNorm-tutorial shape: one (or a few) rows per program, the whole row as one register tile
(next_pow2(K) columns over 4-16 warps), thousands of small programs in flight, x read once.

The same shape fits the op that produces a DiT block's qkv/fc1 input, LayerNorm without affine
followed by modulate (x * (1 + scale) + shift): `norm_act_quant` computes both and writes only the
4-bit values and scales, so the 16-bit normalized activation never goes to memory.

Modes: per-token or per-group scales, smoothing (x * (1/smooth)), row sums (per row or per the
scale's groups), DRAQ clip ratio. No Hadamard rotation or low-rank branch (those stay with
`act_quant`). Numerics: `act_quant_ref` (bit-identical q and scales without the norm);
with the norm, `norm_modulate_ref` then `act_quant_ref`, equal up to the float summation order of
the row mean and variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vsrq.kernels._jit import mul_rn
from vsrq.kernels._triton import interpreting, next_pow2
from vsrq.kernels.act_quant import _round_clamp, _safe_scale
from vsrq.kernels.reference import ActQuantResult
from vsrq.quant.pack import check_clip_ratio

__all__ = ["act_quant_tile", "norm_act_quant", "norm_modulate_ref", "tile_config"]


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
    scale, inv = _safe_scale(tl.max(tl.abs(xg), axis=2), clip, QMAX)  # (ROWS, NG)
    inv_full = tl.reshape(tl.broadcast_to(inv[:, :, None], (ROWS, NG, GROUP)), (ROWS, BLOCK_K))
    q = _round_clamp(xf, inv_full, QMAX, INTERP)
    tl.store(q_ptr + rm[:, None] * stride_qm + rk[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)
    rg = tl.arange(0, NG)
    g_mask = m_mask[:, None] & (rg * GROUP < K)[None, :]
    tl.store(s_ptr + rm[:, None] * stride_sm + rg[None, :], scale, mask=g_mask)
    if WANT_ROWSUM:
        sums = tl.sum(tl.reshape(q.to(tl.int32), (ROWS, NG, GROUP)), axis=2)  # padded columns are 0
        tl.store(rs_ptr + rm[:, None] * stride_rsm + rg[None, :], sums, mask=g_mask)


def tile_config(k: int) -> dict:
    """Default launch shape: one row per program, ~16 values per thread (the tuned shape of
    Triton's LayerNorm tutorial); the bench script times the neighbours."""
    block_k = next_pow2(k)
    return {"ROWS": 1, "num_warps": max(1, min(16, block_k // 512))}


def _launch(x: torch.Tensor, bits: int, group_size: int | None, smooth: torch.Tensor | None,
            rowsum_group: int | None, clip_ratio: float | torch.Tensor, out_q: torch.Tensor | None,
            config: dict | None, eps: float | None, mmul: torch.Tensor | None,
            madd: torch.Tensor | None) -> ActQuantResult:
    if x.dim() != 2:
        raise ValueError("expects a 2-D (M, K) activation")
    if not 2 <= bits <= 8:
        raise ValueError("bits must be in 2..8")
    clip = check_clip_ratio(clip_ratio)
    m, k = x.shape
    block_k = next_pow2(k)
    group = block_k if group_size in (None, k) else int(group_size)
    if group != block_k and (k % group or group & (group - 1) or group < 2):
        raise ValueError(f"group_size {group_size} must be a power of two dividing K={k}")
    if rowsum_group not in (None, 0, k, group_size):
        raise ValueError("row sums are per row or per the activation scale's groups here")
    if x.stride(1) != 1:
        x = x.contiguous()
    dev = x.device
    q = out_q if out_q is not None else torch.empty((m, k), dtype=torch.int8, device=dev)
    if q.shape != (m, k) or q.stride(1) != 1:
        raise ValueError("out_q must be an (M, K) tensor with unit column stride")
    groups = 1 if group == block_k else k // group
    scale = torch.empty((m, groups), dtype=torch.float32, device=dev)
    want_rs = rowsum_group is not None
    rowsum = torch.empty((m, groups), dtype=torch.int32, device=dev) if want_rs else scale
    if m == 0:
        return ActQuantResult(q=q, scale=scale, rowsum=rowsum if want_rs else None, lowrank=None)
    inv_sm = (1.0 / smooth.to(device=dev, dtype=torch.float32)).contiguous() if smooth is not None else scale
    cfg = {**tile_config(k), **(config or {})}
    rows = int(cfg["ROWS"])
    _tile_kernel[(triton.cdiv(m, rows),)](
        x, inv_sm, mmul if mmul is not None else scale, madd if madd is not None else scale, q, scale, rowsum,
        m, k, x.stride(0), q.stride(0), scale.stride(0), rowsum.stride(0),
        clip, float(eps or 0.0),
        QMAX=(1 << (bits - 1)) - 1, GROUP=group, HAS_SMOOTH=smooth is not None, NORM=eps is not None,
        HAS_MOD=mmul is not None, WANT_ROWSUM=want_rs, ROWS=rows, BLOCK_K=block_k,
        INTERP=interpreting(), num_warps=int(cfg["num_warps"]), enable_fp_fusion=False,
    )
    return ActQuantResult(q=q, scale=scale, rowsum=rowsum if want_rs else None, lowrank=None)


def act_quant_tile(
    x: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    rowsum_group: int | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    out_q: torch.Tensor | None = None,
    config: dict | None = None,
) -> ActQuantResult:
    """`act_quant` for the modes without rotation or low-rank branch, whole rows per program."""
    return _launch(x, bits, group_size, smooth, rowsum_group, clip_ratio, out_q, config, None, None, None)


def _modulation(shift: torch.Tensor | None, scale: torch.Tensor | None, k: int,
                dev: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(1 + scale, shift) as fp32 (K,) vectors, computed as torch does in fp32."""
    if shift is None and scale is None:
        return None, None
    sc = torch.zeros(k, device=dev) if scale is None else scale.to(device=dev, dtype=torch.float32).reshape(k)
    sh = torch.zeros(k, device=dev) if shift is None else shift.to(device=dev, dtype=torch.float32).reshape(k)
    return (1 + sc).contiguous(), sh.contiguous()


def norm_modulate_ref(x: torch.Tensor, eps: float, shift: torch.Tensor | None = None,
                      scale: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 LayerNorm (no affine) then x * (1 + scale) + shift: what `norm_act_quant` quantizes."""
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    mmul, madd = _modulation(shift, scale, x.shape[-1], x.device)
    return y if mmul is None else y * mmul + madd


def norm_act_quant(
    x: torch.Tensor,
    eps: float,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    rowsum_group: int | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    config: dict | None = None,
) -> ActQuantResult:
    """Quantized LayerNorm(x) * (1 + scale) + shift in one pass (one modulation for all rows)."""
    mmul, madd = _modulation(shift, scale, x.shape[-1], x.device)
    return _launch(x, bits, group_size, smooth, rowsum_group, clip_ratio, None, config, float(eps), mmul, madd)
