"""Low-bit integer quantization and int4 packing: the pure-torch numerics contract.

Every kernel in :mod:`vsrq.kernels` reproduces these functions bit for bit (up to
float summation order where a matrix product is involved), so they are the single
place where rounding, clamping and scale conventions are defined:

* ``round(v) = floor(v + 0.5)`` (round half up; identical in torch and Triton).
* signed ``b``-bit values lie in ``[-2^(b-1), 2^(b-1) - 1]``; symmetric scale is
  ``absmax / (2^(b-1) - 1)``; a zero absmax gives scale 1 so every ``q`` is 0.
* activations are divided by their scale as ``x * (1 / scale)``: one IEEE division per
  row/group, then IEEE multiplies, which a kernel reproduces bit for bit (with fp
  contraction off) at a fraction of the cost of a per-element division.
* activation clipping (DRAQ, LSGQuant's Dynamic Range Adaptive Quantizer): a per-layer
  ratio ``gamma`` in (0, 1] gives ``scale = (absmax * gamma) / qmax`` (gamma rounded to
  fp32 first; one fp32 multiply, then the IEEE division), and q is clamped to
  ``[-qmax - 1, qmax]`` as always, so the largest values saturate and the rest get finer
  steps. ``gamma = 1`` is exactly the unclipped quantizer (``absmax * 1.0 == absmax``).
* asymmetric (weights only) uses unsigned values ``[0, 2^b - 1]`` with an integer
  zero point per (row, group): ``w ~ (q - z) * scale``.
* packed int4: byte ``j`` of a row holds element ``2j`` in the low nibble and
  ``2j + 1`` in the high nibble (two's complement for signed values).
* packed bits (the signs of the binary residual branch): bit ``b`` (least significant
  first) of byte ``j`` holds element ``8j + b`` of the flattened tensor; the last byte is
  padded with zeros.
"""

from __future__ import annotations

import struct

import torch

__all__ = [
    "int_range",
    "round_half_up",
    "pack_int4",
    "unpack_int4",
    "pack_bits",
    "unpack_bits",
    "quantize_weight",
    "dequantize_weight",
    "quantize_activation",
    "dequantize_activation",
    "fake_quant_weight",
    "fake_quant_activation",
    "check_clip_ratio",
    "fit_act_clip",
    "DEFAULT_CLIP_RATIOS",
]

DEFAULT_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit integer; signed uses two's complement."""
    _check_bits(bits)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 0.5): the project's rounding, chosen because Triton reproduces it exactly."""
    return torch.floor(x + 0.5)


