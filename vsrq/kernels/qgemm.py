"""Scaled low-bit GEMM on INT8 tensor cores with the whole linear-layer epilogue fused.

Why int8 containers: Hopper has no INT4 MMA, and unpacking nibbles inside the main
loop measured slower than bf16. So the main loop is a plain int8 ``tl.dot`` with int32
accumulation over int4 (or int8) values already widened to int8; everything else
(per-token x per-channel scales, per-group scaling, zero-point correction from the
activation row sums, bias, the low-rank up-projection, GELU, gate, residual) is done
once per output tile, in the epilogue, or (per-group mode) once per K-group.

Three kernels share the epilogue:
* ``ptr``: pointer loads, one tile per program (any K, any arch; the interpreter path);
* ``tma``: Hopper tensor-memory-accelerator descriptors, one tile per program;
* ``persistent``: TMA, one program per SM looping over tiles.
An fp8 (e4m3) operand variant exists for benchmarking: int4 values are exact in e4m3.
Numerics: :func:`vsrq.kernels.reference.qgemm_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels._jit import cast16, dot16
from vsrq.kernels._triton import (
    capability,
    device_index,
    interpreting,
    max_shared_memory,
    next_pow2,
    num_sms,
    tune_once,
)

__all__ = ["qgemm", "gemm_args", "GEMM_IMPLS", "gemm_configs"]

GEMM_IMPLS = ("auto", "ptr", "tma", "persistent")


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _tile_coords(tile_id, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped (L2-friendly) ordering: GROUP_M row blocks share the weight tiles they stream."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_in_group
    first_m = group_id * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % num_in_group) % group_rows
    pid_n = (tile_id % num_in_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _mma(a, b, acc, FP8: tl.constexpr, FP8_ACC_K: tl.constexpr):
    """acc += a @ b: int8 -> int32, or fp8 -> fp32 (FP8_ACC_K > 0 promotes the fp8
    accumulator to full fp32 every FP8_ACC_K products; 0 keeps Triton's default)."""
    if FP8:
        if FP8_ACC_K > 0:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32, max_num_imprecise_acc=FP8_ACC_K)
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _gelu_tanh(y, INTERP: tl.constexpr):
    """GELU tanh approximation. On the GPU tanh is the hardware's tanh.approx.f32 (one MUFU
    instruction, relative error ~2^-11, below the bf16 output's 2^-8): the exp + IEEE-division
    form cost ~1.4 ms of a 4-block 3B-sized forward in the fc1 epilogues (docs/PERF.md, GPU run 8).
    The interpreter has no inline asm: there tanh goes through exp(-2|u|), which cannot overflow."""
    u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
    if INTERP:
        e = tl.exp(-2.0 * tl.abs(u))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(u >= 0, t, -t)
    else:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
    return 0.5 * y * (1.0 + t)


@triton.jit
def _group_scale(part, kt, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                 stride_sam, stride_sag, stride_swn, stride_swg, stride_zwn, stride_zwg, stride_rsm,
                 ASYM: tl.constexpr):
    """fp32 contribution of K-group ``kt``: sa[m,g] sw[n,g] (acc - rowsum[m,g] z[n,g])."""
    if ASYM:
        z = tl.load(zw_ptr + rn_l * stride_zwn + kt * stride_zwg).to(tl.int32)
        rs = tl.load(rs_ptr + rm_l * stride_rsm + kt)
        part = part - rs[:, None] * z[None, :]
    s_a = tl.load(sa_ptr + rm_l * stride_sam + kt * stride_sag)
    s_w = tl.load(sw_ptr + rn_l * stride_swn + kt * stride_swg).to(tl.float32)
    return part.to(tl.float32) * s_a[:, None] * s_w[None, :]


