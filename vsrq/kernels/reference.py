"""Pure-torch reference of every fused kernel (CPU and CUDA): the numerics contract.

The Triton kernels in this package compute exactly these functions; the only allowed
differences are float summation order inside matrix products (the Hadamard rotation,
the low-rank branch and the fp32 scaling epilogue). Integer GEMMs here are exact
(float64 accumulation where fp32 could round), so a mismatch in a test is a kernel bug.

Shapes: activations are 2-D (M tokens, K features); weights (N, K) int8 containers
(int4 values unpacked); scales (rows, groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from vsrq.quant.pack import int_range, round_half_up, unpack_int4

__all__ = [
    "ActQuantResult",
    "hadamard_matrix",
    "hadamard_scale",
    "transform_input",
    "act_quant_ref",
    "unpack_int4_ref",
    "qgemm_ref",
    "gelu_tanh",
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


def act_quant_ref(
    x: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    smooth: torch.Tensor | None = None,
    hadamard_block: int = 0,
    lora_down: torch.Tensor | None = None,
    rowsum_group: int | None = None,
) -> ActQuantResult:
    """Transform, quantize per token/group, optional row sums and low-rank down-projection.

    ``rowsum_group``: None = no row sums; 0 = one sum per row; g = sums per K-group of g
    (the zero-point correction of asymmetric weights needs them at the GEMM's grouping).
    """
    if x.dim() != 2:
        raise ValueError("act_quant_ref expects (M, K)")
    qmin, qmax = int_range(bits, signed=True)
    xh = transform_input(x, smooth, hadamard_block)
    m, k = xh.shape
    g = k if group_size is None else group_size
    if k % g:
        raise ValueError(f"group_size {g} must divide K={k}")
    xg = xh.reshape(m, k // g, g)
    scale = xg.abs().amax(-1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(round_half_up(xg * (1.0 / scale)[..., None]), qmin, qmax).reshape(m, k).to(torch.int8)
    rowsum = None if rowsum_group is None else _group_sums(q, rowsum_group)
    low = None
    if lora_down is not None and lora_down.shape[1] > 0:
        ldt = lora_down.dtype
        low = (xh.to(ldt).float() @ lora_down.float()).to(ldt)
    return ActQuantResult(q=q, scale=scale, rowsum=rowsum, lowrank=low)


def unpack_int4_ref(packed: torch.Tensor, k: int, signed: bool = True) -> torch.Tensor:
    """Packed (N, ceil(K/2)) uint8 -> (N, K) int8 (drops the pad nibble of an odd K)."""
    return unpack_int4(packed, signed=signed)[:, :k].contiguous()


def gelu_tanh(y: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (the DiT MLP activation)."""
    return F.gelu(y, approximate="tanh")


def _int_matmul(a: torch.Tensor, b: torch.Tensor, bound: int) -> torch.Tensor:
    """Exact integer a @ b.T via float: fp32 when every partial sum stays below 2^24, else fp64."""
    dt = torch.float32 if bound < (1 << 24) else torch.float64
    return a.to(dt) @ b.to(dt).T


def _n_groups(scale: torch.Tensor, k: int) -> int:
    g = scale.shape[1]
    if g < 1 or k % g:
        raise ValueError(f"scale with {g} groups does not divide K={k}")
    return g


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
) -> torch.Tensor:
    """Scaled integer GEMM with the fused epilogue.

    y = sum_g sa[m,g] sw[n,g] (qa[m,g,:] . (qw[n,g,:] - z[n,g])) [+ lowrank @ lora_up]
        [+ bias] -> [gelu] -> [* gate] -> [+ residual].
    sa (M, Ga) and sw (N, Gw): Ga, Gw in {1, G}; the GEMM's group count is max(Ga, Gw).
    The zero-point term uses int32 row sums of qa per GEMM group (``rowsum``, computed
    here if not given).
    """
    m, k = qa.shape
    n = qw.shape[0]
    if qw.shape[1] != k:
        raise ValueError(f"K mismatch: activations {k}, weights {qw.shape[1]}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    ga, gw = _n_groups(sa, k), _n_groups(sw, k)
    groups = max(ga, gw)
    if ga not in (1, groups) or gw not in (1, groups):
        raise ValueError(f"activation groups {ga} and weight groups {gw} are incompatible")
    gs = k // groups
    amax_a = int(qa.abs().max()) if qa.numel() else 0
    amax_w = int(qw.abs().max()) if qw.numel() else 0
    # |partial sums| bound; the zero-point term can double it.
    bound = gs * amax_a * amax_w * (2 if wzero is not None else 1)
    y = torch.zeros(m, n, dtype=torch.float32, device=qa.device)
    rs = None
    if wzero is not None:
        rs = rowsum if rowsum is not None else _group_sums(qa, 0 if groups == 1 else gs)
        if rs.shape != (m, groups):
            raise ValueError(f"rowsum must be (M, {groups}), got {tuple(rs.shape)}")
    for g in range(groups):
        sl = slice(g * gs, (g + 1) * gs)
        acc = _int_matmul(qa[:, sl], qw[:, sl], bound)
        if wzero is not None:
            z = wzero[:, g if wzero.shape[1] > 1 else 0].to(acc.dtype)
            acc = acc - rs[:, g].to(acc.dtype)[:, None] * z[None, :]
        s_a = sa[:, g if ga > 1 else 0].float()
        s_w = sw[:, g if gw > 1 else 0].float()
        y = y + acc.float() * s_a[:, None] * s_w[None, :]
    if lora_up is not None and lowrank is not None and lora_up.shape[0] > 0:
        y = y + lowrank.float() @ lora_up.float()
    if bias is not None:
        y = y + bias.float()[None, :]
    if activation == "gelu_tanh":
        y = gelu_tanh(y)
    if gate is not None:
        y = y * gate.float()
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


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
) -> torch.Tensor:
    """Whole quantized linear layer on a (M, K) input: act_quant_ref then qgemm_ref."""
    k = x.shape[1]
    gs = gemm_group_size(k, act_group, wscale.shape[1])
    aq = act_quant_ref(
        x, a_bits, act_group if act_group not in (0, k) else None, smooth, hadamard_block,
        lora_down, rowsum_group=gs if wzero is not None else None,
    )
    return qgemm_ref(
        aq.q, aq.scale, w_int, wscale, wzero=wzero, rowsum=aq.rowsum, bias=bias, lowrank=aq.lowrank,
        lora_up=lora_up, activation=activation, gate=gate, residual=residual,
        out_dtype=out_dtype or x.dtype,
    )