def _group_view(t: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int]:
    """View the last dim as (groups, group_size); None means one group of the whole dim."""
    k = t.shape[-1]
    g = k if group_size is None else int(group_size)
    if g <= 0 or k % g != 0:
        raise ValueError(f"group_size {group_size} must divide the last dimension {k}")
    return t.reshape(*t.shape[:-1], k // g, g), g


def _safe_scale(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """Round the scale to its storage dtype and replace zeros by 1 (so q = 0, no division by 0)."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(scale_dtype)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


# ----------------------------------------------------------------------------- packing


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values (int8/uint8/int16/int32 tensor, last dim even) into uint8, two per byte.

    Signed values in [-8, 7] are stored in two's complement, unsigned ones in [0, 15]
    as is; the caller remembers which (``unpack_int4(..., signed=)``).
    """
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"pack_int4 needs an integer tensor, got {q.dtype}")
    if q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4 needs an even last dimension, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 15):
        raise ValueError("pack_int4 values must lie in [-8, 7] (signed) or [0, 15] (unsigned)")
    u = q.to(torch.int16) & 0xF
    return (u[..., 0::2] | (u[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (..., K/2) -> int8 (..., K).

    Signed nibbles are sign-extended with an arithmetic shift of the byte seen as int8
    (high nibble: ``b >> 4``; low nibble: ``(b << 4) >> 4``), written straight into the
    interleaved output: no int16 temporaries (this runs on every CPU forward).
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 needs a uint8 tensor, got {packed.dtype}")
    out = torch.empty(*packed.shape[:-1], 2 * packed.shape[-1], dtype=torch.int8, device=packed.device)
    if signed:
        out[..., 0::2] = (packed << 4).view(torch.int8) >> 4
        out[..., 1::2] = packed.view(torch.int8) >> 4
    else:
        out[..., 0::2] = packed & 0xF
        out[..., 1::2] = packed >> 4
    return out


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape, flattened row-major) into uint8, eight values per byte,
    least significant bit first; the last byte is zero-padded. 1 bit per stored value."""
    if bits.dtype != torch.bool:
        raise TypeError(f"pack_bits needs a bool tensor, got {bits.dtype}")
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat.reshape(-1, 8) * weights).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values as a flat bool tensor."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"unpack_bits needs a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if not 0 <= count <= 8 * packed.numel():
        raise ValueError(f"{count} bits do not fit in {packed.numel()} bytes")
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).reshape(-1)[:count].bool()


# ----------------------------------------------------------------------------- weights


def quantize_weight(
    w: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = True,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest quantization of a (N out, K in) weight per output channel or per K-group.

    Returns ``(q, scale, zero)``: q (N, K) int8 (uint8 for 8-bit asymmetric), scale
    (N, K/g) in ``scale_dtype`` (q is computed against the *stored* scale so that
    dequantization is consistent), zero (N, K/g) or None when symmetric.
    """
    _check_bits(bits)
    if w.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D (out, in) weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    wg, _ = _group_view(w.float(), group_size)
    if symmetric:
        qmin, qmax = int_range(bits, signed=True)
        scale = _safe_scale(div_by_int(wg.abs().amax(dim=-1), qmax), scale_dtype)
        q = torch.clamp(round_half_up(wg / scale.float()[..., None]), qmin, qmax)
        return q.reshape(n, k).to(torch.int8), scale, None
    qmin, qmax = int_range(bits, signed=False)
    lo = torch.clamp(wg.amin(dim=-1), max=0.0)
    hi = torch.clamp(wg.amax(dim=-1), min=0.0)
    scale = _safe_scale(div_by_int(hi - lo, qmax), scale_dtype)
    sf = scale.float()
    zero = torch.clamp(round_half_up(-lo / sf), qmin, qmax)
    q = torch.clamp(round_half_up(wg / sf[..., None]) + zero[..., None], qmin, qmax)
    idt = torch.uint8 if bits == 8 else torch.int8
    return q.reshape(n, k).to(idt), scale, zero.to(idt)


def dequantize_weight(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """float32 (N, K) weight from (q, scale, zero) as produced by :func:`quantize_weight`."""
    n, k = q.shape
    qg, _ = _group_view(q.float(), group_size)
    if zero is not None:
        qg = qg - zero.float()[..., None]
    return (qg * scale.float()[..., None]).reshape(n, k)


def fake_quant_weight(
    w: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = True,
    scale_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Quantize-dequantize a weight (float in, float out, same dtype as ``w``)."""
    q, s, z = quantize_weight(w, bits, group_size, symmetric, scale_dtype)
    return dequantize_weight(q, s, z, group_size).to(w.dtype)


# ----------------------------------------------------------------------------- activations


def check_clip_ratio(clip_ratio: float | torch.Tensor) -> float:
    """Validate an activation clip ratio (float or one-element tensor) and return it as the
    Python float of its fp32 value: the value every path (torch, Triton) multiplies by."""
    if isinstance(clip_ratio, torch.Tensor):
        if clip_ratio.numel() != 1:
            raise ValueError(f"clip_ratio must be a scalar, got shape {tuple(clip_ratio.shape)}")
        clip_ratio = clip_ratio.item()
    try:
        g = float(clip_ratio)
    except (TypeError, ValueError):
        raise TypeError(f"clip_ratio must be a float, got {clip_ratio!r}") from None
    try:  # the fp32 value without making a tensor (this runs on every quantized layer call)
        g32 = struct.unpack("f", struct.pack("f", g))[0]
    except OverflowError:  # beyond fp32's range: out of (0, 1] anyway
        g32 = g
    if not 0.0 < g32 <= 1.0:  # also rejects nan
        raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio!r}")
    return g32


def div_by_int(x: torch.Tensor, d: int) -> torch.Tensor:
    """x / d, correctly rounded on every device.

    PyTorch's CUDA division by a Python scalar multiplies by the rounded reciprocal instead,
    which differs from a true division by one ulp for some inputs. Activation scales must be
    identical to the Triton kernels' (IEEE `div_rn`): on the H100 (2026-11-23) the one-ulp
    differences moved ~0.1% of 4-bit activations of bf16 inputs, which often sit on rounding
    ties. Dividing by a tensor on x's device keeps the true division everywhere.
    """
    return x / x.new_tensor(float(d))


def quantize_act_groups(
    xg: torch.Tensor, bits: int, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core of the activation quantizer on a float32 (..., G, g) view: the last dim shares a scale.

    Returns ``(q, scale)`` with q as float32 integers (so matmul paths can use it directly)
    and scale (..., G) float32. ``clip_ratio`` must already be checked (``check_clip_ratio``).
    """
    qmin, qmax = int_range(bits, signed=True)
    if xg.requires_grad:  # (QAT) the gradient of |x|'s max; the same value as below
        amax = xg.abs().amax(dim=-1)
    else:  # max(max x, -min x) == max |x| exactly, without allocating the |x| tensor
        amax = torch.maximum(xg.amax(dim=-1), xg.amin(dim=-1).neg_())
    if clip_ratio != 1.0:  # amax * 1.0 == amax: skipping the multiply changes nothing
        amax = amax * clip_ratio
    scale = div_by_int(amax, qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = xg * (1.0 / scale)[..., None]
    if not q.requires_grad:  # the in-place chain is the same IEEE ops, without temporaries
        q = q.add_(0.5).floor_().clamp_(qmin, qmax)
    else:
        q = torch.clamp(round_half_up(q), qmin, qmax)
    return q, scale


def quantize_activation(
    x: torch.Tensor, bits: int = 4, group_size: int | None = None, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric quantization per token (last dim) or per group along it.

    Returns q int8 (..., K) and scale float32 (..., K/g). scale = (absmax * clip_ratio) /
    qmax, q = clamp(round(x * (1/scale)), -qmax-1, qmax) with IEEE operations only, so
    kernels reproduce q exactly. ``clip_ratio`` in (0, 1] (DRAQ); 1 is the plain absmax.
    """
    _check_bits(bits)
    g = check_clip_ratio(clip_ratio)
    xg, _ = _group_view(x.float(), group_size)
    q, scale = quantize_act_groups(xg, bits, g)
    return q.reshape(x.shape).to(torch.int8), scale


def dequantize_activation(q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """float32 activation from (q, scale)."""
    qg, _ = _group_view(q.float(), group_size)
    return (qg * scale.float()[..., None]).reshape(q.shape)


def fake_quant_activation(
    x: torch.Tensor, bits: int = 4, group_size: int | None = None, clip_ratio: float = 1.0
) -> torch.Tensor:
    """Quantize-dequantize an activation (float in, float out, same dtype as ``x``)."""
    q, s = quantize_activation(x, bits, group_size, clip_ratio)
    return dequantize_activation(q, s, group_size).to(x.dtype)


@torch.no_grad()
def fit_act_clip(
    x: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS,
) -> float:
    """DRAQ's per-layer clip ratio: the ratio whose fake-quantized x has the least MSE against x.

    ``x`` (M, K) (any leading dims) holds calibration activations as the quantizer sees them
    (after smoothing / rotation). Exactly the numerics of :func:`fake_quant_activation`;
    the per-row absmax is computed once for all ratios. Ties go to the earlier ratio in
    ``ratios`` (with the default order: the larger one). Returns the ratio as given
    (validated as a clip ratio).
    """
    _check_bits(bits)
    if len(ratios) == 0:
        raise ValueError("ratios must not be empty")
    for r in ratios:
        check_clip_ratio(r)
    xg, _ = _group_view(x.detach().float(), group_size)
    if xg.numel() == 0:
        return float(ratios[0])
    best, best_err = float(ratios[0]), None
    for r in ratios:
        q, scale = quantize_act_groups(xg, bits, check_clip_ratio(r))
        err = float(q.mul_(scale[..., None]).sub_(xg).square_().sum(dtype=torch.float64))
        if best_err is None or err < best_err:
            best, best_err = float(r), err
    return best
