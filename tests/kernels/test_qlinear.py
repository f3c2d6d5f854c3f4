"""QuantLinear on the CPU (reference path): structure, numerics, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vsrq.kernels.reference import transform_input
from vsrq.quant.pack import fake_quant_activation
from vsrq.quant.qlinear import QuantLinear


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _fake_quant_forward(ql: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What the layer must compute, written with the fake-quant functions only."""
    xh = transform_input(x, ql.smooth, ql.hadamard_block)
    y = fake_quant_activation(xh, ql.a_bits, ql.act_group_size).double() @ ql.dequantized_weight().double().T
    if ql.rank:
        low = (xh.to(ql.lora_down.dtype).float() @ ql.lora_down.float()).to(ql.lora_down.dtype)
        y = y + (low.float() @ ql.lora_up.float()).double()
    b = ql.effective_bias()
    if b is not None:
        y = y + b.double()
    if ql.activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    return y


CONFIGS = {
    "w4a4_channel": dict(bits=4, act_bits=4),
    "w4a4_g64_asym_smooth_r16": dict(bits=4, act_bits=4, group_size=64, symmetric=False, rank=16, smooth=True),
    "w4a4_g32_hadamard128_gelu": dict(bits=4, act_bits=4, group_size=32, hadamard_block=128, activation="gelu_tanh"),
    "w8a8_channel": dict(bits=8, act_bits=8),
    "w4a8_wgroup_atoken": dict(bits=4, act_bits=8, group_size=64, act_group_size=None),
    "w3a4_channel": dict(bits=3, act_bits=4),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_forward_equals_fake_quant_numerics(name: str) -> None:
    cfg = dict(CONFIGS[name])
    lin = nn.Linear(256, 96)
    if cfg.pop("smooth", False):
        cfg["smooth"] = torch.rand(256) + 0.5
    ql = QuantLinear.from_linear(lin, **cfg)
    x = torch.randn(3, 11, 256)
    y = ql(x)
    assert y.shape == (3, 11, 96) and y.dtype == torch.float32
    assert _rel(y.reshape(33, 96), _fake_quant_forward(ql, x.reshape(33, 256))) < 1e-5


def test_buffers_and_packing() -> None:
    lin = nn.Linear(130, 48)
    ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, group_size=None, rank=8)
    assert ql.qweight.dtype == torch.uint8 and ql.qweight.shape == (48, 65)
    assert ql.wscale.shape == (48, 1) and ql.wscale.dtype == torch.float16
    assert ql.wzero is None and ql.lora_down.shape == (130, 8) and ql.lora_up.shape == (8, 48)
    assert ql.int_weight().shape == (48, 130) and int(ql.int_weight().abs().max()) <= 8
    q8 = QuantLinear.from_linear(lin, bits=8, act_bits=8)
    assert q8.qweight.dtype == torch.int8 and q8.qweight.shape == (48, 130)
    qa = QuantLinear.from_linear(nn.Linear(128, 16), bits=4, group_size=32, symmetric=False)
    assert qa.wzero.shape == (16, 4) and int(qa.int_weight().min()) >= 0 and int(qa.int_weight().max()) <= 15
    # int4 + fp16 scales: about a quarter of the bf16 bytes
    big = QuantLinear.from_linear(nn.Linear(1024, 512), bits=4)
    assert big.weight_bytes() / (1024 * 512 * 2) < 0.26


def test_quantization_error_is_sane() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(512, 256)
    with torch.no_grad():  # plant a strong low-rank part, as DiT weights have: the SVD branch must absorb it
        lin.weight.add_(torch.randn(256, 8) @ torch.randn(8, 512) * 0.05)
    x = torch.randn(64, 512)
    y = lin(x).detach()
    e8 = _rel(QuantLinear.from_linear(lin, bits=8, act_bits=8)(x), y)
    e4 = _rel(QuantLinear.from_linear(lin, bits=4, act_bits=4, group_size=64)(x), y)
    e4r = _rel(QuantLinear.from_linear(lin, bits=4, act_bits=8, group_size=64, rank=16)(x), y)
    e4n = _rel(QuantLinear.from_linear(lin, bits=4, act_bits=8, group_size=64)(x), y)
    assert e8 < 0.02 and e4 < 0.25 and e4r < 0.7 * e4n


