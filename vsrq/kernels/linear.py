"""A whole quantized linear layer on the Triton path: activation kernel, then GEMM.

Kept separate from the two kernels so that QuantLinear and the benchmark run the very
same composition; its pure-torch twin is ``reference.quant_linear_ref``.
"""

from __future__ import annotations

import torch

from vsrq.kernels.act_quant import act_quant, norm_act_quant
from vsrq.kernels.qgemm import qgemm
from vsrq.kernels.reference import gemm_group_size

__all__ = ["quant_linear", "quant_linear_op"]


def quant_linear(
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
    impl: str = "auto",
    gemm_config: dict | None = None,
    act_config: dict | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    norm: tuple[float, tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> torch.Tensor:
    """(M, K) input -> (M, N) output with int8-container weights ``w_int`` (N, K);
    ``clip_ratio`` is the activation clip ratio (DRAQ, see ``act_quant``). ``norm`` = (eps, mod):
    x is the input of a LayerNorm (+ modulation, `modulation_vectors`) that the activation kernel
    applies itself (`norm_act_quant`; no rotation or low-rank branch then). ``gate`` (M, N) or one
    (N,) vector for every row (passed to the GEMM as a stride-0 view)."""
    k = x.shape[1]
    if gate is not None and gate.dim() == 1:
        gate = gate.view(1, -1).expand(x.shape[0], -1)
    gs = gemm_group_size(k, act_group, wscale.shape[1])
    group = act_group if act_group not in (0, k) else None
    rowsum_group = gs if wzero is not None else None
    if norm is not None:
        if hadamard_block or lora_down is not None:
            raise ValueError("a fused LayerNorm needs a layer without rotation or low-rank branch")
        aq = norm_act_quant(x, norm[0], norm[1], a_bits, group, smooth, rowsum_group, clip_ratio, config=act_config)
    else:
        aq = act_quant(x, a_bits, group, smooth, hadamard_block, lora_down, rowsum_group=rowsum_group,
                       config=act_config, clip_ratio=clip_ratio)
    return qgemm(
        aq.q, aq.scale, w_int, wscale, wzero=wzero, rowsum=aq.rowsum, bias=bias, lowrank=aq.lowrank,
        lora_up=lora_up, activation=activation, gate=gate, residual=residual,
        out_dtype=out_dtype or x.dtype, impl=impl, config=gemm_config,
    )


@torch.library.custom_op("vsrq::quant_linear", mutates_args=())
def quant_linear_op(
    x: torch.Tensor, w: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor | None, smooth: torch.Tensor | None,
    lora_down: torch.Tensor | None, lora_up: torch.Tensor | None, bias: torch.Tensor | None,
    gate: torch.Tensor | None, residual: torch.Tensor | None, k: int, packed: bool, signed: bool, a_bits: int,
    act_group: int, hadamard_block: int, activation: str, clip_ratio: float,
    norm_eps: float = -1.0, mod_mul: torch.Tensor | None = None, mod_add: torch.Tensor | None = None,
) -> torch.Tensor:
    """`quant_linear` as one opaque torch op (packed int4 weights unpacked per call), so that
    torch.compile fuses the code around a quantized layer without tracing into the kernels.
    norm_eps >= 0: x is a LayerNorm's input, mod_mul / mod_add its modulation (see ``norm``)."""
    from vsrq.kernels.unpack import unpack_int4_to_int8

    w8 = unpack_int4_to_int8(w, k, signed=signed) if packed else w
    norm = None if norm_eps < 0 else (norm_eps, None if mod_mul is None else (mod_mul, mod_add))
    return quant_linear(x, w8, wscale, wzero=wzero, a_bits=a_bits, act_group=act_group or None, smooth=smooth,
                        hadamard_block=hadamard_block, lora_down=lora_down, lora_up=lora_up, bias=bias,
                        activation=activation or None, gate=gate, residual=residual, out_dtype=x.dtype,
                        clip_ratio=clip_ratio, norm=norm)


@quant_linear_op.register_fake
def _quant_linear_shape(x, w, wscale, wzero, smooth, lora_down, lora_up, bias, gate, residual, k, packed, signed,
                        a_bits, act_group, hadamard_block, activation, clip_ratio, norm_eps=-1.0, mod_mul=None,
                        mod_add=None) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0])

