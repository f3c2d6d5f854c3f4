"""The Triton kernel behind `vsrq.kernels.head_norm_rope` (reference: the model's rms_norm then apply_rope)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels._jit import cast16
from vsrq.kernels._triton import interpreting

ROWS = 16  # (token, head) rows per program: 16 x 128 channels on 4 warps (untuned)


@triton.jit
def _head_norm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, n_rows, heads, N, stride_tok, F, eps,
                           D: tl.constexpr, ROWS: tl.constexpr, INTERP: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    tok = rows // heads
    head = rows % heads
    ch = tl.arange(0, D)
    m2 = rmask[:, None]
    # whole rows, coalesced; the channel pairs (2j, 2j + 1) come apart in registers
    xt = tl.load(x_ptr + tok[:, None] * stride_tok + head[:, None] * D + ch[None, :], mask=m2, other=0.0)
    xf = xt.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / D + eps)
    w = tl.load(w_ptr + ch).to(tl.float32)
    # the norm's result in x's dtype, as the reference rounds it before rotating
    odt: tl.constexpr = out_ptr.dtype.element_ty
    y = cast16(xf * rstd[:, None] * w[None, :], odt, INTERP).to(tl.float32)
    y0, y1 = tl.split(tl.reshape(y, (ROWS, D // 2, 2)))
    j = tl.arange(0, D // 2)
    pos = tok % N
    cm = m2 & (j < F)[None, :]
    c = tl.load(cos_ptr + pos[:, None] * F + j[None, :], mask=cm, other=1.0)
    s = tl.load(sin_ptr + pos[:, None] * F + j[None, :], mask=cm, other=0.0)
    o = tl.reshape(tl.join(y0 * c - y1 * s, y1 * c + y0 * s), (ROWS, D))
    tl.store(out_ptr + rows[:, None] * D + ch[None, :], cast16(o, odt, INTERP), mask=m2)


def launch(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
           out: torch.Tensor) -> None:
    b, n, h, d = x.shape
    rows = b * n * h
    _head_norm_rope_kernel[(triton.cdiv(rows, ROWS),)](
        x, weight, cos, sin, out, rows, h, n, x.stride(1), cos.shape[1], eps, D=d, ROWS=ROWS,
        INTERP=interpreting(), num_warps=4, enable_fp_fusion=False)  # products rounded apart, as torch's ops
