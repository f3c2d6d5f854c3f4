"""Fused dynamic activation quantization (one launch per linear layer input).

Why fused: the W4A4 GEMM must read int8 containers only, so everything that touches
the 16-bit activation (smoothing, block Hadamard rotation, per-token/per-group absmax,
rounding, the zero-point row sums and the low-rank down-projection x_hat @ L_down)
happens here, in one kernel, instead of in the GEMM's main loop or in 4-5 torch ops.

Two kernels; ``act_quant`` picks one:
* whole-row tile (`act_quant_tile.py`, the default where it applies: no rotation, no low-rank
  branch, K <= 16384): one row per program, x read once, at the copy rate on the H100;
* two pass (any mode; the one for rotations and low-rank branches, and forced with
  ``two_pass=True``): per row block, absmax + low-rank over K, then a second pass re-reads the
  block to quantize (2-3x over the memory floor on the H100). Per-group mode needs no second pass.
(A row-resident single-pass kernel was removed on 2026-11-24: slower than two-pass on the H100
and superseded by the tile kernel; docs/PERF.md, GPU runs 3-5.)
Numerics: :func:`vsrq.kernels.reference.act_quant_ref`, including the
DRAQ clip ratio (a runtime fp32 argument: scale = div_rn(absmax * clip, qmax)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vsrq.kernels._jit import cast16, dot16, mul_rn, round_clamp, safe_scale
from vsrq.kernels._triton import capability, device_index, interpreting, next_pow2
from vsrq.kernels.act_quant_tile import TILE_MAX_K, launch_tile
from vsrq.kernels.reference import ActQuantResult, hadamard_matrix, hadamard_scale
from vsrq.quant.pack import check_clip_ratio

__all__ = ["act_quant", "norm_act_quant", "tile_applies", "tile_serves"]


@triton.jit
def _rotate(xf, x, had_ptr, rb, had_scale, BLOCK_K: tl.constexpr, HAD_SPLIT: tl.constexpr, INTERP: tl.constexpr):
    """Block Hadamard rotation of one (BLOCK_M, BLOCK_K) chunk: xf (fp32, smoothed) or, when
    HAD_SPLIT is off (16-bit x, no smoothing), x itself through 16-bit tensor cores."""
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
    return mul_rn(xf, tl.zeros(xf.shape, dtype=tl.float32) + had_scale, INTERP)


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
        xf = _rotate(xf, x, had_ptr, rb, had_scale, BLOCK_K, HAD_SPLIT, INTERP)
    return xf, k_mask


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
        scale, inv = safe_scale(amax, clip, QMAX)
        tl.store(s_ptr + rm * stride_sm, scale, mask=m_mask)
        inv_full = tl.broadcast_to(inv[:, None], (BLOCK_M, BLOCK_K))
        rs_tot = tl.zeros((BLOCK_M,), dtype=tl.int32)
        # pass 2: quantize (the row block was just read: mostly L2 hits)
        for k0 in range(0, K, BLOCK_K):
            xf, k_mask = _load_xhat(x_ptr, stride_xm, smooth_ptr, had_ptr, rm, m_mask, k0, K, had_scale,
                                    BLOCK_K, HAS_SMOOTH, HAD, HAD_SPLIT, INTERP)
            q = round_clamp(xf, inv_full, QMAX, INTERP)
            tl.store(q_ptr + rm[:, None] * stride_qm + (k0 + rb)[None, :], q.to(q_ptr.dtype.element_ty),
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
                s_j, inv_j = safe_scale(tl.max(tl.where(in_g, ax, 0.0), axis=1), clip, QMAX)
                col = k0 // GROUP + j
                tl.store(s_ptr + rm * stride_sm + col, s_j, mask=m_mask & ((rm * 0 + col * GROUP) < K))
                inv_full = tl.where(in_g, inv_j[:, None], inv_full)
            q = round_clamp(xf, inv_full, QMAX, INTERP)
            tl.store(q_ptr + rm[:, None] * stride_qm + (k0 + rb)[None, :], q.to(q_ptr.dtype.element_ty),
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


# ----------------------------------------------------------------------------- launch configs

# Two-pass kernel defaults, by architecture. sm90: the best of the 12-shape sweep on the H100
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


# ----------------------------------------------------------------------------- host side


@dataclass
class _Plan:
    """Validated arguments of one act_quant call (what both kernels' launches need)."""

    m: int
    k: int
    qmax: int
    group: int  # 0 = per token
    hadamard_block: int
    want_rs: bool
    rs_group: int  # 0 = one sum per row
    r: int
    has_smooth: bool
    clip: float
    arch: str


def _plan(x: torch.Tensor, bits: int, group_size: int | None, smooth: torch.Tensor | None,
          hadamard_block: int, lora_down: torch.Tensor | None, rowsum_group: int | None,
          clip_ratio: float | torch.Tensor) -> _Plan:
    """Check the arguments once; raise ValueError with the rule that is broken."""
    if x.dim() != 2:
        raise ValueError("act_quant expects a 2-D (M, K) activation")
    if not 2 <= bits <= 8:
        raise ValueError("bits must be in 2..8")
    clip = check_clip_ratio(clip_ratio)
    m, k = x.shape
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
    r = 0 if lora_down is None else int(lora_down.shape[1])
    if r and lora_down.shape[0] != k:
        raise ValueError(f"lora_down must be (K={k}, r), got {tuple(lora_down.shape)}")
    arch = "interp" if interpreting() else ("sm90" if capability(device_index(x))[0] >= 9 else "sm80")
    return _Plan(m, k, (1 << (bits - 1)) - 1, group, int(hadamard_block), want_rs, rs_group, r,
                 smooth is not None, clip, arch)


def _chunk_width(p: _Plan, cfg: dict) -> int:
    """BLOCK_K: whole groups / Hadamard blocks / row-sum groups per chunk.

    With groups or a Hadamard rotation the chunk stays small: the Hadamard dot costs
    BLOCK_K^2 per row and per-group scales cost one reduction per group in the chunk."""
    floor = 32 if p.arch == "interp" else 64
    if p.group or p.hadamard_block:
        return max(p.group, p.hadamard_block, p.rs_group, floor)
    block_k = max(int(cfg["BLOCK_K"]), p.rs_group)
    return max(16, min(block_k, max(next_pow2(p.k), p.rs_group)))


def tile_serves(k: int, group_size: int | None = None, rowsum_group: int | None = None,
                hadamard_block: int = 0, rank: int = 0) -> bool:
    """Whether the whole-row kernel (`act_quant_tile`) runs an `act_quant` call with these
    arguments: no rotation, no low-rank branch, K <= TILE_MAX_K, and row sums per row or per the
    scale's groups. One rule for the dispatcher and for callers that must know beforehand
    (`QuantLinear.forward_normed`, whose LayerNorm fusion exists only in this kernel)."""
    group = 0 if group_size in (None, 0, k) else group_size
    rows = 0 if rowsum_group in (None, 0, k) else rowsum_group
    return not hadamard_block and not rank and k <= TILE_MAX_K and rows in (0, group)


def tile_applies(p: _Plan) -> bool:
    """`tile_serves` for a checked plan."""
    return tile_serves(p.k, p.group, p.rs_group, p.hadamard_block, p.r)


# e4m3 holds every integer in [-16, 16] exactly: a <= 5-bit q can be written straight in
# the operand type of cuBLAS' fp8 GEMM (torch._scaled_mm), with no conversion pass.
_FP8 = getattr(torch, "float8_e4m3fn", None)


@dataclass
class _Operands:
    """Device tensors of one call; unused pointers alias x or scale (never read)."""

    x: torch.Tensor
    smooth: torch.Tensor
    ld: torch.Tensor
    q: torch.Tensor
    scale: torch.Tensor
    rowsum: torch.Tensor
    low: torch.Tensor


def _operands(x: torch.Tensor, p: _Plan, smooth: torch.Tensor | None, lora_down: torch.Tensor | None,
              out_q: torch.Tensor | None) -> _Operands:
    """Allocate the outputs and bring the inputs into the layout the kernels read."""
    dev = x.device
    # the kernels multiply by 1/smooth; computing it here (IEEE) matches the reference
    smooth_t = (1.0 / smooth.to(device=dev, dtype=torch.float32)).contiguous() if p.has_smooth else x
    q = out_q if out_q is not None else torch.empty((p.m, p.k), dtype=torch.int8, device=dev)
    if q.shape != (p.m, p.k) or q.stride(1) != 1 or q.dtype not in (torch.int8, _FP8):
        raise ValueError("out_q must be an int8 (or float8_e4m3fn) (M, K) tensor with unit column stride")
    if q.dtype == _FP8 and p.qmax > 15:
        raise ValueError("float8_e4m3fn holds the integers of at most 5 bits exactly")
    groups = 1 if p.group == 0 else p.k // p.group
    scale = torch.empty((p.m, groups), dtype=torch.float32, device=dev)
    rs_cols = 1 if p.rs_group == 0 else p.k // p.rs_group
    rowsum = torch.empty((p.m, rs_cols), dtype=torch.int32, device=dev) if p.want_rs else scale
    low = torch.empty((p.m, p.r), dtype=lora_down.dtype, device=dev) if p.r else scale
    ld = lora_down.to(dev) if p.r else x
    if p.r and ld.stride(1) != 1:
        ld = ld.contiguous()
    return _Operands(x, smooth_t, ld, q, scale, rowsum, low)


def _hadamard_operand(x: torch.Tensor, p: _Plan, block_k: int) -> tuple[torch.Tensor, bool]:
    """(block-diagonal Hadamard tile of BLOCK_K, whether fp32 values go through it as hi + lo)."""
    if not p.hadamard_block:
        return x, False
    split = p.has_smooth or x.dtype not in (torch.bfloat16, torch.float16)
    hdt = torch.bfloat16 if split else x.dtype
    return _blockdiag_hadamard(p.hadamard_block, block_k, hdt, x.device), split


def _launch(p: _Plan, o: _Operands, cfg: dict) -> None:
    """One launch of the two-pass kernel with launch config ``cfg``."""
    block_k = _chunk_width(p, cfg)
    had_t, had_split = _hadamard_operand(o.x, p, block_k)
    block_m = int(cfg["BLOCK_M"])
    _act_quant_kernel[(triton.cdiv(p.m, block_m),)](
        o.x, o.smooth, had_t, o.ld, o.q, o.scale, o.rowsum, o.low,
        p.m, p.k, p.r,
        o.x.stride(0), o.ld.stride(0) if p.r else 0, o.q.stride(0), o.scale.stride(0),
        o.rowsum.stride(0), o.low.stride(0) if p.r else 0,
        hadamard_scale(p.hadamard_block) if p.hadamard_block else 1.0, p.clip,
        QMAX=p.qmax, GROUP=p.group, RS_GROUP=p.rs_group, HAS_SMOOTH=p.has_smooth, HAD=bool(p.hadamard_block),
        HAD_SPLIT=had_split, HAS_LORA=p.r > 0, WANT_ROWSUM=p.want_rs, BLOCK_M=block_m, BLOCK_K=block_k,
        BLOCK_R=max(16, next_pow2(p.r)), INTERP=(p.arch == "interp"),
        num_warps=int(cfg["num_warps"]), enable_fp_fusion=False,
    )


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
    two_pass: bool = False,
) -> ActQuantResult:
    """Quantize a (M, K) activation with the fused Triton kernel; see ``act_quant_ref``.

    ``clip_ratio`` in (0, 1] (DRAQ) is passed as a runtime fp32 argument: changing it per
    layer does not recompile. A tensor is read once on the host (a device sync on CUDA:
    callers in a hot loop pass a float; QuantLinear caches it).

    The kernel: the whole-row tile kernel where `tile_applies` (1.8-2.4x faster than two-pass
    on the H100, GPU run 5), else the two-pass kernel; ``two_pass=True`` forces the two-pass
    kernel (benchmarks and tests compare the two). ``out_q`` lets callers pass the q buffer: a
    poisoned one (tests), or float8_e4m3fn for bits <= 5 (the operand of torch._scaled_mm; e4m3
    conversion needs sm_89+ on a GPU); ``config`` pins the launch shape of the kernel that runs:
    ROWS / num_warps for the tile kernel, BLOCK_M / BLOCK_K / num_warps for the two-pass kernel
    (a config without ROWS runs the two-pass kernel); without it each kernel's default.
    """
    p = _plan(x, bits, group_size, smooth, hadamard_block, lora_down, rowsum_group, clip_ratio)
    if x.stride(1) != 1:
        x = x.contiguous()
    o = _operands(x, p, smooth, lora_down, out_q)
    if p.m == 0:
        return _result(p, o)
    if not two_pass and tile_applies(p) and (config is None or "ROWS" in config):
        _launch_tile(p, o, config, None, None)
        return _result(p, o)
    _launch(p, o, {**_DEFAULTS[p.arch], **(config or {})})
    return _result(p, o)