@triton.jit
def _channel_scale(acc, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                   stride_sam, stride_swn, stride_zwn, stride_rsm, ASYM: tl.constexpr):
    """Per-token x per-channel scaling of the full-K accumulator (+ zero-point term)."""
    if ASYM:
        z = tl.load(zw_ptr + rn_l * stride_zwn).to(tl.int32)
        rs = tl.load(rs_ptr + rm_l * stride_rsm)
        acc = acc - rs[:, None] * z[None, :]
    s_a = tl.load(sa_ptr + rm_l * stride_sam)
    s_w = tl.load(sw_ptr + rn_l * stride_swn).to(tl.float32)
    return acc.to(tl.float32) * s_a[:, None] * s_w[None, :]


@triton.jit
def _epilogue(y, rm, rn, M, N, R, c_ptr, stride_cm, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
              gate_ptr, stride_gm, res_ptr, stride_resm,
              HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
              ACT_GELU: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, INTERP: tl.constexpr):
    """`_epilogue_math`, then a masked pointer store of the tile."""
    y = _epilogue_math(y, rm, rn, M, N, R, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
                       gate_ptr, stride_gm, res_ptr, stride_resm,
                       HAS_BIAS, HAS_LORA, BLOCK_R, ACT_GELU, HAS_GATE, HAS_RES, INTERP)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], cast16(y, c_ptr.dtype.element_ty, INTERP), mask=mask)


@triton.jit
def _epilogue_math(y, rm, rn, M, N, R, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
                   gate_ptr, stride_gm, res_ptr, stride_resm,
                   HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
                   ACT_GELU: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, INTERP: tl.constexpr):
    """low-rank up-projection, bias, GELU, gate, residual (all on the fp32 tile)."""
    m_mask = rm < M
    n_mask = rn < N
    if HAS_LORA:
        rr = tl.arange(0, BLOCK_R)
        h = tl.load(h_ptr + rm[:, None] * stride_hm + rr[None, :],
                    mask=m_mask[:, None] & (rr < R)[None, :], other=0.0)
        lu = tl.load(lu_ptr + rr[:, None] * stride_lur + rn[None, :],
                     mask=(rr < R)[:, None] & n_mask[None, :], other=0.0)
        y = dot16(h, lu, y, INTERP)
    if HAS_BIAS:
        b = tl.load(bias_ptr + rn, mask=n_mask, other=0.0)
        y = y + b[None, :]
    if ACT_GELU:
        y = _gelu_tanh(y, INTERP)
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_GATE == 2:  # one gate vector for every row (stride 0 along M): load it once, as a vector
        g = tl.load(gate_ptr + rn, mask=n_mask, other=0.0)
        y = y * g.to(tl.float32)[None, :]
    elif HAS_GATE:
        g = tl.load(gate_ptr + rm[:, None] * stride_gm + rn[None, :], mask=mask, other=0.0)
        y = y * g.to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + rm[:, None] * stride_resm + rn[None, :], mask=mask, other=0.0)
        y = y + r.to(tl.float32)
    return y


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _qgemm_ptr_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sw_ptr, zw_ptr, rs_ptr, bias_ptr, h_ptr, lu_ptr, gate_ptr, res_ptr,
    M, N, K, R,
    stride_am, stride_bn, stride_cm, stride_sam, stride_sag, stride_swn, stride_swg,
    stride_zwn, stride_zwg, stride_rsm, stride_hm, stride_lur, stride_gm, stride_resm,
    GROUPED: tl.constexpr, ASYM: tl.constexpr, FP8: tl.constexpr, FP8_ACC_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
    ACT_GELU: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, INTERP: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # out-of-range rows/cols read row 0 (always valid) and are dropped at the store
    rm_l = tl.where(rm < M, rm, 0)
    rn_l = tl.where(rn < N, rn, 0)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm_l[:, None] * stride_am + rk[None, :]
    b_ptrs = b_ptr + rn_l[None, :] * stride_bn + rk[:, None]
    k_tiles = tl.cdiv(K, BLOCK_K)
    acc_dt = tl.float32 if FP8 else tl.int32
    if GROUPED:
        # BLOCK_K == group size: one K step is one group
        y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(k_tiles):
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            part = _mma(a, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dt), FP8, FP8_ACC_K)
            y += _group_scale(part, kt, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                              stride_sam, stride_sag, stride_swn, stride_swg, stride_zwn, stride_zwg,
                              stride_rsm, ASYM)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dt)
        for kt in range(k_tiles):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_left = K - kt * BLOCK_K
                a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0)
                b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0)
            acc = _mma(a, b, acc, FP8, FP8_ACC_K)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        y = _channel_scale(acc, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                           stride_sam, stride_swn, stride_zwn, stride_rsm, ASYM)
    _epilogue(y, rm, rn, M, N, R, c_ptr, stride_cm, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
              gate_ptr, stride_gm, res_ptr, stride_resm,
              HAS_BIAS, HAS_LORA, BLOCK_R, ACT_GELU, HAS_GATE, HAS_RES, INTERP)


