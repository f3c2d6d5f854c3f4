"""The Triton implicit-GEMM kernel behind :func:`vsrq.kernels.conv3d.causal_conv3d`.

GEMM view: M = output pixels (b, t, h, w) flattened (the rows of the channels-last output),
N = Cout, K = (kt, kh, kw, Cin) with Cin fastest (the packed weight's order). One program owns
a BLOCK_M x BLOCK_N output tile; a single flat loop runs over the taps x Cin/BLOCK_K blocks (one
loop, not tap-then-channel, so the compiler's software pipeline sees all K steps). Each A tile is
a pointer load of BLOCK_K adjacent channels of BLOCK_M input pixels: the row's tap position is
computed from per-row bases set up once, rows outside the frame (the spatial zero padding, any
bottom/right pad) are masked to zero, and frames before x come from the head tensor (or, for
``replicate_first``, from x's frame 0 through a time stride of 0) by a per-row pointer select,
so neither the concatenation nor the padding exists in memory. Weight tiles are pointer loads or,
on Hopper, TMA descriptor loads (``B_TMA``, a tuner candidate: chosen for 14 of the 16 tuning keys in
GPU run 2). Offsets are int64 (a 4K chunk of 6 frames x 128 channels is over 2**31 elements; checked
on the H100). Launch configs: the shared one-time tuner. Measured: docs/perf_logs/conv3d-*-h100.log.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels._jit import cast16, dot16
from vsrq.kernels._triton import capability, device_index, interpreting, max_shared_memory, next_pow2, tune_once

__all__ = ["conv3d_triton", "conv_configs"]


@triton.jit
def _conv3d_kernel(
    x_ptr, h_ptr, w_ptr, w_desc, out_ptr, ws_ptr, xs_ptr, bias_ptr, res_ptr,
    M, N, CIN, T_OUT, H_OUT, W_OUT, H, W, N_HEAD,
    sxb, sxt, sxh, sxw, shb, sht, shh, shw,
    ST, SH, SW, PH, PW,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_HEAD: tl.constexpr,
    FP8: tl.constexpr, FP8_ACC_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, B_TMA: tl.constexpr,
    INTERP: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n  # N fastest: the programs of one row block run together and share its A tiles in L2
    pid_n = pid % num_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    rm_l = tl.where(m_ok, rm, 0)
    rn_l = tl.where(rn < N, rn, 0)
    # output pixel -> (b, t, h, w), once per tile
    wo = rm_l % W_OUT
    r = rm_l // W_OUT
    ho = r % H_OUT
    r = r // H_OUT
    to = r % T_OUT
    bi = (r // T_OUT).to(tl.int64)
    t0 = to * ST  # tap 0's frame in the head-prefixed clip
    h0 = ho * SH - PH
    w0 = wo * SW - PW
    hw_base = h0.to(tl.int64) * sxh + w0.to(tl.int64) * sxw
    row_x = bi * sxb + (t0 - N_HEAD).to(tl.int64) * sxt + hw_base
    if HAS_HEAD:
        row_h = bi * shb + t0.to(tl.int64) * sht + h0.to(tl.int64) * shh + w0.to(tl.int64) * shw
    rk = tl.arange(0, BLOCK_K)
    k_total = KT * KH * KW * CIN
    w_ptrs = w_ptr + rn_l[None, :].to(tl.int64) * k_total + rk[:, None]
    cb = CIN // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, KT * KH * KW * cb):
        tap = kk // cb
        c0 = (kk - tap * cb) * BLOCK_K
        dt = tap // (KH * KW)
        dhw = tap % (KH * KW)
        dh = dhw // KW
        dw = dhw % KW
        hi = h0 + dh
        wi = w0 + dw
        ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        dx = dt.to(tl.int64) * sxt + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw + c0
        a_ptrs = x_ptr + (row_x + dx)[:, None] + rk[None, :]
        if HAS_HEAD:
            dhd = dt.to(tl.int64) * sht + dh.to(tl.int64) * shh + dw.to(tl.int64) * shw + c0
            in_head = (t0 + dt) < N_HEAD
            a_ptrs = tl.where(in_head[:, None], h_ptr + (row_h + dhd)[:, None] + rk[None, :], a_ptrs)
        a = tl.load(a_ptrs, mask=ok[:, None], other=0.0)
        # K offset of (tap, c0) = tap * CIN + c0 = kk * BLOCK_K
        if B_TMA:  # Hopper: the weight tile by the copy engine (ragged Cout zero-filled)
            b = w_desc.load([pid_n * BLOCK_N, kk * BLOCK_K]).T
        else:
            b = tl.load(w_ptrs + kk * BLOCK_K)
        if FP8:
            if INTERP:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
            elif FP8_ACC_K > 0:
                acc = tl.dot(a, b, acc, out_dtype=tl.float32, max_num_imprecise_acc=FP8_ACC_K)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        else:
            acc = dot16(a, b, acc, INTERP)
    # epilogue: acc * x_scale * w_scale[n] + bias[n] (+ residual), channels-last rows of N
    scale = tl.load(ws_ptr + rn_l) * tl.load(xs_ptr)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn_l)[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    mask = m_ok[:, None] & (rn < N)[None, :]
    if HAS_RES:
        y = y + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, cast16(y, out_ptr.dtype.element_ty, INTERP), mask=mask)


# ----------------------------------------------------------------------------- configs

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_K = 64 bf16 / 128 e4m3 = 128-byte rows.
# GPU run 1 (H100): 256x128 won every Cout=128 conv, 128x256 the Cout=512 one, 64/128x128 the
# small downsampler; run 2 added the 4-stage rings of those two (chosen for 6 of 16 tuning keys).
_BF16 = [(128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
         (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (256, 128, 64, 8, 4), (128, 256, 64, 8, 4)]
_FP8 = [(128, 128, 128, 4, 4), (128, 128, 128, 8, 4), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
        (128, 128, 64, 4, 5), (128, 256, 64, 8, 4), (256, 128, 128, 8, 4), (128, 256, 128, 8, 4)]
# the CPU interpreter's cost is per program and per K step, not per element: wide tiles
_INTERP = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}


def conv_configs(fmt: str, cin: int, cout: int, dev: int, b_tma: bool = False) -> list[dict]:
    """Candidates for this conv: BLOCK_K divides Cin (a K block never straddles two taps), BLOCK_N
    no wider than Cout needs, and the ring fits the device's shared memory. ``b_tma`` (Hopper) adds
    each one again with the weight tiles through TMA (``B_TMA``), so the tuner picks the load form."""
    elem = 1 if fmt == "fp8" else 2
    out = []
    for bm, bn, bk, w, s in (_FP8 if fmt == "fp8" else _BF16):
        if cin % bk or bn > max(16, next_pow2(cout)):
            continue
        if s * (bm + bn) * bk * elem + 16 * 1024 > max_shared_memory(dev):
            continue
        out.append({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s})
    if not out:  # small Cin (16, 32, 48): the widest K block that divides it
        bk = max(b for b in (16, 32, 64) if cin % b == 0)
        out.append({"BLOCK_M": 128, "BLOCK_N": min(128, max(16, next_pow2(cout))), "BLOCK_K": bk,
                    "num_warps": 4, "num_stages": 3})
    if b_tma:
        out += [dict(c, B_TMA=1) for c in out]
    return out


def _launch(cfg: dict, a: dict) -> None:
    x, head, pc = a["x"], a["head"], a["pc"]
    kt, kh, kw = pc.kernel
    st, sh, sw = pc.stride
    ph, pw = pc.padding
    t_out, h_out, w_out = a["out_thw"]
    m = x.shape[0] * t_out * h_out * w_out
    if a["replicate_first"]:
        hsrc, hs = x, (x.stride(0), 0, x.stride(3), x.stride(4))  # frame index clamped to 0
    elif head is not None:
        hsrc, hs = head, (head.stride(0), head.stride(2), head.stride(3), head.stride(4))
    else:
        hsrc, hs = x, (0, 0, 0, 0)
    has_head = a["n_head"] > 0
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(pc.cout, cfg["BLOCK_N"]),)
    b_tma = bool(cfg.get("B_TMA"))
    w_desc = None
    if b_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        w_desc = TensorDescriptor(pc.w, list(pc.w.shape), list(pc.w.stride()), [cfg["BLOCK_N"], cfg["BLOCK_K"]])
    _conv3d_kernel[grid](
        x, hsrc, pc.w, w_desc, a["out"], pc.scale, a["xs"], pc.bias if pc.bias is not None else pc.scale,
        a["res"] if a["res"] is not None else a["out"],
        m, pc.cout, pc.cin, t_out, h_out, w_out, x.shape[3], x.shape[4], a["n_head"],
        x.stride(0), x.stride(2), x.stride(3), x.stride(4), *hs,
        st, sh, sw, ph, pw,
        KT=kt, KH=kh, KW=kw, HAS_HEAD=has_head, FP8=pc.fmt == "fp8", FP8_ACC_K=min(a["fp8_acc_k"], cfg["BLOCK_K"]),
        HAS_BIAS=pc.bias is not None, HAS_RES=a["res"] is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], B_TMA=b_tma,
        INTERP=interpreting() and not x.is_cuda, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def conv3d_triton(x: torch.Tensor, pc, head: torch.Tensor | None, xs: torch.Tensor,
                  residual: torch.Tensor | None, n_head: int, replicate_first: bool,
                  out_thw: tuple[int, int, int], out_dtype: torch.dtype, config: dict | None,
                  fp8_acc_k: int = 0) -> torch.Tensor:
    """Launch on channel-fastest x/head (any other strides), a channels-last residual; returns
    the channels-last output. Geometry is checked by the caller (conv3d.causal_conv3d)."""
    t_out, h_out, w_out = out_thw
    out = torch.empty((x.shape[0], pc.cout, t_out, h_out, w_out), dtype=out_dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    if out.numel() == 0:
        return out
    if pc.w.device != x.device:
        raise ValueError(f"prepared conv on {pc.w.device}, x on {x.device}: move it once with PreparedConv.to")
    args = dict(x=x, head=head, pc=pc, out=out, xs=xs, res=residual, n_head=n_head,
                replicate_first=replicate_first, out_thw=out_thw, fp8_acc_k=fp8_acc_k)
    if config is None and interpreting() and not x.is_cuda:
        config = dict(_INTERP)
        config["BLOCK_K"] = 32 if pc.cin % 32 == 0 else 16
    elif config is None:
        dev = device_index(x)
        m = x.shape[0] * t_out * h_out * w_out
        key = ("conv3d", pc.fmt, pc.kernel, pc.stride, pc.cin, pc.cout, min(next_pow2(m), 1 << 22), n_head > 0,
               residual is not None, pc.bias is not None, out_dtype, fp8_acc_k, capability(dev), str(x.device))
        b_tma = capability(dev)[0] >= 9 and pc.w.data_ptr() % 16 == 0
        config = tune_once(key, lambda: conv_configs(pc.fmt, pc.cin, pc.cout, dev, b_tma), lambda c: _launch(c, args))
    _launch(config, args)
    return out