def test_safetensors_round_trip(tmp_path: Path) -> None:
    lin = nn.Linear(128, 40)
    ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, group_size=32, symmetric=False, rank=8,
                                 smooth=torch.rand(128) + 0.5, hadamard_block=64, activation="gelu_tanh",
                                 bias_align=True)
    with torch.no_grad():
        ql.bias_align.copy_(torch.randn(40))
    path = tmp_path / "layer.safetensors"
    save_file({f"blk.fc.{k}": v.contiguous() for k, v in ql.state_dict().items()}, str(path))
    state = load_file(str(path))
    back = QuantLinear.from_state_dict(state, prefix="blk.fc.")
    assert back.extra_repr() == ql.extra_repr()
    x = torch.randn(5, 128)
    assert torch.equal(back(x), ql(x))
    # a layer built with the same config loads it too; a different config is refused clearly
    same = QuantLinear(128, 40, w_bits=4, a_bits=4, group_size=32, symmetric=False, rank=8, smooth=True,
                       hadamard_block=64, activation="gelu_tanh", bias_align=True)
    same.load_state_dict({k[len("blk.fc."):]: v for k, v in state.items()})
    assert torch.equal(same(x), ql(x))
    other = QuantLinear(128, 40, w_bits=4, a_bits=4, group_size=64, symmetric=False, rank=8, smooth=True,
                        hadamard_block=64, activation="gelu_tanh", bias_align=True)
    with pytest.raises(RuntimeError, match="from_state_dict"):
        other.load_state_dict(back.state_dict())


def test_bias_align_is_learnable_through_the_reference_path() -> None:
    ql = QuantLinear.from_linear(nn.Linear(64, 8), bits=4, act_bits=4, bias_align=True)
    ql.bias_align.requires_grad_(True)
    ql(torch.randn(4, 64)).sum().backward()
    assert torch.equal(ql.bias_align.grad, torch.full((8,), 4.0))


def test_gate_and_residual() -> None:
    ql = QuantLinear.from_linear(nn.Linear(64, 16), bits=4, act_bits=4)
    x, g, r = torch.randn(2, 3, 64), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    assert torch.allclose(ql(x, gate=g, residual=r), ql(x) * g + r, atol=1e-6)


def test_dtype_casts_keep_numerics_buffers() -> None:
    ql = QuantLinear.from_linear(nn.Linear(64, 16), bits=4, act_bits=4, rank=4, smooth=torch.rand(64) + 0.5)
    before = ql(torch.randn(2, 64))
    ql = ql.to(torch.bfloat16)
    assert ql.wscale.dtype == torch.float16 and ql.smooth.dtype == torch.float32
    assert ql.bias.dtype == torch.float32 and ql.lora_down.dtype == torch.bfloat16
    assert ql.qweight.dtype == torch.uint8 and before.shape == (2, 16)
    assert ql(torch.randn(2, 64).to(torch.bfloat16)).dtype == torch.bfloat16


def test_backend_selection_on_cpu() -> None:
    ql = QuantLinear.from_linear(nn.Linear(64, 16))
    x = torch.randn(2, 64)
    ql.backend = "triton"  # no CUDA and no interpreter in this process
    with pytest.raises(RuntimeError, match="triton"):
        ql(x)
    ql.backend = "bogus"
    with pytest.raises(ValueError):
        ql(x)
    ql.backend = "auto"
    assert ql(x).shape == (2, 16)
    with pytest.raises(ValueError):
        ql(torch.randn(2, 63))


