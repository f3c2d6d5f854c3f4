"""Pure-torch reference of every fused kernel (CPU and CUDA): the numerics contract.

The Triton kernels in this package compute exactly these functions; the only allowed
differences are float summation order inside matrix products (the Hadamard rotation,
the low-rank branch and the fp32 scaling epilogue). Integer GEMMs here are exact, so a
mismatch in a test is a kernel bug: they run as float32 matmuls when every partial sum
is provably an integer of magnitude <= 2^24 (bounded from the actual operands: group
width x max|q_a| x (max|q_w| + max|z|)), as fp32 K-chunks summed in float64 when only
chunks are, else in float64; all give the same bits (tested, see ``exact_gemm_plan``).
This file is also QuantLinear's CPU path, so it avoids temporaries where it can: the
epilogue runs in place, ``quant_linear_ref`` feeds the float32 q straight to the GEMM.

Shapes: activations are 2-D (M tokens, K features); weights (N, K) int8 containers
(int4 values unpacked); scales (rows, groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from vsrq.quant.pack import check_clip_ratio, int_range, quantize_act_groups, unpack_int4

__all__ = [
    "ActQuantResult",
    "hadamard_matrix",
    "hadamard_scale",
    "transform_input",
    "act_quant_ref",
    "unpack_int4_ref",
    "qgemm_ref",
    "gelu_tanh",
    "quant_linear_ref",
    "exact_gemm_plan",
]

ACTIVATIONS = (None, "gelu_tanh")


@dataclass
class ActQuantResult:
    """Output of activation quantization: what the GEMM consumes."""

    q: torch.Tensor  # (M, K) int8 container of `bits`-bit values
    scale: torch.Tensor  # (M, G) float32, G = 1 (per token) or K / group_size
    rowsum: torch.Tensor | None  # (M, Gr) int32 sums of q per zero-point group, or None
    lowrank: torch.Tensor | None  # (M, r) x_hat @ L_down in L_down's dtype, or None


@lru_cache(maxsize=16)
def _hadamard_cpu(n: int) -> torch.Tensor:
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Unnormalized Sylvester Hadamard matrix (entries +-1, symmetric, H H = n I)."""
    return _hadamard_cpu(n).to(dtype=dtype, device=device)


def hadamard_scale(n: int) -> float:
    """Normalization 1/sqrt(n) applied after the +-1 product (fp32 in both paths)."""
    return 1.0 / math.sqrt(n)


