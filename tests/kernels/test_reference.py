"""The pure-torch kernel reference against the fake-quant definitions and plain algebra."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsrq.kernels.reference import (
    act_quant_ref,
    exact_gemm_plan,
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


# ----------------------------------------------------------------------------- DRAQ clip + exact fast path


@pytest.mark.parametrize("group,had", [(None, 0), (32, 0), (None, 64)])
def test_act_quant_ref_clip_is_clipped_fake_quant(group: int | None, had: int) -> None:
    x = (torch.distributions.StudentT(3.0).sample((13, 192)) * 2).to(torch.bfloat16)
    smooth = torch.rand(192) + 0.5
    out = act_quant_ref(x, 4, group, smooth, had, rowsum_group=group or 0, clip_ratio=0.8)
    xh = transform_input(x, smooth, had)
    q, s = quantize_activation(xh, 4, group, clip_ratio=0.8)
    assert torch.equal(out.q, q) and torch.equal(out.scale, s) and int(q.min()) == -8
    assert torch.equal(out.rowsum, q.to(torch.int32).reshape(13, -1, group or 192).sum(-1).to(torch.int32))
    plain = act_quant_ref(x, 4, group, smooth, had)
    assert torch.equal(act_quant_ref(x, 4, group, smooth, had, clip_ratio=1.0).q, plain.q)
    assert bool((out.scale <= plain.scale).all()) and not torch.equal(out.q, plain.q)


def _float64_quant_linear(x, qw, sw, zw, bits, group, clip, bias=None, gate=None, residual=None):
    """The reference as it was written before the fast path: int8 q, float64 integer GEMM,
    ``y = y + acc.float() * s_a * s_w`` per group, out-of-place epilogue."""
    aq = act_quant_ref(x, bits, group, clip_ratio=clip)
    qa, sa = aq.q, aq.scale
    m, k = qa.shape
    groups = max(sa.shape[1], sw.shape[1])
    gs = k // groups
    y = torch.zeros(m, qw.shape[0])
    for g in range(groups):
        sl = slice(g * gs, (g + 1) * gs)
        acc = qa[:, sl].double() @ qw[:, sl].double().T
        if zw is not None:
            rs = qa[:, sl].double().sum(-1)
            acc = acc - rs[:, None] * zw[:, g if zw.shape[1] > 1 else 0].double()[None, :]
        y = y + acc.float() * sa[:, g if sa.shape[1] > 1 else 0][:, None] * sw[:, g if sw.shape[1] > 1 else 0].float()[None, :]
    if bias is not None:
        y = y + bias
    if gate is not None:
        y = y * gate.float()
    if residual is not None:
        y = y + residual.float()
    return y


_FAST = {
    "w4a4_channel": dict(k=384, bits=4, abits=4),
    "w4a4_g64_asym_clip": dict(k=384, bits=4, abits=4, group=64, asym=True, clip=0.8),
    "w4a4_channel_clip_epilogue": dict(k=256, bits=4, abits=4, clip=0.7, epi=True),
    "w8a8_k1024_clip_fp32": dict(k=1024, bits=8, abits=8, clip=0.5),  # 1024 * 128 * 127 <= 2^24: one fp32 matmul
    "w8a8_k2560_chunked": dict(k=2560, bits=8, abits=8, clip=0.9),  # fp32 K-chunks summed in fp64
    "w4a8_g128_asym": dict(k=512, bits=4, abits=8, group=128, asym=True),
}


@pytest.mark.parametrize("name", sorted(_FAST))
def test_fast_cpu_path_is_bit_identical_to_float64(name: str) -> None:
    p = _FAST[name]
    k, n, m = p["k"], 48, 40
    x = (torch.distributions.StudentT(4.0).sample((m, k)) * 3).to(torch.bfloat16)
    qw, sw, zw = quantize_weight(torch.randn(n, k), p["bits"], p.get("group"), not p.get("asym"), torch.float16)
    group, clip = p.get("group"), p.get("clip", 1.0)
    kw = {}
    if p.get("epi"):
        kw = dict(bias=torch.randn(n), gate=torch.randn(m, n).to(torch.bfloat16), residual=torch.randn(m, n))
    fast = quant_linear_ref(x, qw, sw, zw, p["abits"], group, clip_ratio=clip, out_dtype=torch.float32, **kw)
    slow = quant_linear_ref(x, qw, sw, zw, p["abits"], group, clip_ratio=clip, out_dtype=torch.float32,
                            accumulate="float64", **kw)
    old = _float64_quant_linear(x, qw, sw, zw, p["abits"], group, clip, **kw)
    aq = act_quant_ref(x, p["abits"], group, clip_ratio=clip, rowsum_group=(group or 0) if zw is not None else None)
    composed = qgemm_ref(aq.q, aq.scale, qw, sw, wzero=zw, rowsum=aq.rowsum, out_dtype=torch.float32, **kw)
    bits = fast.view(torch.int32)
    for other in (slow, old, composed):
        assert torch.equal(bits, other.view(torch.int32))  # bitwise: signed zeros and all


def test_per_group_activations_with_per_channel_weights_match_the_exact_sums() -> None:
    # the CPU shortcut (one fp32 GEMM of dequantized activations) against the exact per-group sums
    from unittest import mock

    from vsrq.kernels import reference

    x = (torch.distributions.StudentT(4.0).sample((40, 192)) * 3).to(torch.bfloat16)
    qw, sw, _ = quantize_weight(torch.randn(48, 192), 4, None, True, torch.float16)
    with mock.patch.object(reference, "_act_group_gemm", wraps=reference._act_group_gemm) as shortcut:
        fast = quant_linear_ref(x, qw, sw, None, 4, 32, out_dtype=torch.float32)
    assert shortcut.call_count == 1  # the shortcut did run
    exact = quant_linear_ref(x, qw, sw, None, 4, 32, out_dtype=torch.float32, accumulate="float64")
    assert _rel(fast, exact) < 1e-6
    want = dequantize_activation(*quantize_activation(x.float(), 4, 32), 32).double() @ dequantize_weight(qw, sw).double().T
    assert _rel(fast, want) < 1e-6


def test_exact_gemm_plan() -> None:
    f32, f64 = torch.float32, torch.float64
    assert exact_gemm_plan(384, 7, 7) == (f32, 0)
    assert exact_gemm_plan(262144, 8, 8) == (f32, 0)  # int4 x int4: fp32 up to K = 2^18
    assert exact_gemm_plan(262145, 8, 8) == (f32, 262144)
    assert exact_gemm_plan(1024, 128, 128) == (f32, 0)  # int8 x int8: fp32 up to K = 1024
    assert exact_gemm_plan(3072, 128, 127) == (f32, (1 << 24) // (128 * 127))
    assert exact_gemm_plan(384, 7, 7, "float64") == (f64, 0)
    assert exact_gemm_plan(1 << 20, 128, 1 << 16) == (f64, 0)  # chunks too small to pay off
    with pytest.raises(ValueError):
        exact_gemm_plan(8, 1, 1, "float32")
    prev = torch.get_float32_matmul_precision()
    try:  # fp32 matmuls may run as TF32 / bf16 passes: no longer provably exact
        torch.set_float32_matmul_precision("medium")
        assert exact_gemm_plan(384, 7, 7) == (f64, 0)
    finally:
        torch.set_float32_matmul_precision(prev)


def test_qgemm_ref_chunked_int8_is_exact() -> None:
    qa = torch.randint(-128, 128, (5, 3000), dtype=torch.int8)
    qa[0] = -128  # |-128| overflows int8 abs(): the bound must still see 128
    qw = torch.randint(-128, 128, (6, 3000), dtype=torch.int8)
    qw[0] = -128
    y = qgemm_ref(qa, torch.ones(5, 1), qw, torch.ones(6, 1), out_dtype=torch.float32)
    exact = (qa.long() @ qw.long().T).float()
    assert torch.equal(y, exact) and float(exact[0, 0]) == 128 * 128 * 3000
    assert torch.equal(y, qgemm_ref(qa, torch.ones(5, 1), qw, torch.ones(6, 1), out_dtype=torch.float32,
                                    accumulate="float64"))
