"""Triton device helpers shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def dot16(a, b, acc, INTERP: tl.constexpr):
    """acc + a @ b for 16-bit operands (fp32 accumulate).

    Under TRITON_INTERPRET the CPU interpreter (triton 3.9) multiplies bf16 operands as
    their raw uint16 bit patterns, so there both sides are widened to fp32 first: the
    products and fp32 sums are the same as the tensor-core path's.
    """
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def cast16(x, dtype: tl.constexpr, INTERP: tl.constexpr):
    """x.to(dtype) with round-to-nearest-even, also under the interpreter.

    The GPU rounds fp32 -> bf16 to nearest even; the 3.9 CPU interpreter truncates, so
    there the rounding is done on the bits first (then the cast is exact).
    """
    if INTERP:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = bits + (((bits >> 16) & 1) + 0x7FFF)
            bits = bits & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True).to(dtype)
    return x.to(dtype)


@triton.jit
def mul_rn(a, b, INTERP: tl.constexpr):
    """a * b rounded to fp32 on its own (PTX mul.rn), never contracted into an FMA.

    The kernels also launch with enable_fp_fusion=False; the explicit mul.rn keeps the
    multiply-then-add of the quantizer (x * (1/s) + 0.5) separately rounded, as in torch,
    whatever a compiler version does with that flag. The CPU interpreter never fuses, so
    there a plain multiply is the same operation.
    """
    if INTERP:
        return a * b
    return libdevice.mul_rn(a, b)


@triton.jit
def round_clamp(xf, inv_full, QMAX: tl.constexpr, INTERP: tl.constexpr):
    """q = clamp(floor(x * (1/s) + 0.5), -QMAX-1, QMAX); the multiply is an explicit mul.rn so
    the multiply and the add round separately, exactly as in torch (no FMA)."""
    q = tl.floor(mul_rn(xf, inv_full, INTERP) + 0.5)
    return tl.minimum(tl.maximum(q, -QMAX - 1.0), QMAX * 1.0)


@triton.jit
def safe_scale(amax, clip, QMAX: tl.constexpr):
    """(scale, 1/scale) with IEEE divisions (one per row or group): torch computes the same.
    scale = (amax * clip) / QMAX: the fp32 product rounds once (no fusion into the division),
    as in torch; clip = 1.0 leaves amax unchanged."""
    s = tl.math.div_rn(amax * clip, tl.full(amax.shape, QMAX, tl.float32))
    s = tl.where(s > 0, s, 1.0)
    return s, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
