"""The pure-torch kernel reference against the fake-quant definitions and plain algebra."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsrq.kernels.reference import (
    act_quant_ref,
    gemm_group_size,
    hadamard_matrix,
    hadamard_scale,
    qgemm_ref,
    quant_linear_ref,
    transform_input,
    unpack_int4_ref,
)
from vsrq.quant.pack import (
    dequantize_activation,
    dequantize_weight,
    fake_quant_activation,
    pack_int4,
    quantize_activation,
    quantize_weight,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("n", [1, 2, 64, 128])
def test_hadamard_is_orthogonal_after_scaling(n: int) -> None:
    h = hadamard_matrix(n) * hadamard_scale(n)
    assert torch.allclose(h @ h.T, torch.eye(n), atol=1e-6)
    assert torch.equal(hadamard_matrix(n), hadamard_matrix(n).T)
    with pytest.raises(ValueError):
        hadamard_matrix(12)


def test_rotation_and_smoothing_preserve_the_linear_map() -> None:
    x, w = torch.randn(9, 256, dtype=torch.float64).float(), torch.randn(40, 256)
    smooth = torch.rand(256) + 0.5
    b = 64
    h = hadamard_matrix(b) * hadamard_scale(b)
    w_rot = ((w * smooth).reshape(40, 4, b) @ h).reshape(40, 256)  # offline W' = (W * s) H
    xh = transform_input(x, smooth, b)
    assert _rel(xh @ w_rot.T, x @ w.T) < 1e-5
    assert abs(float(transform_input(x, None, b).norm() / x.norm()) - 1) < 1e-5
    with pytest.raises(ValueError):
        transform_input(torch.randn(2, 100), None, 64)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("had", [0, 64])
def test_act_quant_ref_is_fake_quant_of_transformed_input(bits: int, group: int | None, had: int) -> None:
    x = torch.randn(13, 192).to(torch.bfloat16)
    smooth = torch.rand(192) + 0.5
    ld = (torch.randn(192, 8) * 0.1).to(torch.bfloat16)
    out = act_quant_ref(x, bits, group, smooth, had, ld, rowsum_group=group or 0)
    xh = transform_input(x, smooth, had)
    q, s = quantize_activation(xh, bits, group)
    assert torch.equal(out.q, q) and torch.equal(out.scale, s)
    assert torch.equal(dequantize_activation(out.q, out.scale, group), fake_quant_activation(xh, bits, group))
    g = group or 192
    assert torch.equal(out.rowsum, q.to(torch.int32).reshape(13, -1, g).sum(-1).to(torch.int32))
    assert out.lowrank.dtype == torch.bfloat16
    assert torch.equal(out.lowrank, (xh.to(torch.bfloat16).float() @ ld.float()).to(torch.bfloat16))
    none = act_quant_ref(x, bits, group)
    assert none.rowsum is None and none.lowrank is None


def _quantized_pair(m: int, n: int, k: int, group: int | None, sym: bool, wbits: int = 4, abits: int = 4):
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    qa, sa = quantize_activation(x, abits, group)
    qw, sw, zw = quantize_weight(w, wbits, group, sym)
    return qa, sa, qw, sw, zw


@pytest.mark.parametrize("group", [None, 32, 64])
@pytest.mark.parametrize("sym", [True, False])
def test_qgemm_ref_equals_dequantized_matmul(group: int | None, sym: bool) -> None:
    qa, sa, qw, sw, zw = _quantized_pair(17, 23, 128, group, sym)
    got = qgemm_ref(qa, sa, qw, sw, wzero=zw, out_dtype=torch.float32)
    want = dequantize_activation(qa, sa, group).double() @ dequantize_weight(qw, sw, zw, group).double().T
    assert _rel(got, want) < 1e-6


def test_qgemm_ref_mixed_groups_and_given_rowsums() -> None:
    # per-token activations with per-group asymmetric weights: the GEMM works in weight groups
    x, w = torch.randn(11, 128), torch.randn(7, 128)
    qa, sa = quantize_activation(x, 4)
    qw, sw, zw = quantize_weight(w, 4, 32, False)
    rs = qa.to(torch.int32).reshape(11, 4, 32).sum(-1).to(torch.int32)
    got = qgemm_ref(qa, sa, qw, sw, wzero=zw, rowsum=rs, out_dtype=torch.float32)
    want = dequantize_activation(qa, sa).double() @ dequantize_weight(qw, sw, zw, 32).double().T
    assert _rel(got, want) < 1e-6
    assert gemm_group_size(128, None, 4) == 32 and gemm_group_size(128, 64, 1) == 64
    assert gemm_group_size(128, None, 1) == 0
    with pytest.raises(ValueError):
        gemm_group_size(128, 64, 4)  # 2 activation groups vs 4 weight groups
    with pytest.raises(ValueError):
        qgemm_ref(qa, sa, qw, sw, wzero=zw, rowsum=rs[:, :2])


def test_qgemm_ref_int8_is_exact_at_large_k() -> None:
    # 127 * 127 * 4096 > 2^24: the reference must switch to exact float64 accumulation
    qa = torch.full((2, 4096), 127, dtype=torch.int8)
    qw = torch.full((3, 4096), 127, dtype=torch.int8)
    qw[1, 0] = 126
    y = qgemm_ref(qa, torch.ones(2, 1), qw, torch.ones(3, 1), out_dtype=torch.float32)
    exact = (qa.long() @ qw.long().T).float()
    assert torch.equal(y, exact)


def test_qgemm_ref_epilogue_order() -> None:
    qa, sa, qw, sw, _ = _quantized_pair(9, 12, 64, None, True)
    low = torch.randn(9, 4).to(torch.bfloat16)
    lu = torch.randn(4, 12).to(torch.bfloat16)
    bias, gate, res = torch.randn(12), torch.randn(9, 12), torch.randn(9, 12)
    base = qgemm_ref(qa, sa, qw, sw, out_dtype=torch.float32)
    y = qgemm_ref(qa, sa, qw, sw, bias=bias, lowrank=low, lora_up=lu, activation="gelu_tanh", gate=gate,
                  residual=res, out_dtype=torch.float32)
    want = F.gelu(base + low.float() @ lu.float() + bias, approximate="tanh") * gate + res
    assert _rel(y, want) < 1e-6
    with pytest.raises(ValueError):
        qgemm_ref(qa, sa, qw, sw, activation="relu")
    with pytest.raises(ValueError):
        qgemm_ref(qa[:, :32], sa, qw, sw)


def test_unpack_ref_drops_pad_nibble() -> None:
    q = torch.randint(-8, 8, (5, 7), dtype=torch.int8)
    p = pack_int4(torch.cat((q, torch.zeros(5, 1, dtype=torch.int8)), 1))
    assert torch.equal(unpack_int4_ref(p, 7), q)


def test_quant_linear_ref_composes_act_quant_and_qgemm() -> None:
    x = torch.randn(10, 128).to(torch.bfloat16)
    w = torch.randn(24, 128)
    qw, sw, zw = quantize_weight(w, 4, 64, False)
    smooth = torch.rand(128) + 0.5
    y = quant_linear_ref(x, qw, sw, zw, 4, 64, smooth, 0, out_dtype=torch.float32)
    aq = act_quant_ref(x, 4, 64, smooth, rowsum_group=64)
    want = fake_quant_activation(transform_input(x, smooth), 4, 64).double() @ dequantize_weight(qw, sw, zw, 64).double().T
    assert torch.equal(y, qgemm_ref(aq.q, aq.scale, qw, sw, wzero=zw, rowsum=aq.rowsum, out_dtype=torch.float32))
    assert _rel(y, want) < 1e-6
    assert quant_linear_ref(x, qw, sw, zw, 4, 64).dtype == torch.bfloat16
