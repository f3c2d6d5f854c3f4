"""Per-head RMSNorm (with weight) then RoPE of q or k, read from the qkv projection's strided view, in one pass.

Why: eagerly, SeedVR2's attention normalises each head of q and k (RMSNorm over the head dim, affine) and
rotates the first channels (RoPE in fp32): torch runs a contiguous copy of the strided q/k view, the norm
kernel, an fp32 copy, the complex rotation and a cast back — five passes, three of them in fp32: 2.0 ms for
q or k of a 1080p chunk on an H100, 0.23-0.31 ms through this kernel (docs/PERF.md, eleventh session), which
reads the view once (whole rows, coalesced) and writes the rotated 16-bit result once. torch.compile fuses the same ops by itself, so the
model uses this kernel eagerly only.

Numerics are the model's own, `rope(rms_norm(x, eps, weight), cos, sin)` of `vsrq.models.seedvr2.dit`
(the reference): the norm in fp32, rounded to x's dtype, then rotated in fp32 and rounded again; equal up
to the rounding of the products (fused multiply-adds).
"""

from __future__ import annotations

import torch

from vsrq.kernels._triton import can_run_triton

__all__ = ["head_norm_rope", "head_norm_rope_supported"]


def head_norm_rope_supported(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the kernel takes these operands: x (B, N, heads, d) 16-bit with unit channel stride, heads
    d apart and batches a whole N apart (the qkv projection's unbind view is such a view), d even and a
    power of two, cos (N, F) with 2F <= d, weight (d,) in x's dtype; and Triton can run on x."""
    if x.dim() != 4 or x.dtype not in (torch.bfloat16, torch.float16) or not can_run_triton(x):
        return False
    b, n, h, d = x.shape
    return (x.stride(3) == 1 and x.stride(2) == d and (b == 1 or x.stride(0) == n * x.stride(1))
            and d >= 16 and d & (d - 1) == 0 and weight.shape == (d,) and weight.dtype == x.dtype
            and cos.dim() == 2 and cos.shape[0] == n and 2 * cos.shape[1] <= d)


def head_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
                   sin: torch.Tensor) -> torch.Tensor:
    """RoPE(RMSNorm(x) * weight) of every head of x (B, N, heads, d) -> a new contiguous tensor of x's
    shape and dtype. Only for operands `head_norm_rope_supported` accepts (ValueError otherwise)."""
    if not head_norm_rope_supported(x, weight, cos):
        raise ValueError("head_norm_rope: operands the kernel does not take (see head_norm_rope_supported)")
    from vsrq.kernels.head_norm_rope_triton import launch

    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        launch(x, weight, float(eps), cos.float().contiguous(), sin.float().contiguous(), out)
    return out
