"""Fused dynamic activation quantization (one launch per linear layer input).

Why fused: the W4A4 GEMM must read int8 containers only, so everything that touches
the 16-bit activation (smoothing, block Hadamard rotation, per-token/per-group absmax,
rounding, the zero-point row sums and the low-rank down-projection x_hat @ L_down)
happens here, in one kernel, instead of in the GEMM's main loop or in 4-5 torch ops.

Per-token scales need the whole row before any value can be rounded, so that mode
makes two passes over K per row block (absmax + low-rank, then quantize); the second
pass re-reads a row block that was just read, which mostly hits L2. Per-group mode is
a single pass. Numerics: :func:`vsrq.kernels.reference.act_quant_ref`, including the
DRAQ clip ratio (a runtime fp32 argument: scale = div_rn(absmax * clip, qmax)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels._jit import cast16, dot16, mul_rn
from vsrq.kernels._triton import capability, device_index, interpreting, next_pow2
from vsrq.kernels.reference import ActQuantResult, hadamard_matrix, hadamard_scale
from vsrq.quant.pack import check_clip_ratio

__all__ = ["act_quant"]


@triton.jit
def _load_xhat(x_ptr, stride_xm, smooth_ptr, had_ptr, rm, m_mask, k0, K, had_scale,
               BLOCK_K: tl.constexpr, HAS_SMOOTH: tl.constexpr, HAD: tl.constexpr, HAD_SPLIT: tl.constexpr,
               INTERP: tl.constexpr):
    """Load one (BLOCK_M, BLOCK_K) chunk of x and apply smoothing / block Hadamard (fp32 out)."""
    rb = tl.arange(0, BLOCK_K)
    rk = k0 + rb
    k_mask = rk < K
    x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                mask=m_mask[:, None] & k_mask[None, :], other=0.0)
    xf = x.to(tl.float32)
    if HAS_SMOOTH:
        inv_sm = tl.load(smooth_ptr + rk, mask=k_mask, other=1.0)  # 1 / smooth, from the host
        xf = mul_rn(xf, tl.broadcast_to(inv_sm[None, :], xf.shape), INTERP)
    if HAD:
        # block-diagonal +-1 matrix of size BLOCK_K (kron(I, H_b)); exact in 16-bit
        h = tl.load(had_ptr + rb[:, None] * BLOCK_K + rb[None, :])
        if HAD_SPLIT:
            # fp32 values through 16-bit tensor cores: hi + lo keeps ~16 mantissa bits
            hi = cast16(xf, h.dtype, INTERP)
            lo = cast16(xf - hi.to(tl.float32), h.dtype, INTERP)
            zero = tl.zeros(xf.shape, dtype=tl.float32)
            xf = dot16(lo, h, dot16(hi, h, zero, INTERP), INTERP)
        else:
            xf = dot16(x.to(h.dtype), h, tl.zeros(xf.shape, dtype=tl.float32), INTERP)
        xf = mul_rn(xf, tl.zeros(xf.shape, dtype=tl.float32) + had_scale, INTERP)
    return xf, k_mask


@triton.jit
def _round_clamp(xf, inv_full, QMAX: tl.constexpr, INTERP: tl.constexpr):
    """q = clamp(floor(x * (1/s) + 0.5), -QMAX-1, QMAX); the multiply is an explicit mul.rn so
    the multiply and the add round separately, exactly as in torch (no FMA)."""
    q = tl.floor(mul_rn(xf, inv_full, INTERP) + 0.5)
    return tl.minimum(tl.maximum(q, -QMAX - 1.0), QMAX * 1.0)


@triton.jit
def _safe_scale(amax, clip, QMAX: tl.constexpr):
    """(scale, 1/scale) with IEEE divisions (one per row or group): torch computes the same.
    scale = (amax * clip) / QMAX: the fp32 product rounds once (no fusion into the division),
    as in torch; clip = 1.0 leaves amax unchanged."""
    s = tl.math.div_rn(amax * clip, tl.full(amax.shape, QMAX, tl.float32))
    s = tl.where(s > 0, s, 1.0)
    return s, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


@triton.jit
def _store_group_sums(rs_ptr, stride_rsm, qi, rm, m_mask, k0, K, RS_GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Store int32 row sums of q for each RS_GROUP-wide group inside this chunk."""
    rb = tl.arange(0, BLOCK_K)
    for j in tl.static_range(BLOCK_K // RS_GROUP):
        in_g = (rb // RS_GROUP) == j
        sj = tl.sum(tl.where(in_g[None, :], qi, 0), axis=1)
        col = k0 // RS_GROUP + j
        tl.store(rs_ptr + rm * stride_rsm + col, sj, mask=m_mask & ((rm * 0 + col * RS_GROUP) < K))


@triton.jit
def _act_quant_kernel(
    x_ptr, smooth_ptr, had_ptr, ld_ptr, q_ptr, s_ptr, rs_ptr, h_ptr,
    M, K, R,
    stride_xm, stride_ldk, stride_qm, stride_sm, stride_rsm, stride_hm,
    had_scale, clip,
    QMAX: tl.constexpr, GROUP: tl.constexpr, RS_GROUP: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, HAD: tl.constexpr, HAD_SPLIT: tl.constexpr,
    HAS_LORA: tl.constexpr, WANT_ROWSUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, INTERP: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = rm < M
    rb = tl.arange(0, BLOCK_K)
    rr = tl.arange(0, BLOCK_R)
    hacc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    if GROUP == 0:
        # pass 1: per-token absmax (+ low-rank down-projection of the same chunks)
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xf, k_mask = _load_xhat(x_ptr, stride_xm, smooth_ptr, had_ptr, rm, m_mask, k0, K, had_scale,
                                    BLOCK_K, HAS_SMOOTH, HAD, HAD_SPLIT, INTERP)
            amax = tl.maximum(amax, tl.max(tl.abs(xf), axis=1))
            if HAS_LORA:
                ld = tl.load(ld_ptr + (k0 + rb)[:, None] * stride_ldk + rr[None, :],
                             mask=k_mask[:, None] & (rr < R)[None, :], other=0.0)
                hacc = dot16(cast16(xf, ld.dtype, INTERP), ld, hacc, INTERP)
        scale, inv = _safe_scale(amax, clip, QMAX)
        tl.store(s_ptr + rm * stride_sm, scale, mask=m_mask)
        inv_full = tl.broadcast_to(inv[:, None], (BLOCK_M, BLOCK_K))
        rs_tot = tl.zeros((BLOCK_M,), dtype=tl.int32)
        # pass 2: quantize (the row block was just read: mostly L2 hits)
        for k0 in range(0, K, BLOCK_K):
            xf, k_mask = _load_xhat(x_ptr, stride_xm, smooth_ptr, had_ptr, rm, m_mask, k0, K, had_scale,
                                    BLOCK_K, HAS_SMOOTH, HAD, HAD_SPLIT, INTERP)
            q = _round_clamp(xf, inv_full, QMAX, INTERP)
            tl.store(q_ptr + rm[:, None] * stride_qm + (k0 + rb)[None, :], q.to(tl.int8),
                     mask=m_mask[:, None] & k_mask[None, :])
            if WANT_ROWSUM:
                qi = q.to(tl.int32)  # masked columns are 0
                if RS_GROUP == 0:
                    rs_tot += tl.sum(qi, axis=1)
                else:
                    _store_group_sums(rs_ptr, stride_rsm, qi, rm, m_mask, k0, K, RS_GROUP, BLOCK_K)
        if WANT_ROWSUM:
            if RS_GROUP == 0:
                tl.store(rs_ptr + rm * stride_rsm, rs_tot, mask=m_mask)
    else:
        # per-group scales: one pass; BLOCK_K is a multiple of GROUP
        for k0 in range(0, K, BLOCK_K):
            xf, k_mask = _load_xhat(x_ptr, stride_xm, smooth_ptr, had_ptr, rm, m_mask, k0, K, had_scale,
                                    BLOCK_K, HAS_SMOOTH, HAD, HAD_SPLIT, INTERP)
            ax = tl.abs(xf)
            inv_full = tl.full((BLOCK_M, BLOCK_K), 1.0, dtype=tl.float32)
            for j in tl.static_range(BLOCK_K // GROUP):
                in_g = ((rb // GROUP) == j)[None, :]
                s_j, inv_j = _safe_scale(tl.max(tl.where(in_g, ax, 0.0), axis=1), clip, QMAX)
                col = k0 // GROUP + j
                tl.store(s_ptr + rm * stride_sm + col, s_j, mask=m_mask & ((rm * 0 + col * GROUP) < K))
                inv_full = tl.where(in_g, inv_j[:, None], inv_full)
            q = _round_clamp(xf, inv_full, QMAX, INTERP)
            tl.store(q_ptr + rm[:, None] * stride_qm + (k0 + rb)[None, :], q.to(tl.int8),
                     mask=m_mask[:, None] & k_mask[None, :])
            if WANT_ROWSUM:
                _store_group_sums(rs_ptr, stride_rsm, q.to(tl.int32), rm, m_mask, k0, K, RS_GROUP, BLOCK_K)
            if HAS_LORA:
                ld = tl.load(ld_ptr + (k0 + rb)[:, None] * stride_ldk + rr[None, :],
                             mask=k_mask[:, None] & (rr < R)[None, :], other=0.0)
                hacc = dot16(cast16(xf, ld.dtype, INTERP), ld, hacc, INTERP)
    if HAS_LORA:
        tl.store(h_ptr + rm[:, None] * stride_hm + rr[None, :], cast16(hacc, h_ptr.dtype.element_ty, INTERP),
                 mask=m_mask[:, None] & (rr < R)[None, :])


# Default launch shapes, by architecture. sm90: the best of the 12-shape sweep on the H100
# (M=16384, K=3072, smooth + r32: 0.127 ms vs 0.185 for the earlier 32x256; docs/PERF.md).
# sm80: not measured yet.
_DEFAULTS = {
    "sm90": {"BLOCK_M": 64, "BLOCK_K": 128, "num_warps": 4},
    "sm80": {"BLOCK_M": 32, "BLOCK_K": 128, "num_warps": 4},
    "interp": {"BLOCK_M": 16, "BLOCK_K": 64, "num_warps": 4},
}

_HAD_CACHE: dict[tuple, torch.Tensor] = {}


def _blockdiag_hadamard(block: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """kron(I_{size/block}, H_block) as a (size, size) tensor (+-1 and 0, exact in 16-bit)."""
    key = (block, size, dtype, device)
    if key not in _HAD_CACHE:
        h = hadamard_matrix(block, torch.float32)
        _HAD_CACHE[key] = torch.block_diag(*([h] * (size // block))).to(dtype=dtype, device=device).contiguous()
    return _HAD_CACHE[key]


def act_quant(
    x: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    hadamard_block: int = 0,
    lora_down: torch.Tensor | None = None,
    rowsum_group: int | None = None,
    out_q: torch.Tensor | None = None,
    config: dict | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
) -> ActQuantResult:
    """Quantize a (M, K) activation with the fused Triton kernel; see ``act_quant_ref``.

    ``clip_ratio`` in (0, 1] (DRAQ) is passed as a runtime fp32 argument: changing it per
    layer does not recompile. A tensor is read once on the host (a device sync on CUDA:
    callers in a hot loop pass a float; QuantLinear caches it).

    ``out_q`` lets callers (benchmarks) pass a poisoned buffer; ``config`` overrides
    BLOCK_M / BLOCK_K / num_warps.
    """
    if x.dim() != 2:
        raise ValueError("act_quant expects a 2-D (M, K) activation")
    if not 2 <= bits <= 8:
        raise ValueError("bits must be in 2..8")
    clip = check_clip_ratio(clip_ratio)
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    dev = x.device
    qmax = (1 << (bits - 1)) - 1
    group = 0 if group_size in (None, k) else int(group_size)
    if group and (k % group or group & (group - 1) or group < 16):
        raise ValueError(f"group_size {group_size} must be a power of two >= 16 dividing K={k}")
    if hadamard_block and (hadamard_block & (hadamard_block - 1) or k % hadamard_block or hadamard_block < 16):
        raise ValueError(f"hadamard_block {hadamard_block} must be a power of two >= 16 dividing K={k}")
    want_rs = rowsum_group is not None
    rs_group = 0 if not want_rs or rowsum_group in (0, k) else int(rowsum_group)
    if group and want_rs and rs_group != group:
        raise ValueError("with per-group activation scales, row sums must use the same groups")
    if rs_group and (k % rs_group or rs_group & (rs_group - 1)):
        raise ValueError(f"rowsum_group {rowsum_group} must be a power of two dividing K={k}")

    arch = "interp" if interpreting() else ("sm90" if capability(device_index(x))[0] >= 9 else "sm80")
    cfg = dict(_DEFAULTS[arch])
    if config:
        cfg.update(config)
    if group or hadamard_block:
        # one chunk = whole groups / Hadamard blocks; small, since the Hadamard dot costs
        # BLOCK_K^2 per row and the per-group scales cost one pass per group in the chunk
        block_k = max(group, hadamard_block, rs_group, 32 if arch == "interp" else 64)
    else:
        block_k = max(int(cfg["BLOCK_K"]), rs_group)
        block_k = max(16, min(block_k, max(next_pow2(k), rs_group)))

    r = 0 if lora_down is None else int(lora_down.shape[1])
    if r and lora_down.shape[0] != k:
        raise ValueError(f"lora_down must be (K={k}, r), got {tuple(lora_down.shape)}")
    has_lora = r > 0
    block_r = max(16, next_pow2(r))

    has_smooth = smooth is not None
    # the kernel multiplies by 1/smooth; computing it here (IEEE) matches the reference
    smooth_t = (1.0 / smooth.to(device=dev, dtype=torch.float32)).contiguous() if has_smooth else x
    had_split = False
    had_t = x
    if hadamard_block:
        had_split = has_smooth or x.dtype not in (torch.bfloat16, torch.float16)
        hdt = torch.bfloat16 if had_split else x.dtype
        had_t = _blockdiag_hadamard(hadamard_block, block_k, hdt, dev)

    groups = 1 if group == 0 else k // group
    q = out_q if out_q is not None else torch.empty((m, k), dtype=torch.int8, device=dev)
    if q.shape != (m, k) or q.dtype != torch.int8 or q.stride(1) != 1:
        raise ValueError("out_q must be an int8 (M, K) tensor with unit column stride")
    scale = torch.empty((m, groups), dtype=torch.float32, device=dev)
    rs_cols = (1 if rs_group == 0 else k // rs_group) if want_rs else 1
    rowsum = torch.empty((m, rs_cols), dtype=torch.int32, device=dev) if want_rs else scale
    low = torch.empty((m, r), dtype=lora_down.dtype, device=dev) if has_lora else scale
    ld = lora_down.to(dev) if has_lora else x
    if has_lora and ld.stride(1) != 1:
        ld = ld.contiguous()

    grid = (triton.cdiv(m, int(cfg["BLOCK_M"])),)
    if m > 0:
        _act_quant_kernel[grid](
            x, smooth_t, had_t, ld, q, scale, rowsum, low,
            m, k, r,
            x.stride(0), ld.stride(0) if has_lora else 0, q.stride(0), scale.stride(0),
            rowsum.stride(0), low.stride(0) if has_lora else 0,
            hadamard_scale(hadamard_block) if hadamard_block else 1.0, clip,
            QMAX=qmax, GROUP=group, RS_GROUP=rs_group,
            HAS_SMOOTH=has_smooth, HAD=bool(hadamard_block), HAD_SPLIT=had_split,
            HAS_LORA=has_lora, WANT_ROWSUM=want_rs,
            BLOCK_M=int(cfg["BLOCK_M"]), BLOCK_K=block_k, BLOCK_R=block_r, INTERP=(arch == "interp"),
            num_warps=int(cfg["num_warps"]), enable_fp_fusion=False,
        )
    return ActQuantResult(q=q, scale=scale, rowsum=rowsum if want_rs else None, lowrank=low if has_lora else None)
