"""MPQ-DMv2-style binary residual branch: packing, fitting, QuantLinear numerics, checkpoint, bits."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.quant.test_methods import toy_layer
from tests.support import TINY, random_model
from vsrq.errors import VsrqError
from vsrq.kernels.reference import gelu_tanh, transform_input
from vsrq.models.loader import load_model
from vsrq.quant.binres import binary_k_for, binary_residual, branch_bits, quantize_weight_clipped
from vsrq.quant.checkpoint import save_quantized
from vsrq.quant.engine import quantize_model
from vsrq.quant.methods import bits_per_weight, layer_error, quantize_layer
from vsrq.quant.pack import pack_bits, quantize_weight, unpack_bits
from vsrq.quant.qat import check_qat_recipe
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import PRESETS, Recipe


def _layer_with_branch(k=96, n=40, binary_k=3, seed=0, **kw) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
    q = QuantLinear.from_linear(lin, binary_k=binary_k, **kw)
    idx = torch.stack([torch.randperm(k, generator=g)[:binary_k].sort().values for _ in range(n)])
    q.set_binary_residual(idx, torch.rand(n, binary_k, generator=g) < 0.5, torch.rand(n, generator=g) * 0.05)
    return q


def test_bits_pack_round_trip_and_layout():
    g = torch.Generator().manual_seed(0)
    for count in (1, 7, 8, 9, 100, 1001):
        b = torch.rand(count, generator=g) < 0.5
        p = pack_bits(b)
        assert p.dtype == torch.uint8 and p.numel() == (count + 7) // 8  # 1 bit per value
        assert torch.equal(unpack_bits(p, count), b)
    # least significant bit first; the last byte is zero-padded
    assert pack_bits(torch.tensor([True, False, False, False, False, False, False, False, False, True])).tolist() == [1, 2]
    with pytest.raises(ValueError):
        unpack_bits(pack_bits(torch.ones(3, dtype=torch.bool)), 9)


def test_binary_branch_lowers_the_residual_by_its_least_squares_amount():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(16, 96, generator=g)
    idx, pos, scale = binary_residual(r, 4)
    assert (idx[:, 1:] > idx[:, :-1]).all()  # ascending per row: the storage order
    top = r.abs().topk(4, dim=1).values
    assert torch.allclose(scale.float(), top.mean(1), rtol=1e-3)
    d = torch.zeros_like(r).scatter_(1, idx, torch.where(pos, scale.float()[:, None], -scale.float()[:, None]))
    before, after = (r**2).sum(1), ((r - d) ** 2).sum(1)
    assert torch.allclose(before - after, 4 * scale.float() ** 2, rtol=1e-2)  # k a^2 per row, up to fp16 rounding


def test_clipped_weight_quantizer():
    w = torch.randn(8, 64)
    assert all(torch.equal(a, b) for a, b in zip(quantize_weight_clipped(w, 4, None, True, torch.float16, 1.0)[:2],
                                                 quantize_weight(w, 4, None, True, torch.float16)[:2]))
    q, s, _ = quantize_weight_clipped(w, 4, 32, True, torch.float16, 0.5)
    assert torch.allclose(s.float(), (w.reshape(8, 2, 32).abs().amax(-1) * 0.5 / 7).half().float())
    assert int(q.abs().max()) <= 8


def test_binary_branch_reduces_the_layer_error_on_a_toy_layer():
    lin, st = toy_layer(k=96, n=96, outliers=False)
    with torch.no_grad():
        lin.weight[::5, 7] *= 8  # salient weights: a few per row set the row's 4-bit step
    q0, c0 = quantize_layer(lin, st, PRESETS["rtn"], group_size=None, rank=0)
    q1, c1 = quantize_layer(lin, st, PRESETS["mpq-binary"], group_size=None, rank=0)
    assert c1.binary_k == binary_k_for(0.02, 96) == 2 and c0.binary_k == 0
    assert layer_error(lin, q1, st.x)[0] < 0.9 * layer_error(lin, q0, st.x)[0]
    assert c1.weight_clip < 1.0  # the branch let the grid clip the salient weights


def test_bits_per_weight_counts_the_branch_exactly():
    q = _layer_with_branch(k=96, n=40, binary_k=3)
    # 4-bit values + fp16 row scales + (8-bit index + 1 sign bit) per entry + an fp16 scale per row
    assert branch_bits(q) == 40 * 3 * 9 + 40 * 16
    assert bits_per_weight(q) == pytest.approx((40 * 96 * 4 + 40 * 16 + 40 * 3 * 9 + 40 * 16) / (40 * 96))
    wide = _layer_with_branch(k=384, n=8, binary_k=2)
    assert wide.bin_idx.dtype == torch.int16 and branch_bits(wide) == 8 * 2 * 17 + 8 * 16
    assert q.weight_bytes() == (40 * 48 + 40 * 2) + (40 * 3 + 15 + 40 * 2)  # packed signs: ceil(120 / 8) bytes


@pytest.mark.parametrize("kw", [{}, {"hadamard_block": 32, "smooth": torch.rand(96) + 0.5, "rank": 4}])
def test_forward_adds_x_hat_times_the_binary_matrix_before_the_epilogue(kw):
    q = _layer_with_branch(activation="gelu_tanh", **kw)
    d = q.binary_weight()
    assert (d != 0).sum(1).le(3).all() and d.shape == (40, 96)
    cfg = QuantLinear.config_from_meta(q.qmeta) | {"binary_k": 0, "activation": None}
    plain = QuantLinear(cfg.pop("in_features"), cfg.pop("out_features"), **cfg)  # the same layer without branch and gelu
    plain.load_state_dict({k: v for k, v in q.state_dict().items() if not k.startswith("bin_") and k != "qmeta"}, strict=False)
    x, gate, res = torch.randn(5, 7, 96), torch.rand(5, 7, 40), torch.randn(5, 7, 40)
    with torch.no_grad():
        main = plain(x)
        ref = gelu_tanh(main.float() + transform_input(x.reshape(-1, 96), q.smooth, q.hadamard_block).reshape(5, 7, 96) @ d.T)
        out = q(x, gate=gate, residual=res)
    assert torch.allclose(out, ref * gate + res, atol=1e-5)


def test_qmeta_is_unchanged_without_a_branch_and_versioned_with_one():
    plain = QuantLinear(96, 40)
    assert plain.qmeta.tolist()[0] == 1 and plain.qmeta.numel() == 14 and plain.bin_idx is None
    q = _layer_with_branch()
    assert q.qmeta.tolist()[0] == 2 and q.qmeta.tolist()[-1] == 3
    assert QuantLinear.config_from_meta(q.qmeta)["binary_k"] == 3
    again = QuantLinear.from_state_dict(q.state_dict())
    x = torch.randn(9, 96)
    assert torch.equal(again(x), q(x))


def test_damaged_branch_is_refused_at_load():
    q = _layer_with_branch()
    state = q.state_dict()
    bad = dict(state, bin_idx=state["bin_idx"].clone())
    bad["bin_idx"][0, 1] = bad["bin_idx"][0, 0]  # duplicate index
    with pytest.raises(RuntimeError, match="strictly increasing"):
        QuantLinear.from_state_dict(bad)
    with pytest.raises(RuntimeError, match="finite"):
        QuantLinear.from_state_dict(dict(state, bin_scale=torch.full((40,), float("nan"), dtype=torch.float16)))
    with pytest.raises(ValueError):
        q.set_binary_residual(torch.zeros(40, 3, dtype=torch.long), torch.ones(40, 3, dtype=torch.bool), torch.ones(40))


def test_checkpoint_round_trip_gives_the_same_forward(tmp_path):
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) for _ in range(2)]
    fp = random_model()
    res = quantize_model(fp, replace(PRESETS["mpq-binary"], binary_residual=0.1, calib_tokens=256), clips)
    layers = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.binary_k == binary_k_for(0.1, m.in_features) for m in layers)
    rep = res.report(PRESETS["mpq-binary"])
    assert rep["layers"][0]["binary_k"] == layers[0].binary_k
    path = tmp_path / "q.safetensors"
    save_quantized(res.model, path, arch="vsrq-dit", config=TINY.to_dict(), precision="w4a4", report=rep,
                   float_dtype=torch.float32)  # float layers as they are: the comparison is exact
    loaded = load_model(str(path)).module
    for name, m in res.model.named_modules():
        if isinstance(m, QuantLinear):
            other = loaded.get_submodule(name)
            assert other.binary_k == m.binary_k and torch.equal(other.bin_sign, m.bin_sign)
    x = torch.rand(1, 3, 4, 16, 16, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))


def test_binary_branch_lowers_the_model_error():
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) for _ in range(2)]
    fp = random_model()

    def err(recipe: Recipe) -> float:
        res = quantize_model(fp, replace(recipe, calib_tokens=256), clips)
        with torch.no_grad():
            return sum(float(((res.model(c) - fp(c)) ** 2).mean()) for c in clips)

    assert err(replace(PRESETS["mpq-binary"], binary_residual=0.1)) < err(PRESETS["rtn"])


def test_recipe_validation_of_binary_residual():
    assert Recipe(binary_residual=0.25).binary_residual == 0.25
    for bad in (-0.1, 0.3, True, "0.1"):
        with pytest.raises(VsrqError, match="binary_residual"):
            Recipe(binary_residual=bad)
    with pytest.raises(VsrqError, match="refinement"):
        replace(PRESETS["joint"], binary_residual=0.02)
    with pytest.raises(VsrqError, match="binary_residual"):
        check_qat_recipe(PRESETS["mpq-binary"])