def _result(p: _Plan, o: _Operands) -> ActQuantResult:
    return ActQuantResult(q=o.q, scale=o.scale, rowsum=o.rowsum if p.want_rs else None,
                          lowrank=o.low if p.r else None)


def _launch_tile(p: _Plan, o: _Operands, config: dict | None, eps: float | None,
                 mod: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    launch_tile(o.x, o.q, o.scale, o.rowsum if p.want_rs else None, o.smooth if p.has_smooth else None, mod,
                p.qmax, p.group, p.clip, eps, config)


def norm_act_quant(
    x: torch.Tensor,
    eps: float,
    mod: tuple[torch.Tensor, torch.Tensor] | None = None,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    rowsum_group: int | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    out_q: torch.Tensor | None = None,
    config: dict | None = None,
) -> ActQuantResult:
    """Quantize LayerNorm(x) (no affine, ``eps``) * (1 + scale) + shift in one pass over x: the
    DiT block's qkv / fc1 input, never written in 16 bits. ``mod`` = `modulation_vectors(shift,
    scale, ...)`, made once per layer; None = LayerNorm alone. Numerics: `norm_modulate_ref` then
    `act_quant_ref` (equal up to the summation order of the row mean and variance). The modes
    of the tile kernel only (`tile_applies`): ValueError otherwise."""
    p = _plan(x, bits, group_size, smooth, 0, None, rowsum_group, clip_ratio)
    if not tile_applies(p):
        raise ValueError(f"norm_act_quant: K <= {TILE_MAX_K} and row sums per row or per the scale's groups only")
    if mod is not None and (mod[0].shape != (p.k,) or mod[1].shape != (p.k,) or mod[0].dtype != torch.float32):
        raise ValueError("mod must be two fp32 (K,) vectors: modulation_vectors(shift, scale, K, device)")
    if x.stride(1) != 1:
        x = x.contiguous()
    o = _operands(x, p, smooth, None, out_q)
    if p.m:
        _launch_tile(p, o, config, float(eps), mod)
    return _result(p, o)
