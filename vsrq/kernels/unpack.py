"""Re-materialise packed int4 weights as int8 containers for the int8 MMA.

Why a separate pass: unpacking nibbles inside the GEMM main loop measured 2-3x slower
than a plain int8 main loop on Hopper. This one-pass kernel (read K/2 bytes, write K
bytes per row) costs a few percent of a DiT-sized GEMM, so the checkpoint and the
resident weights can stay packed; :class:`vsrq.quant.qlinear.QuantLinear` can also
cache its output instead (2x the packed weight memory). Numerics: ``unpack_int4_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vsrq.kernels._triton import interpreting

__all__ = ["unpack_int4_to_int8"]


@triton.jit
def _unpack_int4_kernel(p_ptr, o_ptr, N, KH, K, stride_pn, stride_on,
                        SIGNED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.program_id(1) * BLOCK_KH + tl.arange(0, BLOCK_KH)
    byte = tl.load(p_ptr + rn[:, None] * stride_pn + rj[None, :],
                   mask=(rn < N)[:, None] & (rj < KH)[None, :], other=0).to(tl.int32)
    lo = byte & 15
    hi = (byte >> 4) & 15
    if SIGNED:
        lo = (lo ^ 8) - 8
        hi = (hi ^ 8) - 8
    # interleave so that element 2j is the low nibble and 2j+1 the high nibble of byte j
    v = tl.reshape(tl.join(lo, hi), (BLOCK_N, 2 * BLOCK_KH))
    rk = tl.program_id(1) * (2 * BLOCK_KH) + tl.arange(0, 2 * BLOCK_KH)
    tl.store(o_ptr + rn[:, None] * stride_on + rk[None, :], v.to(tl.int8),
             mask=(rn < N)[:, None] & (rk < K)[None, :])


def unpack_int4_to_int8(
    packed: torch.Tensor, k: int, signed: bool = True, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, ceil(K/2)) uint8 -> (N, K) int8, on the GPU in one pass (or the interpreter)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError("packed must be a 2-D uint8 tensor")
    n, kh = packed.shape
    if not (2 * kh - 1 <= k <= 2 * kh):
        raise ValueError(f"K={k} does not match {kh} packed bytes per row")
    if packed.stride(1) != 1:
        packed = packed.contiguous()
    o = out if out is not None else torch.empty((n, k), dtype=torch.int8, device=packed.device)
    if o.shape != (n, k) or o.dtype != torch.int8 or o.stride(1) != 1:
        raise ValueError("out must be an int8 (N, K) tensor with unit column stride")
    if n == 0 or k == 0:
        return o
    bn, bkh = (16, 32) if interpreting() else (32, 128)
    grid = (triton.cdiv(n, bn), triton.cdiv(kh, bkh))
    _unpack_int4_kernel[grid](packed, o, n, kh, k, packed.stride(0), o.stride(0),
                              SIGNED=signed, BLOCK_N=bn, BLOCK_KH=bkh, num_warps=4)
    return o