@triton.jit
def _qgemm_tma_kernel(
    a_desc, b_desc, c_desc, c_ptr, sa_ptr, sw_ptr, zw_ptr, rs_ptr, bias_ptr, h_ptr, lu_ptr, gate_ptr, res_ptr,
    M, N, K, R, NUM_PROGS,
    stride_cm, stride_sam, stride_sag, stride_swn, stride_swg,
    stride_zwn, stride_zwg, stride_rsm, stride_hm, stride_lur, stride_gm, stride_resm,
    GROUPED: tl.constexpr, ASYM: tl.constexpr, FP8: tl.constexpr, FP8_ACC_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
    ACT_GELU: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr, TMA_STORE: tl.constexpr, INTERP: tl.constexpr,
):
    """TMA loads (zero-filled out of bounds, so ragged M/N/K need no masks); a grid of
    NUM_PROGS programs loops over the tiles (NUM_PROGS = #tiles: one tile each).
    TMA_STORE: the output tile leaves through a TMA store of ``c_desc`` (two BLOCK_N / 2 halves,
    clipped at the edges by the copy engine) instead of masked pointer stores: the store is
    asynchronous, so a persistent program starts its next tile while the copy engine writes."""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    acc_dt = tl.float32 if FP8 else tl.int32
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_PROGS, flatten=FLATTEN):
        pid_m, pid_n = _tile_coords(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        rm_l = tl.where(rm < M, rm, 0)
        rn_l = tl.where(rn < N, rn, 0)
        if GROUPED:
            y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_tiles):
                a = a_desc.load([off_m, kt * BLOCK_K])
                b = b_desc.load([off_n, kt * BLOCK_K])
                part = _mma(a, b.T, tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dt), FP8, FP8_ACC_K)
                y += _group_scale(part, kt, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                                  stride_sam, stride_sag, stride_swn, stride_swg, stride_zwn, stride_zwg,
                                  stride_rsm, ASYM)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dt)
            for kt in range(k_tiles):
                a = a_desc.load([off_m, kt * BLOCK_K])
                b = b_desc.load([off_n, kt * BLOCK_K])
                acc = _mma(a, b.T, acc, FP8, FP8_ACC_K)
            y = _channel_scale(acc, rm_l, rn_l, sa_ptr, sw_ptr, zw_ptr, rs_ptr,
                               stride_sam, stride_swn, stride_zwn, stride_rsm, ASYM)
        if TMA_STORE:
            y = _epilogue_math(y, rm, rn, M, N, R, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
                               gate_ptr, stride_gm, res_ptr, stride_resm,
                               HAS_BIAS, HAS_LORA, BLOCK_R, ACT_GELU, HAS_GATE, HAS_RES, INTERP)
            y = cast16(y, c_ptr.dtype.element_ty, INTERP)
            halves = tl.permute(tl.reshape(y, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            y0, y1 = tl.split(halves)
            c_desc.store([off_m, off_n], y0)
            c_desc.store([off_m, off_n + BLOCK_N // 2], y1)
        else:
            _epilogue(y, rm, rn, M, N, R, c_ptr, stride_cm, bias_ptr, h_ptr, stride_hm, lu_ptr, stride_lur,
                      gate_ptr, stride_gm, res_ptr, stride_resm,
                      HAS_BIAS, HAS_LORA, BLOCK_R, ACT_GELU, HAS_GATE, HAS_RES, INTERP)


# ----------------------------------------------------------------------------- configs

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). K-tile 128 int8 = 128-byte rows.
_SM90 = [
    (128, 256, 128, 8, 8, 3),
    (128, 256, 64, 8, 8, 4),
    (256, 128, 128, 8, 8, 3),
    (128, 128, 128, 8, 4, 4),
    (128, 128, 128, 8, 8, 4),
    (128, 256, 128, 8, 8, 4),
]
_SM80 = [  # A100 (164 KB smem) and Ada/GA10x (100 KB): the prune drops what does not fit
    (128, 256, 64, 8, 8, 3),
    (256, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 4, 4),
    (128, 128, 128, 8, 4, 3),
    (64, 128, 128, 8, 4, 4),
    (128, 64, 64, 8, 4, 4),
]
# per-group mode: BLOCK_K is the group size, fixed by the data
# (int32 group partial + fp32 running sum must both fit in registers: <= 64 values/thread)
_SM90_GROUPED = [(128, 128, 8, 8, 4), (128, 128, 8, 8, 6), (64, 256, 8, 8, 4), (64, 128, 8, 4, 6)]
_SM80_GROUPED = [(128, 128, 8, 8, 4), (64, 128, 8, 4, 4), (64, 256, 8, 8, 3)]

_INTERP = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}


def gemm_configs(arch: str, grouped: bool) -> list[dict]:
    """Candidate launch configs (dicts with block sizes, num_warps, num_stages) for an arch."""
    out = []
    if grouped:
        for bm, bn, gm, w, s in (_SM90_GROUPED if arch == "sm90" else _SM80_GROUPED):
            out.append({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": gm, "num_warps": w, "num_stages": s})
    else:
        for bm, bn, bk, gm, w, s in (_SM90 if arch == "sm90" else _SM80):
            out.append({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm, "num_warps": w, "num_stages": s})
    return out


def _arch_of(t: torch.Tensor) -> str:
    if interpreting() and not t.is_cuda:
        return "interp"
    return "sm90" if capability(device_index(t))[0] >= 9 else "sm80"


def _smem_bytes(cfg: dict, block_k: int, elem: int = 1) -> int:
    return cfg["num_stages"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * block_k * elem


def _fits(cfg: dict, block_k: int, dev: int) -> bool:
    # leave room for the epilogue's layout conversions
    return _smem_bytes(cfg, block_k) + 16 * 1024 <= max_shared_memory(dev)


# ----------------------------------------------------------------------------- autotuning
# Small home-made tuner (instead of triton.autotune) because the TMA descriptors' block
# shapes depend on the config, the grouped mode fixes BLOCK_K from the data, and the
# implementation itself (pointer vs TMA) is a tuning choice. It times each candidate
# that fits the device's shared memory once per (M bucket, N, K, flags) with triton's
# do_bench, and caches the winner for the process. Call once outside CUDA-graph capture.



def _m_bucket(m: int) -> int:
    return min(next_pow2(max(m, 1)), 1 << 16)


def _launch(impl: str, cfg: dict, args: dict) -> None:
    a, b, c = args["a"], args["b"], args["c"]
    m, k = a.shape
    n = b.shape[0]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    bk = args["group"] if args["group"] else cfg["BLOCK_K"]
    common = (
        args["sa"], args["sw"], args["zw"], args["rs"], args["bias"], args["h"], args["lu"],
        args["gate"], args["res"],
    )
    flags = dict(
        GROUPED=bool(args["group"]), ASYM=args["asym"], FP8=args["fp8"], FP8_ACC_K=min(args["fp8_acc_k"], bk),
        HAS_BIAS=args["has_bias"], HAS_LORA=args["has_lora"], BLOCK_R=args["block_r"],
        ACT_GELU=args["gelu"], HAS_GATE=args["has_gate"], HAS_RES=args["has_res"],
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], INTERP=interpreting() and not a.is_cuda,
    )
    st = args["strides"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    if impl == "ptr":
        _qgemm_ptr_kernel[(tiles,)](
            a, b, c, *common, m, n, k, args["r"],
            a.stride(0), b.stride(0), c.stride(0), *st,
            EVEN_K=(k % bk == 0), **flags,
        )
        return
    from triton.tools.tensor_descriptor import TensorDescriptor

    a_desc = TensorDescriptor(a, list(a.shape), list(a.stride()), [bm, bk])
    b_desc = TensorDescriptor(b, list(b.shape), list(b.stride()), [bn, bk])
    tma_store = bool(cfg.get("TMA_STORE")) and _tma_store_ok(c)
    c_desc = TensorDescriptor(c, list(c.shape), list(c.stride()), [bm, bn // 2]) if tma_store else None
    progs = tiles if impl == "tma" else min(tiles, num_sms(device_index(a)))
    _qgemm_tma_kernel[(progs,)](
        a_desc, b_desc, c_desc, c, *common, m, n, k, args["r"], progs,
        c.stride(0), *st, FLATTEN=(impl == "persistent"), TMA_STORE=tma_store, **flags,
    )


def _tma_store_ok(c: torch.Tensor) -> bool:
    """The output can be a TMA store's destination: 16-byte aligned base and rows."""
    return c.data_ptr() % 16 == 0 and (c.stride(0) * c.element_size()) % 16 == 0 and c.stride(1) == 1


def _tma_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Hopper (or the interpreter), and every row 16-byte aligned (TMA descriptors' rule)."""
    return (
        (capability(device_index(a))[0] >= 9 if a.is_cuda else interpreting())
        and a.shape[1] % 16 == 0
        and a.stride(0) % 16 == 0
        and b.stride(0) % 16 == 0
        and a.data_ptr() % 16 == 0
        and b.data_ptr() % 16 == 0
    )


def _candidates(impls: tuple[str, ...], args: dict) -> list[tuple[str, dict]]:
    arch = _arch_of(args["a"])
    dev = device_index(args["a"])
    cfgs = gemm_configs(arch, bool(args["group"]))
    bk_of = (lambda c: args["group"]) if args["group"] else (lambda c: c["BLOCK_K"])
    cfgs = [c for c in cfgs if _fits(c, bk_of(c), dev)] or cfgs[-1:]
    out = [(impl, c) for impl in impls for c in cfgs]
    if arch == "sm90" and "persistent" in impls and args["c"].element_size() == 2:
        # the output through TMA stores: -1 to +3 % for the persistent kernel (GPU run 11), so a
        # candidate of its own there; the one-tile-per-program kernel gained nothing and is not offered
        # it, nor are fp32 outputs (their staging tile does not fit beside the deepest rings)
        out += [("persistent", dict(c, TMA_STORE=1)) for c in cfgs]
    return out


def _tune(impls: tuple[str, ...], args: dict, key: tuple) -> tuple[str, dict]:
    """The fastest (implementation, config) for this shape key, timed once (shared tuner)."""
    return tune_once(("qgemm",) + key, lambda: _candidates(impls, args), lambda c: _launch(c[0], c[1], args))


# Implementations the tuner tries on Hopper for impl="auto", per shape. The persistent TMA kernel
# joined in the eighth session: the fastest at M=16384, K=N=3072 in GPU runs 1 and 7 (1.56x cuBLAS
# bf16 against 1.45x for one tile per program in run 7; docs/PERF.md). The pointer kernel left the set
# in the ninth session: it won no tuned shape on the H100 (runs 7, 11, 12) and its candidates were a
# quarter of the first run's tuning pause (63.8 -> 50.2 s, GPU run 12); it stays the fallback where TMA
# cannot serve (unaligned rows, pre-Hopper GPUs).
SM90_AUTO_IMPLS: tuple[str, ...] = ("tma", "persistent")


def gemm_args(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    wzero: torch.Tensor | None = None,
    rowsum: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lowrank: torch.Tensor | None = None,
    lora_up: torch.Tensor | None = None,
    activation: str | None = None,
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    fp8_acc_k: int = 0,
) -> dict:
    """`qgemm`'s operands checked and gathered into the dict every implementation launches from
    (the output under "c", allocated unless ``out`` is given); one place for the checks, shared by
    the Triton kernels and the experimental Gluon kernel of GPU run 9 (not dispatched to)."""
    if qa.dim() != 2 or qw.dim() != 2 or qa.shape[1] != qw.shape[1]:
        raise ValueError(f"bad GEMM operands {tuple(qa.shape)} x {tuple(qw.shape)}^T")
    fp8 = qa.dtype == getattr(torch, "float8_e4m3fn", None)
    if fp8 and qw.dtype != qa.dtype:
        raise ValueError("fp8 GEMM needs both operands in float8_e4m3fn")
    if not fp8 and (qa.dtype != torch.int8 or qw.dtype != torch.int8):
        raise ValueError(f"qgemm needs int8 containers, got {qa.dtype} and {qw.dtype}")
    if qa.stride(1) != 1 or qw.stride(1) != 1:
        raise ValueError("qgemm operands must have unit stride along K")
    if activation not in (None, "gelu_tanh"):
        raise ValueError("activation must be None or 'gelu_tanh'")
    m, k = qa.shape
    n = qw.shape[0]
    dev = qa.device
    ga, gw = sa.shape[1], sw.shape[1]
    groups = max(ga, gw)
    if ga not in (1, groups) or gw not in (1, groups) or k % groups:
        raise ValueError(f"incompatible scale groups: activations {ga}, weights {gw}, K={k}")
    group = 0 if groups == 1 else k // groups
    if group and (group & (group - 1) or group < 16 or (fp8 and group < 32)):
        raise ValueError(f"group size {group} must be a power of two >= 16 (>= 32 for fp8)")
    asym = wzero is not None
    if asym:
        if fp8:
            raise ValueError("zero points are not supported with fp8 operands")
        if rowsum is None:
            raise ValueError("asymmetric weights need the activation row sums")
        if rowsum.shape != (m, groups) or rowsum.dtype != torch.int32:
            raise ValueError(f"rowsum must be int32 (M, {groups})")
        rowsum = rowsum if rowsum.stride(1) == 1 else rowsum.contiguous()
    r = 0 if lora_up is None or lowrank is None else int(lora_up.shape[0])
    has_lora = r > 0
    if has_lora and (lowrank.shape != (m, r) or lora_up.shape[1] != n or lowrank.dtype != lora_up.dtype):
        raise ValueError("lowrank must be (M, r) and lora_up (r, N) of one 16-bit dtype")
    for name, t in (("gate", gate), ("residual", residual)):
        if t is not None and (t.shape != (m, n) or t.stride(1) != 1):
            raise ValueError(f"{name} must be a (M, N) tensor with unit column stride")

    c = out if out is not None else torch.empty((m, n), dtype=out_dtype, device=dev)
    if c.shape != (m, n) or c.stride(1) != 1:
        raise ValueError("out must be (M, N) with unit column stride")
    if k == 0 and m and n:
        raise ValueError("K must be positive")

    sa = sa.float() if sa.dtype != torch.float32 else sa
    bias_t = bias.to(device=dev, dtype=torch.float32).contiguous() if bias is not None else sa
    dummy = sa
    zw = wzero if asym else dummy
    rs = rowsum if asym else dummy
    h = lowrank if has_lora else dummy
    lu = lora_up if has_lora else dummy
    if has_lora and lu.stride(1) != 1:
        lu = lu.contiguous()
    if has_lora and h.stride(1) != 1:
        h = h.contiguous()
    args = {
        "a": qa, "b": qw, "c": c, "sa": sa, "sw": sw, "zw": zw, "rs": rs, "bias": bias_t,
        "h": h, "lu": lu, "gate": gate if gate is not None else dummy,
        "res": residual if residual is not None else dummy,
        "group": group, "asym": asym, "fp8": fp8, "fp8_acc_k": int(fp8_acc_k), "has_bias": bias is not None,
        "has_lora": has_lora, "block_r": max(16, next_pow2(r)), "r": r, "gelu": activation == "gelu_tanh",
        # 0: no gate, 1: an (M, N) gate, 2: one (N,) gate for every row (an (M, N) view of stride 0)
        "has_gate": 0 if gate is None else 2 if gate.stride(0) == 0 else 1, "has_res": residual is not None,
        "strides": (
            sa.stride(0), sa.stride(1) if ga > 1 else 0, sw.stride(0), sw.stride(1) if gw > 1 else 0,
            zw.stride(0) if asym else 0, (zw.stride(1) if zw.shape[1] > 1 else 0) if asym else 0,
            rs.stride(0) if asym else 0, h.stride(0) if has_lora else 0, lu.stride(0) if has_lora else 0,
            gate.stride(0) if gate is not None else 0, residual.stride(0) if residual is not None else 0,
        ),
    }
    return args


def qgemm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    wzero: torch.Tensor | None = None,
    rowsum: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    lowrank: torch.Tensor | None = None,
    lora_up: torch.Tensor | None = None,
    activation: str | None = None,
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    impl: str = "auto",
    config: dict | None = None,
    fp8_acc_k: int = 0,
) -> torch.Tensor:
    """y = epilogue(sum_g sa sw (qa . qw - z rowsum)); the Triton twin of ``qgemm_ref``.

    qa (M, K) and qw (N, K) are int8 containers (or both float8_e4m3fn for the fp8
    variant); sa (M, 1|G) fp32, sw (N, 1|G) fp16/fp32, wzero (N, 1|G) integer zero
    points with ``rowsum`` (M, G) int32 from the activation kernel. ``config`` pins a
    launch config (else a cached one-time tuning picks one); ``out`` receives y.
    """
    if impl not in GEMM_IMPLS:
        raise ValueError(f"impl must be one of {GEMM_IMPLS}")
    args = gemm_args(qa, sa, qw, sw, wzero=wzero, rowsum=rowsum, bias=bias, lowrank=lowrank, lora_up=lora_up,
                     activation=activation, gate=gate, residual=residual, out_dtype=out_dtype, out=out,
                     fp8_acc_k=fp8_acc_k)
    c = args["c"]
    m, k = qa.shape
    n = qw.shape[0]
    if m == 0 or n == 0:
        return c
    group, asym, fp8, has_lora = args["group"], args["asym"], args["fp8"], args["has_lora"]
    if impl in ("tma", "persistent") and not _tma_ok(qa, qw):
        impl = "ptr"  # TMA needs Hopper and 16-byte aligned rows
    if config is None and _arch_of(qa) == "interp":
        impl, config = ("ptr" if impl == "auto" else impl), dict(_INTERP)
    elif config is None:
        impls = (SM90_AUTO_IMPLS if _tma_ok(qa, qw) else ("ptr",)) if impl == "auto" else (impl,)
        key = (impls, _m_bucket(m), n, k, group, asym, fp8, fp8_acc_k, has_lora, activation, args["has_gate"],
               residual is not None, c.dtype, str(qa.device))
        impl, config = _tune(impls, args, key)
    elif impl == "auto":
        impl = "tma" if _tma_ok(qa, qw) else "ptr"
    _launch(impl, config, args)
    return c
