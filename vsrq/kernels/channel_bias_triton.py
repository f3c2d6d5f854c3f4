"""The Triton kernel behind `vsrq.kernels.channel_bias.add_channel_bias_` (reference: `add_channel_bias_ref`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _bias_kernel(y_ptr, b_ptr, r_ptr, numel, C, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(b_ptr + offs % C, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        acc += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def add_channel_bias_triton(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    numel = y.numel()
    block = 4096
    _bias_kernel[(triton.cdiv(numel, block),)](
        y, bias, residual if residual is not None else y, numel, y.shape[1], HAS_RES=residual is not None, BLOCK=block)
    return y
