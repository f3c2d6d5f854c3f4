"""The Triton kernels behind `vsrq.kernels.group_norm` (reference: `frame_group_stats`, `group_norm_act_ref`).

Two layouts. Channel-first (B, C, T, H, W) contiguous: one elementwise kernel, statistics from torch.
Channels-last (`torch.channels_last_3d`, memory B, T, H, W, C): a statistics kernel that reads each
frame once (sums of x - shift and its square per group, shift = the group mean of the frame's first
pixel so that E[d^2] - E[d]^2 does not cancel), and an apply kernel that writes wherever it is told
(e.g. after the cached frames at the head of a causal conv's input buffer).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels.conv3d import FP8_MAX


@triton.jit
def _normalise(x, s, c, mask, mean_ptr, rstd_ptr, w_ptr, b_ptr, ACT: tl.constexpr):
    """(x - mean[s]) * rstd[s] * w[c] + b[c], SiLU if ACT, in fp32 (both layouts' apply kernels)."""
    mean = tl.load(mean_ptr + s, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + s, mask=mask, other=1.0)
    w = tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean) * rstd * w + b
    if ACT:
        y = y / (1.0 + tl.exp(-y))
    return y


@triton.jit
def _gn_act_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, numel, C, T, HW, CG,
                   ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = offs // HW  # int64 throughout: C*T*HW can pass 2**31 (4K frames)
    t = q % T
    q = q // T
    c = q % C
    bi = q // C
    G = C // CG
    s = (bi * G + c // CG) * T + t  # index into (B, G, T) statistics
    y = _normalise(x, s, c, mask, mean_ptr, rstd_ptr, w_ptr, b_ptr, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_act_triton(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, act: bool) -> torch.Tensor:
    b, c, t, h, w = x.shape
    g = mean.shape[1]
    y = torch.empty_like(x)
    numel = x.numel()
    block = 1024
    _gn_act_kernel[(triton.cdiv(numel, block),)](
        x, y, mean.contiguous(), rstd.contiguous(), weight.contiguous(), bias.contiguous(), numel, c, t, h * w, c // g,
        ACT=act, BLOCK=block)
    return y


# ----------------------------------------------------------------------------- channels-last


@triton.jit
def _gn_stats_cl_kernel(x_ptr, s1_ptr, s2_ptr, shift_ptr, x_sb, T, HW, CHUNK, NCHUNK,
                        C: tl.constexpr, G: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per (frame, chunk of CHUNK pixels): sums of d = x - shift and d*d per group, shift = the
    group mean of the frame's first pixel (the same in every chunk, so the sums simply add)."""
    bt = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bt // T
    t = bt % T
    CG: tl.constexpr = C // G
    base = x_ptr + b.to(tl.int64) * x_sb + t.to(tl.int64) * HW * C
    cols = tl.arange(0, C)
    first = tl.load(base + cols).to(tl.float32)
    shift = tl.sum(tl.reshape(first, (G, CG)), axis=1) / CG
    s1 = tl.zeros((G,), dtype=tl.float32)
    s2 = tl.zeros((G,), dtype=tl.float32)
    p_start = chunk * CHUNK
    for p0 in range(p_start, p_start + CHUNK, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        ok = rows < HW
        v = tl.load(base + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=ok[:, None], other=0.0)
        d = tl.reshape(v.to(tl.float32), (BLOCK_P, G, CG)) - tl.reshape(shift, (1, G, 1))
        d = tl.where(tl.reshape(ok, (BLOCK_P, 1, 1)), d, 0.0)
        s1 += tl.sum(tl.sum(d, axis=2), axis=0)
        s2 += tl.sum(tl.sum(d * d, axis=2), axis=0)
    gs = tl.arange(0, G)
    out = (bt * NCHUNK + chunk) * G
    tl.store(s1_ptr + out + gs, s1)
    tl.store(s2_ptr + out + gs, s2)
    if chunk == 0:
        tl.store(shift_ptr + bt * G + gs, shift)


@triton.jit
def _gn_act_cl_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, per_b, x_sb, y_sb, T, HWC,
                      C: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, CLAMP: tl.constexpr,
                      BLOCK: tl.constexpr):
    """y = SiLU((x - mean) * rstd * w + b) over one video's (T, H, W, C) elements; y may be a view
    with its own batch stride (the body of a larger buffer). CLAMP > 0 saturates at +-CLAMP (e4m3)."""
    b = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < per_b
    x = tl.load(x_ptr + b.to(tl.int64) * x_sb + offs, mask=mask, other=0.0).to(tl.float32)
    c = offs % C
    t = offs // HWC
    s = (b * G + c // (C // G)) * T + t  # index into (B, G, T) statistics
    y = _normalise(x, s, c, mask, mean_ptr, rstd_ptr, w_ptr, b_ptr, ACT)
    if CLAMP > 0:  # e4m3 output: round to its grid here (3 mantissa bits, subnormal below 2**-6, ties to
        # even), then the cast is exact: torch's round-to-nearest-even numbers, on the GPU and under the
        # interpreter too, whose own cast (triton 3.9) drops the carry at a power of two (1.99 -> 1).
        step = tl.exp2(tl.floor(tl.log2(tl.maximum(tl.abs(y), 0.015625))) - 3.0)
        v = y / step  # exact: step is a power of two
        r = tl.floor(v + 0.5)
        r = tl.where((r - v == 0.5) & (r - 2.0 * tl.floor(r * 0.5) != 0.0), r - 1.0, r)  # a tie to the odd one: go even
        y = r * step
        y = tl.minimum(tl.maximum(y, -CLAMP), CLAMP)
    tl.store(y_ptr + b.to(tl.int64) * y_sb + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def frame_group_stats_cl_triton(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) fp32 (B, G, T) of a channels-last x, one read of x (see the module docstring)."""
    b, c, t, h, w = x.shape
    hw = h * w
    block_p = max(1, min(64, 8192 // c))
    chunk = max(block_p, min(4096, triton.next_power_of_2(hw)))
    nchunk = triton.cdiv(hw, chunk)
    s1 = torch.empty(b * t, nchunk, groups, device=x.device, dtype=torch.float32)
    s2 = torch.empty_like(s1)
    shift = torch.empty(b * t, groups, device=x.device, dtype=torch.float32)
    _gn_stats_cl_kernel[(b * t, nchunk)](x, s1, s2, shift, x.stride(0), t, hw, chunk, nchunk,
                                         C=c, G=groups, BLOCK_P=block_p)
    n = float(hw * (c // groups))
    d_mean = s1.sum(1) / n
    var = (s2.sum(1) / n - d_mean * d_mean).clamp_min(0.0)
    mean = (shift + d_mean).view(b, t, groups).transpose(1, 2).contiguous()
    rstd = torch.rsqrt(var + eps).view(b, t, groups).transpose(1, 2).contiguous()
    return mean, rstd


def group_norm_act_cl_triton(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor, act: bool, out: torch.Tensor) -> torch.Tensor:
    """Normalise channels-last x into `out` (channels-last, any batch stride, any float dtype;
    float8_e4m3fn saturates at +-448)."""
    b, c, t, h, w = x.shape
    per_b = t * h * w * c
    block = 2048
    clamp = FP8_MAX if out.dtype == torch.float8_e4m3fn else 0.0
    _gn_act_cl_kernel[(triton.cdiv(per_b, block), b)](
        x, out, mean, rstd, weight.contiguous(), bias.contiguous(), per_b, x.stride(0), out.stride(0), t, h * w * c,
        C=c, G=mean.shape[1], ACT=act, CLAMP=clamp, BLOCK=block)
    return out
