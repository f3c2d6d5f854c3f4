"""Packing and the pure-torch quantizers: the numerics contract every kernel follows."""

from __future__ import annotations

import pytest
import torch

from vsrq.quant.pack import (
    dequantize_activation,
    dequantize_weight,
    fake_quant_activation,
    check_clip_ratio,
    fake_quant_weight,
    fit_act_clip,
    int_range,
    pack_int4,
    quantize_activation,
    quantize_weight,
    round_half_up,
    unpack_int4,
)


@pytest.mark.parametrize("shape", [(6, 8), (3, 5, 130), (1, 2)])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_unpack_round_trip(shape: tuple[int, ...], signed: bool) -> None:
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, shape, dtype=torch.int8)
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(unpack_int4(p, signed=signed), q)


def test_pack_nibble_order_and_twos_complement() -> None:
    # byte j: element 2j in the low nibble, 2j+1 in the high nibble
    p = pack_int4(torch.tensor([[1, -2, 7, -8]], dtype=torch.int8))
    assert p.tolist() == [[0xE1, 0x87]]
    assert unpack_int4(torch.tensor([[0xE1]], dtype=torch.uint8), signed=False).tolist() == [[1, 14]]


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([16, 0], dtype=torch.int16))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([-9, 0], dtype=torch.int16))
    with pytest.raises(TypeError):
        pack_int4(torch.zeros(2, 4))
    with pytest.raises(TypeError):
        unpack_int4(torch.zeros(2, 4, dtype=torch.int8))