@pytest.mark.parametrize(
    "kwargs",
    [dict(w_bits=8, symmetric=False), dict(group_size=48), dict(hadamard_block=48), dict(rank=200),
     dict(activation="relu"), dict(w_bits=1)],
)
def test_constructor_validates(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        QuantLinear(128, 256, **kwargs)


def test_set_quantized_weight_validates() -> None:
    ql = QuantLinear(64, 8)
    with pytest.raises(ValueError):
        ql.set_quantized_weight(torch.zeros(8, 32, dtype=torch.int8), torch.ones(8, 1))
    with pytest.raises(ValueError):
        ql.set_quantized_weight(torch.zeros(8, 64, dtype=torch.int8), torch.ones(8, 1), torch.zeros(8, 1))


# ----------------------------------------------------------------------------- DRAQ act_clip


def test_act_clip_forward_is_clipped_fake_quant() -> None:
    lin = nn.Linear(256, 64)
    sm = torch.rand(256) + 0.5
    ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, group_size=64, smooth=sm, act_clip=0.75)
    assert ql.act_clip.dtype == torch.float32 and ql.act_clip.shape == (1,)
    assert float(ql.act_clip) == 0.75 and "act_clip=0.75" in ql.extra_repr()
    x = torch.distributions.StudentT(3.0).sample((21, 256))
    xh = transform_input(x, ql.smooth, ql.hadamard_block)
    want = fake_quant_activation(xh, 4, 64, clip_ratio=0.75).double() @ ql.dequantized_weight().double().T
    want = want + ql.bias.double()
    assert _rel(ql(x), want) < 1e-5
    # the cached Python value follows in-place writes of the buffer
    unclipped = QuantLinear.from_linear(lin, bits=4, act_bits=4, group_size=64, smooth=sm)
    with torch.no_grad():
        ql.act_clip.fill_(1.0)
    assert torch.equal(ql(x), unclipped(x))
    ql.set_act_clip(0.6)
    assert not torch.equal(ql(x), unclipped(x)) and float(ql.act_clip) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        ql.set_act_clip(0.0)
    with pytest.raises(ValueError):
        QuantLinear(64, 8, act_clip=1.5)
    assert ql.to(torch.bfloat16).act_clip.dtype == torch.float32


def test_act_clip_state_dict_round_trip(tmp_path: Path) -> None:
    ql = QuantLinear.from_linear(nn.Linear(128, 40), bits=4, act_bits=4, group_size=32, symmetric=False,
                                 act_clip=0.85)
    state = ql.state_dict()
    assert state["act_clip"].dtype == torch.float32 and float(state["act_clip"]) == pytest.approx(0.85)
    assert state["qmeta"].tolist()[0] == 1 and state["qmeta"].numel() == 14  # config vector unchanged
    path = tmp_path / "layer.safetensors"
    save_file({f"m.{k}": v.contiguous() for k, v in state.items()}, str(path))
    back = QuantLinear.from_state_dict(load_file(str(path)), prefix="m.")
    assert torch.equal(back.act_clip, ql.act_clip)
    x = torch.distributions.StudentT(3.0).sample((9, 128))
    assert torch.equal(back(x), ql(x))
    bad = dict(state, act_clip=torch.tensor([1.5]))
    with pytest.raises(RuntimeError, match="act_clip"):
        QuantLinear.from_state_dict(bad)


def test_state_dict_without_act_clip_loads_as_unclipped() -> None:
    # a checkpoint written before act_clip existed: same qmeta, no act_clip key
    lin = nn.Linear(128, 40)
    old = {k: v for k, v in QuantLinear.from_linear(lin, bits=4, act_bits=4).state_dict().items() if k != "act_clip"}
    back = QuantLinear.from_state_dict(old)
    assert float(back.act_clip) == 1.0
    x = torch.randn(6, 128)
    assert torch.equal(back(x), QuantLinear.from_linear(lin, bits=4, act_bits=4)(x))
    # loading it (strict) into a clipped layer resets the ratio to 1, the numerics it was written with
    clipped = QuantLinear.from_linear(lin, bits=4, act_bits=4, act_clip=0.7)
    clipped(x)  # fills the cached value
    clipped.load_state_dict(old)
    assert float(clipped.act_clip) == 1.0 and torch.equal(clipped(x), back(x))
    res = clipped.load_state_dict({k: v for k, v in old.items() if k != "bias"}, strict=False)
    assert res.missing_keys == ["bias"]