def transform_input(
    x: torch.Tensor, smooth: torch.Tensor | None = None, hadamard_block: int = 0
) -> torch.Tensor:
    """x_hat = (x * (1 / smooth)) @ blockdiag(H_b) / sqrt(b), in float32.

    Smoothing multiplies by the fp32 reciprocal (computed once per layer) rather than
    dividing per element: the same value the kernel uses, and far cheaper there.
    """
    xh = x.float()
    if smooth is not None:
        xh = xh * (1.0 / smooth.float())
    if hadamard_block:
        b = hadamard_block
        k = xh.shape[-1]
        if k % b:
            raise ValueError(f"Hadamard block {b} must divide K={k}")
        h = hadamard_matrix(b, torch.float32, xh.device)
        xh = (xh.reshape(*xh.shape[:-1], k // b, b) @ h).reshape(xh.shape)
        xh = xh * torch.tensor(hadamard_scale(b), dtype=torch.float32, device=xh.device)
    return xh


def _group_sums(q: torch.Tensor, group: int) -> torch.Tensor:
    """int32 sums of q over groups of `group` along K (group 0 = whole row)."""
    m, k = q.shape
    g = k if group == 0 else group
    return q.to(torch.int32).reshape(m, k // g, g).sum(-1, dtype=torch.int32)


def _quantize_transformed(
    xh: torch.Tensor, bits: int, group_size: int | None, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q as float32 integers (M, K), scale (M, G)) of an already transformed fp32 input."""
    m, k = xh.shape
    g = k if group_size is None else group_size
    if g <= 0 or k % g:
        raise ValueError(f"group_size {g} must divide K={k}")
    q, scale = quantize_act_groups(xh.reshape(m, k // g, g), bits, clip_ratio)
    return q.reshape(m, k), scale


def _lowrank_down(xh: torch.Tensor, lora_down: torch.Tensor | None) -> torch.Tensor | None:
    if lora_down is None or lora_down.shape[1] == 0:
        return None
    ldt = lora_down.dtype
    return (xh.to(ldt).float() @ lora_down.float()).to(ldt)


def act_quant_ref(
    x: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    hadamard_block: int = 0,
    lora_down: torch.Tensor | None = None,
    rowsum_group: int | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
) -> ActQuantResult:
    """Transform, quantize per token/group, optional row sums and low-rank down-projection.

    ``rowsum_group``: None = no row sums; 0 = one sum per row; g = sums per K-group of g
    (the zero-point correction of asymmetric weights needs them at the GEMM's grouping).
    ``clip_ratio`` (DRAQ): scale = (absmax * clip_ratio) / qmax, see ``vsrq.quant.pack``.
    """
    if x.dim() != 2:
        raise ValueError("act_quant_ref expects (M, K)")
    int_range(bits)  # validates bits
    clip = check_clip_ratio(clip_ratio)
    xh = transform_input(x, smooth, hadamard_block)
    qf, scale = _quantize_transformed(xh, bits, group_size, clip)
    q = qf.to(torch.int8)
    rowsum = None if rowsum_group is None else _group_sums(q, rowsum_group)
    return ActQuantResult(q=q, scale=scale, rowsum=rowsum, lowrank=_lowrank_down(xh, lora_down))


def unpack_int4_ref(packed: torch.Tensor, k: int, signed: bool = True) -> torch.Tensor:
    """Packed (N, ceil(K/2)) uint8 -> (N, K) int8 (drops the pad nibble of an odd K)."""
    return unpack_int4(packed, signed=signed)[:, :k].contiguous()


def gelu_tanh(y: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (the DiT MLP activation)."""
    return F.gelu(y, approximate="tanh")


_FP32_EXACT_BOUND = 1 << 24  # every integer of magnitude <= 2^24 is exact in fp32
_ACCUMULATE = ("auto", "float64")


def _fp32_matmul_is_ieee() -> bool:
    """False when torch may run fp32 matmuls in reduced precision (TF32 / bf16 passes)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkl = getattr(getattr(getattr(torch.backends, "mkldnn", None), "matmul", None), "fp32_precision", "none")
    return mkl in ("none", "ieee")


def _needs_graph(*ts: torch.Tensor | None) -> bool:
    """Whether autograd must see out-of-place ops (else the CPU path works in place)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _absmax_int(t: torch.Tensor | None) -> int:
    """max |t| as a Python int; aminmax, so an int8 -128 does not overflow as abs() would."""
    if t is None or t.numel() == 0:
        return 0
    lo, hi = torch.aminmax(t)
    return max(-int(lo), int(hi))


_MIN_CHUNK_K = 128  # below this, K-chunks cost more than one float64 matmul


def exact_gemm_plan(group_k: int, amax_a: int, amax_w: int, accumulate: str = "auto") -> tuple[torch.dtype, int]:
    """How to compute sum_{k<group_k} a_k w_k exactly for integers |a| <= amax_a, |w| <= amax_w.

    Returns ``(operand dtype, chunk)``:
    * ``(float32, 0)``: one fp32 matmul. Every partial sum, in any order, is an integer of
      magnitude <= group_k * amax_a * amax_w <= 2^24, hence exact in fp32. int4 x int4
      (|q| <= 8): up to group_k = 262144; int8 x int8 (|q| <= 128): up to 1024.
    * ``(float32, c)``: fp32 matmuls over K-chunks of c (each exact by the same bound),
      summed in float64 (exact below 2^53): ~2x faster than one float64 matmul on CPU.
    * ``(float64, 0)``: one float64 matmul (exact below 2^53); also when ``accumulate`` is
      "float64", or when torch may run fp32 matmuls in reduced precision (TF32 / bf16).
    All three give the same integers, hence the same bits downstream (tested).
    """
    if accumulate not in _ACCUMULATE:
        raise ValueError(f"accumulate must be one of {_ACCUMULATE}")
    per_k = max(1, amax_a * amax_w)
    if accumulate == "auto" and _fp32_matmul_is_ieee():
        if group_k * per_k <= _FP32_EXACT_BOUND:
            return torch.float32, 0
        chunk = _FP32_EXACT_BOUND // per_k
        if chunk >= _MIN_CHUNK_K:
            return torch.float32, chunk
    return torch.float64, 0


def _int_matmul(a: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
    """a @ w.T of integer-valued float operands; K-chunked fp32 products summed in float64."""
    if not chunk or a.shape[1] <= chunk:
        return a @ w.T
    acc = None
    for c in range(0, a.shape[1], chunk):
        part = a[:, c:c + chunk] @ w[:, c:c + chunk].T
        acc = part.double() if acc is None else acc.add_(part)
    return acc


def _n_groups(scale: torch.Tensor, k: int) -> int:
    g = scale.shape[1]
    if g < 1 or k % g:
        raise ValueError(f"scale with {g} groups does not divide K={k}")
    return g


def _scaled_int_gemm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    wzero: torch.Tensor | None,
    rowsum: torch.Tensor | None,
    accumulate: str,
    amax_a: int | None = None,
    owned: bool = False,
) -> torch.Tensor:
    """fp32 (M, N) y = sum_g (acc_g * sa[:, g]) * sw[:, g], acc_g the exact integer
    qa_g . (qw_g - z_g) (qa may be int8 or float32 holding integers).
    ``amax_a``: a known bound on |qa| (from its bit width), else qa is scanned for it.
    ``owned``: qa may be overwritten (the per-group shortcut then scales it in place).

    Rounding is that of ``y = ((0 + v_0) + v_1) + ...`` with ``v_g = (fp32(acc_g) * s_a) * s_w``;
    only the accumulation dtype of acc_g depends on the bound (and it never changes acc_g).
    """
    m, k = qa.shape
    if qw.shape[1] != k:
        raise ValueError(f"K mismatch: activations {k}, weights {qw.shape[1]}")
    ga, gw = _n_groups(sa, k), _n_groups(sw, k)
    groups = max(ga, gw)
    if ga not in (1, groups) or gw not in (1, groups):
        raise ValueError(f"activation groups {ga} and weight groups {gw} are incompatible")
    gs = k // groups
    if ga > 1 and gw == 1 and wzero is None and accumulate == "auto":
        return _act_group_gemm(qa, sa, qw, sw, gs, owned)
    # |partial sums of qa . qw| <= gs*A*W and |rowsum * z| <= gs*A*Z, so every intermediate
    # of acc = qa.qw - rowsum*z is bounded by gs*A*(W + Z)
    amax_z = _absmax_int(wzero)
    dt, chunk = exact_gemm_plan(gs, _absmax_int(qa) if amax_a is None else amax_a, _absmax_int(qw) + amax_z, accumulate)
    acc_dt = torch.float64 if chunk else dt  # the dtype the integer sums end up in
    rs = None
    if wzero is not None:
        if rowsum is not None:
            if rowsum.shape != (m, groups):
                raise ValueError(f"rowsum must be (M, {groups}), got {tuple(rowsum.shape)}")
            rs = rowsum.to(acc_dt)
        else:  # |row sums| <= gs * A <= the bound: exact
            rs = qa.to(acc_dt).reshape(m, groups, gs).sum(-1)
    graph = _needs_graph(qa, sa, qw, sw, rowsum)
    a = qa.to(dt)
    w = qw.to(dt)
    y: torch.Tensor | None = None
    for g in range(groups):
        if groups == 1:
            acc = _int_matmul(a, w, chunk)
        else:
            sl = slice(g * gs, (g + 1) * gs)
            acc = _int_matmul(a[:, sl], w[:, sl], chunk)
        if rs is not None:  # exact integers: the order of these ops does not matter
            z = wzero[:, g if wzero.shape[1] > 1 else 0].to(acc_dt)
            acc = acc - rs[:, g, None] * z[None, :] if graph else acc.addr_(rs[:, g], z, alpha=-1)
        s_a = sa[:, g if ga > 1 else 0].float()[:, None]
        s_w = sw[:, g if gw > 1 else 0].float()[None, :]
        if graph:
            v = acc.float() * s_a * s_w
            y = v if y is None else y + v
        else:
            v = acc.float() if acc.dtype != torch.float32 else acc
            v.mul_(s_a).mul_(s_w)
            y = v if y is None else y.add_(v)
    return y


def _act_group_gemm(qa: torch.Tensor, sa: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor, gs: int,
                    owned: bool = False) -> torch.Tensor:
    """Per-group activation scales with per-channel symmetric weights: y = ((qa * sa) @ qw^T) * sw.

    One float32 GEMM of the dequantized activations with the integer weights instead of one
    exact integer GEMM per group and a pass over the (M, N) output per group (3-6x more output
    traffic on the tiny model's layers). Not exact integer arithmetic: the sums round like any
    fp32 GEMM (relative error ~1e-7 of |x| |w| sums), which is also how the GPU kernel, whose
    per-group partial sums are scaled in fp32 inside its K loop, differs from an exact sum.
    ``accumulate="float64"`` keeps the exact per-group sums (the definition; tests compare).
    ``owned``: qa is a float32 tensor of the caller's that may be overwritten (saves an (M, K) buffer).
    """
    m, k = qa.shape
    s = sa.float()[:, :, None]
    if owned and qa.dtype == torch.float32 and qa.is_contiguous() and not _needs_graph(qa, sa):
        a = qa.view(m, k // gs, gs).mul_(s).view(m, k)
    else:
        a = (qa.float().reshape(m, k // gs, gs) * s).reshape(m, k)
    return (a @ qw.float().T).mul_(sw.float()[:, 0][None, :])


def _epilogue_ref(
    y: torch.Tensor,
    bias: torch.Tensor | None,
    lowrank: torch.Tensor | None,
    lora_up: torch.Tensor | None,
    activation: str | None,
    gate: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """[+ lowrank @ lora_up] [+ bias] -> [gelu] -> [* gate] -> [+ residual] on the fp32 y
    (in place on y, which the caller owns; out-of-place where autograd needs it)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    graph = _needs_graph(y, bias, lowrank, lora_up, gate, residual)
    if lora_up is not None and lowrank is not None and lora_up.shape[0] > 0:
        low = lowrank.float() @ lora_up.float()
        y = y + low if graph else y.add_(low)
    if bias is not None:  # bias_align may be learned through this path (then: graph)
        b = bias.float()[None, :]
        y = y + b if graph else y.add_(b)
    if activation == "gelu_tanh":
        y = gelu_tanh(y)
    if gate is not None:
        y = y * gate.float() if graph else y.mul_(gate.float())
    if residual is not None:
        y = y + residual.float() if graph else y.add_(residual.float())
    return y.to(out_dtype)


def qgemm_ref(
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
    accumulate: str = "auto",
) -> torch.Tensor:
    """Scaled integer GEMM with the fused epilogue.

    y = sum_g sa[m,g] sw[n,g] (qa[m,g,:] . (qw[n,g,:] - z[n,g])) [+ lowrank @ lora_up]
        [+ bias] -> [gelu] -> [* gate] -> [+ residual].
    sa (M, Ga) and sw (N, Gw): Ga, Gw in {1, G}; the GEMM's group count is max(Ga, Gw).
    The zero-point term uses int32 row sums of qa per GEMM group (``rowsum``, computed
    here if not given). ``accumulate``: "auto" (exact fp32 where provable, else fp64) or
    "float64" (always; the same bits, slower: for tests).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    y = _scaled_int_gemm(qa, sa, qw, sw, wzero, rowsum, accumulate)
    return _epilogue_ref(y, bias, lowrank, lora_up, activation, gate, residual, out_dtype)


def gemm_group_size(k: int, act_group: int | None, weight_groups: int) -> int:
    """Group size the GEMM works in (0 = whole K): the finer of activation and weight groups."""
    ga = 1 if act_group in (None, 0, k) else k // act_group
    groups = max(ga, weight_groups)
    if ga not in (1, groups) or weight_groups not in (1, groups):
        raise ValueError(f"activation groups {ga} and weight groups {weight_groups} are incompatible")
    return 0 if groups == 1 else k // groups


def quant_linear_ref(
    x: torch.Tensor,
    w_int: torch.Tensor,
    wscale: torch.Tensor,
    wzero: torch.Tensor | None = None,
    a_bits: int = 4,
    act_group: int | None = None,
    smooth: torch.Tensor | None = None,
    hadamard_block: int = 0,
    lora_down: torch.Tensor | None = None,
    lora_up: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    accumulate: str = "auto",
) -> torch.Tensor:
    """Whole quantized linear layer on a (M, K) input: act_quant_ref then qgemm_ref.

    Computed without the int8 round trip of q (the float32 integers go straight into the
    GEMM; row sums for zero points are taken from them), which gives the same bits as the
    composition ``qgemm_ref(act_quant_ref(...))`` (tested), faster.
    """
    if x.dim() != 2:
        raise ValueError("quant_linear_ref expects (M, K)")
    int_range(a_bits)
    clip = check_clip_ratio(clip_ratio)
    k = x.shape[1]
    gemm_group_size(k, act_group, wscale.shape[1])  # validates the grouping
    xh = transform_input(x, smooth, hadamard_block)
    qf, sa = _quantize_transformed(xh, a_bits, act_group if act_group not in (0, k) else None, clip)
    low = _lowrank_down(xh, lora_down)
    del xh
    # |q| <= 2^(bits-1) by construction: no scan of q for the exactness bound (any valid bound
    # gives the same integers, exact_gemm_plan)
    y = _scaled_int_gemm(qf, sa, w_int, wscale, wzero, None, accumulate, amax_a=1 << (a_bits - 1), owned=True)
    del qf
    return _epilogue_ref(y, bias, low, lora_up, activation, gate, residual, out_dtype or x.dtype)