def test_round_half_up_and_ranges() -> None:
    # 0.49999997 + 0.5 rounds to 1.0 in fp32 before the floor: a quirk of floor(v + 0.5)
    # that the kernels share (same fp32 add), so it is part of the contract, not a bug
    x = torch.tensor([2.5, -2.5, 0.49999997, 0.4999, -0.5, 3.0])
    assert round_half_up(x).tolist() == [3.0, -2.0, 1.0, 0.0, 0.0, 3.0]
    assert int_range(4) == (-8, 7) and int_range(4, signed=False) == (0, 15)
    assert int_range(8) == (-128, 127) and int_range(2) == (-2, 1)
    for bad in (1, 9, 4.0):
        with pytest.raises(ValueError):
            int_range(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("group", [None, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_quant_error_bounded_by_half_scale(bits: int, group: int | None, symmetric: bool) -> None:
    if bits == 8 and not symmetric:
        q, s, z = quantize_weight(torch.randn(8, 128), 8, group, False)
        assert q.dtype == torch.uint8 and int(q.max()) <= 255
        return
    w = torch.randn(24, 256) * torch.rand(24, 1) * 3
    w[3] = 0.0  # a zero row must not divide by zero
    q, s, z = quantize_weight(w, bits, group, symmetric)
    g = group or 256
    assert s.shape == (24, 256 // g) and s.dtype == torch.float32
    qmin, qmax = int_range(bits, signed=symmetric)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    assert (z is None) == symmetric
    deq = dequantize_weight(q, s, z, group)
    bound = s.repeat_interleave(g, dim=1) / 2
    assert bool(((deq - w).abs() <= bound * (1 + 1e-5) + 1e-7).all())
    assert torch.equal(deq[3], torch.zeros(256))
    assert torch.equal(fake_quant_weight(w, bits, group, symmetric), deq)


def test_weight_scale_dtype_fp16_is_what_q_uses() -> None:
    w = torch.randn(16, 64)
    q, s, _ = quantize_weight(w, 4, 32, True, torch.float16)
    assert s.dtype == torch.float16
    # q is computed against the stored (rounded) scale, so re-quantizing is a fixed point
    deq = dequantize_weight(q, s, None, 32)
    q2, s2, _ = quantize_weight(deq, 4, 32, True, torch.float16)
    assert torch.equal(q, q2)


def test_weight_quant_validates() -> None:
    with pytest.raises(ValueError):
        quantize_weight(torch.randn(4, 60), 4, 32)
    with pytest.raises(ValueError):
        quantize_weight(torch.randn(4, 4, 4), 4)
    with pytest.raises(ValueError):
        quantize_weight(torch.randn(4, 64), 9)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("group", [None, 32, 64])
def test_activation_quant_error_bounded_by_half_scale(bits: int, group: int | None) -> None:
    x = torch.randn(3, 7, 192) * 4
    x[1, 2] = 0.0
    q, s = quantize_activation(x, bits, group)
    g = group or 192
    assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (3, 7, 192 // g)
    qmax = int_range(bits)[1]
    assert int(q.abs().max()) <= qmax  # scale = absmax / qmax: -qmax-1 never occurs
    deq = dequantize_activation(q, s, group)
    assert bool(((deq - x).abs() <= s.repeat_interleave(g, dim=-1) / 2 * (1 + 1e-5) + 1e-7).all())
    assert torch.equal(q[1, 2], torch.zeros(192, dtype=torch.int8)) and bool((s[1, 2] == 1).all())
    fq = fake_quant_activation(x.to(torch.bfloat16), bits, group)
    assert fq.dtype == torch.bfloat16


def test_activation_quant_uses_reciprocal_contract() -> None:
    # q = floor(x * (1/scale) + 0.5) with fp32 IEEE ops: spelled out independently here
    x = torch.randn(5, 64)
    q, s = quantize_activation(x, 4)
    inv = 1.0 / (x.abs().amax(-1, keepdim=True) / 7)
    expect = torch.clamp(torch.floor(x * inv + 0.5), -8, 7)
    assert torch.equal(q.float(), expect)


# ----------------------------------------------------------------------------- DRAQ clip ratio


def _unclipped_quantizer(x: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantizer as it was before the clip ratio existed, spelled out."""
    qmax = (1 << (bits - 1)) - 1
    g = group or x.shape[-1]
    xg = x.float().reshape(*x.shape[:-1], -1, g)
    s = xg.abs().amax(-1) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.floor(xg * (1.0 / s)[..., None] + 0.5), -qmax - 1, qmax)
    return q.reshape(x.shape).to(torch.int8), s


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [None, 32])
def test_clip_ratio_one_is_the_unclipped_quantizer(bits: int, group: int | None) -> None:
    x = torch.distributions.StudentT(3.0).sample((9, 128)).to(torch.bfloat16)
    x[2] = 0.0
    q0, s0 = _unclipped_quantizer(x, bits, group)
    for kw in ({}, {"clip_ratio": 1.0}, {"clip_ratio": torch.tensor([1.0])}):
        q, s = quantize_activation(x, bits, group, **kw)
        assert torch.equal(q, q0) and torch.equal(s, s0)
    assert torch.equal(fake_quant_activation(x, bits, group, 1.0), fake_quant_activation(x, bits, group))


def test_clip_ratio_contract() -> None:
    # scale = (absmax * fp32(gamma)) / qmax, q = clamp(floor(x * (1/scale) + 0.5), -qmax-1, qmax)
    x = torch.distributions.StudentT(2.0).sample((7, 64))
    gamma = 0.85  # not exact in fp32: the fp32 value is the one that counts
    g32 = torch.tensor(gamma, dtype=torch.float32)
    q, s = quantize_activation(x, 4, None, clip_ratio=gamma)
    s_want = (x.abs().amax(-1) * g32) / 7
    assert torch.equal(s[:, 0], s_want)
    want = torch.clamp(torch.floor(x * (1.0 / s_want)[:, None] + 0.5), -8, 7)
    assert torch.equal(q.float(), want)
    assert int(q.min()) == -8 or int(q.max()) == 7  # the largest values saturate
    assert check_clip_ratio(gamma) == float(g32) and check_clip_ratio(torch.tensor([0.5])) == 0.5


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, float("nan"), torch.tensor([0.5, 0.6])])
def test_clip_ratio_validates(bad) -> None:
    with pytest.raises(ValueError):
        quantize_activation(torch.randn(2, 8), 4, clip_ratio=bad)
    with pytest.raises(ValueError):
        fit_act_clip(torch.randn(2, 8), 4, ratios=(1.0, bad))
    with pytest.raises(ValueError):
        fit_act_clip(torch.randn(2, 8), 4, ratios=())


@pytest.mark.parametrize("group", [None, 64])
def test_clipping_lowers_mse_on_heavy_tails_and_fit_finds_it(group: int | None) -> None:
    x = torch.distributions.StudentT(3.0).sample((64, 256))
    ratios = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
    mse = {r: float((fake_quant_activation(x, 4, group, r) - x).double().pow(2).mean()) for r in ratios}
    best = min(ratios, key=lambda r: (mse[r], -r))
    assert best < 1.0 and mse[best] < 0.95 * mse[1.0]  # typically ~0.75 per token, ~0.85 per group
    assert fit_act_clip(x, 4, group) == best
    assert fit_act_clip(x, 4, group, ratios=(1.0,)) == 1.0
    # and it is not a bias towards small ratios: light-tailed data at 8 bits keeps the full range
    assert fit_act_clip(torch.rand(64, 256) * 2 - 1, 8, group) == 1.0
