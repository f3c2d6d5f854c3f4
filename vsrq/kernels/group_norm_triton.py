"""The Triton kernel behind `vsrq.kernels.group_norm.group_norm_act` (reference: `group_norm_act_ref`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
    mean = tl.load(mean_ptr + s, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + s, mask=mask, other=1.0)
    w = tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean) * rstd * w + b
    if ACT:
        y = y / (1.0 + tl.exp(-y))
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
