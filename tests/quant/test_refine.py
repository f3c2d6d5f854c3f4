"""Gradient refinement (vsrq.quant.refine): each method lowers its own objective, the checkpoint holds
what was trained, only quantization values change, and a seed makes it deterministic."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.quant.test_methods import toy_layer
from tests.support import random_model
from vsrq.quant.engine import quantize_model
from vsrq.quant.methods import layer_error, quantize_layer
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import PRESETS, Recipe
from vsrq.quant.refine import QuantTrainView, refine_model, volts_plan

@pytest.fixture(autouse=True)
def _one_thread():
    """The CPU is shared: one thread keeps these many small matmuls fast and the timings stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


QUANT_VALUES = {"qweight", "wscale", "wzero", "lora_down", "lora_up", "bias_align", "smooth"}


def small_toy(outliers: bool = True):
    lin, st = toy_layer(k=64, n=48, outliers=outliers)
    st.samples = [st.samples[0][:768]]
    return lin, st


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- the training view

VIEW_CASES = {
    "rtn": (PRESETS["rtn"], 0, None),
    "svdquant-residual": (PRESETS["svdquant"], 8, None),
    "mpq-anchor": (PRESETS["mpq-lowrank"], 8, None),
    "quarot": (PRESETS["quarot"], 0, None),
    "groups+lba": (replace(PRESETS["lba"], rank=4), 4, 32),
    "asymmetric": (replace(PRESETS["rtn"], symmetric=False), 0, None),
}


@pytest.mark.parametrize("case", list(VIEW_CASES))
def test_view_equals_layer_and_write_back_stores_what_it_computes(case):
    recipe, rank, group = VIEW_CASES[case]
    lin, st = small_toy()
    q, _ = quantize_layer(lin, st, recipe, group_size=group, rank=rank)
    view = QuantTrainView(q, lin.weight, scales=True, lowrank=True, bias_align=True, smooth=True)
    # it re-derives the stored integers: SVDQuant's W' - L_down L_up, or MPQ-DMv2's Q(W') with an error branch
    assert view.mode == ("residual" if rank and case != "mpq-anchor" else "anchor")
    x = st.x[:256]
    assert view.mismatch(x) < 1e-5  # same numerics as the QuantLinear before training
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every learnable value
        for p in view.trainable():
            p.add_(0.05 * torch.randn(p.shape, generator=g) * (p.abs().mean() if p.abs().sum() > 0 else 1.0))
        trained = view(x)
    before = q.qweight.clone()
    view.write_back()
    with torch.no_grad():
        assert rel(q(x).float(), trained) < 1e-5  # the checkpoint's layer computes what was trained
    assert not torch.equal(before, q.qweight)  # re-quantized and re-packed with the new steps


def test_view_follows_the_draq_activation_clip():
    if not hasattr(QuantLinear, "set_act_clip"):
        pytest.skip("QuantLinear has no DRAQ activation clip in this tree")
    lin, st = small_toy()
    q, _ = quantize_layer(lin, st, PRESETS["rtn"], group_size=None, rank=0)
    q.set_act_clip(0.8)
    assert QuantTrainView(q, lin.weight).mismatch(st.x[:256]) < 1e-5


def test_view_keeps_integers_it_cannot_rederive_fixed():
    lin, st = small_toy()
    q, _ = quantize_layer(lin, st, PRESETS["rtn"], group_size=None, rank=0)
    ints = q.int_weight().clone()
    ints[:, 0] = torch.where(ints[:, 0] > -8, ints[:, 0] - 1, ints[:, 0] + 1)  # not RTN of W any more
    q.set_quantized_weight(ints, q.wscale.clone())
    view = QuantTrainView(q, lin.weight)
    assert view.mode == "fixed" and view.mismatch(st.x[:256]) < 1e-5
    with torch.no_grad():
        view.u_scale.add_(0.1)
        trained = view(st.x[:256])
    view.write_back()
    assert torch.equal(q.int_weight(), ints)
    with torch.no_grad():
        assert rel(q(st.x[:256]).float(), trained) < 1e-5


def test_a_layer_the_view_cannot_reproduce_is_left_alone():
    lin, st = small_toy()
    recipe = replace(PRESETS["rtn"], refine="qao", refine_steps=10)
    q, _ = quantize_layer(lin, st, recipe, group_size=None, rank=0)
    q.forward = lambda x, *a, **k: QuantLinear.forward(q, x, *a, **k) * 1.01  # numerics the view does not know
    state = {k: v.clone() for k, v in q.state_dict().items()}
    summary = refine_model(nn.Sequential(lin), nn.Sequential(q), [], recipe, {"0": st})
    assert summary["units"] == [] and "does not reproduce" in summary["notes"][0]
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())


def test_view_gradients_reach_scales_lowrank_and_bias():
    lin, st = small_toy()
    q, _ = quantize_layer(lin, st, replace(PRESETS["lba"], rank=4), group_size=None, rank=4)
    view = QuantTrainView(q, lin.weight, scales=True, lowrank=True, bias_align=True)
    x = st.x[:128]
    with torch.no_grad():
        y = lin(x)
    ((view(x) - y) ** 2).mean().backward()
    for name in ("u_scale", "lora_down", "lora_up", "bias_delta"):
        grad = getattr(view, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert lin.weight.grad is None  # the float weight is frozen


# ----------------------------------------------------------------------------- QAO on a toy layer


def test_volts_picks_high_variance_layers_and_splits_steps_by_variance():
    plan = volts_plan({"a": 1.0, "b": 4.0, "c": 3.0, "d": 0.5}, 0.5, 70)
    assert plan == {"a": 0, "b": 40, "c": 30, "d": 0}
    plan = volts_plan({"a": 1.0, "b": 1.0, "c": 1.0}, 1.0, 10)
    assert sum(plan.values()) == 10 and max(plan.values()) - min(plan.values()) <= 1


@pytest.mark.parametrize("preset,rank", [("svdquant", 8), ("mpq-lowrank", 8), ("rtn", 0)])
def test_qao_lowers_the_layer_reconstruction_error(preset, rank):
    lin, st = small_toy()
    recipe = replace(PRESETS[preset], refine="qao", refine_steps=60)
    q, _ = quantize_layer(lin, st, recipe, group_size=None, rank=rank)
    before_state = {k: v.clone() for k, v in lin.state_dict().items()}
    mse0 = layer_error(lin, q, st.x)[0]
    summary = refine_model(nn.Sequential(lin), nn.Sequential(q), [], recipe, {"0": st})
    mse1 = layer_error(lin, q, st.x)[0]
    assert mse1 < 0.95 * mse0
    unit, layer = summary["units"][0], summary["layers"]["0"]
    assert unit["steps"] == 60 and not unit["reverted"]
    # the view's final loss (training numerics) equals the written-back layer's (kernel numerics)
    assert layer["loss_after"] == pytest.approx(mse1, rel=1e-4) and unit["loss_after"] == pytest.approx(mse1, rel=1e-4)
    assert all(torch.equal(v, lin.state_dict()[k]) for k, v in before_state.items())  # FP layer untouched
    assert QuantTrainView(q, lin.weight).mode != "fixed"  # stored ints are RTN of W' with the learned steps


def test_learnable_smoothing_let_is_written_back():
    lin, st = small_toy()
    recipe = replace(PRESETS["smoothquant"], refine="qao", refine_steps=40, extra={"refine_smooth": True})
    q, _ = quantize_layer(lin, st, recipe, group_size=None, rank=0)
    assert q.smooth is not None
    s0, mse0 = q.smooth.clone(), layer_error(lin, q, st.x)[0]
    refine_model(nn.Sequential(lin), nn.Sequential(q), [], recipe, {"0": st})
    assert not torch.equal(s0, q.smooth) and layer_error(lin, q, st.x)[0] < mse0


# ----------------------------------------------------------------------------- the tiny DiT


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) for _ in range(2)]
    return random_model(), clips


def run(dit, recipe: Recipe):
    fp, clips = dit
    fp_state = {k: v.clone() for k, v in fp.state_dict().items()}
    result = quantize_model(fp, replace(recipe, calib_tokens=256), clips)
    assert all(torch.equal(v, fp.state_dict()[k]) for k, v in fp_state.items())  # the FP model is untouched
    return result


def model_mse(dit, model) -> float:
    fp, clips = dit
    with torch.no_grad():
        return sum(float(((model(c) - fp(c)) ** 2).mean()) for c in clips) / len(clips)


def only_quant_values_changed(refined: nn.Module, plain: nn.Module) -> set[str]:
    """Keys that differ between a refined model and the same recipe unrefined; all must be quantization values."""
    a, b = refined.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    qnames = {n for n, m in refined.named_modules() if isinstance(m, QuantLinear)}
    for k in changed:
        layer, _, buf = k.rpartition(".")
        assert layer in qnames and buf in QUANT_VALUES, k
    return changed


def test_qao_on_dit_trains_the_high_variance_layers(dit):
    recipe = replace(PRESETS["svdquant"], rank=4, refine="qao", refine_steps=40, refine_layers=0.5)
    result = run(dit, recipe)
    summary = result.report(recipe)["refine"]
    trained = [n for n, l in summary["layers"].items() if l["steps"]]
    assert len(trained) == 4 and sum(l["steps"] for l in summary["layers"].values()) == 40
    variances = {n: result.stats[n].variance for n in summary["layers"]}
    assert min(variances[n] for n in trained) >= max(v for n, v in variances.items() if n not in trained)
    for n in trained:
        assert summary["layers"][n]["loss_after"] < summary["layers"][n]["loss_before"]
    plain = run(dit, replace(recipe, refine=None))
    changed = only_quant_values_changed(result.model, plain.model)
    assert {k.rpartition(".")[0] for k in changed} <= set(trained)


def test_joint_lowers_block_reconstruction_with_lba(dit):
    recipe = replace(PRESETS["svdquant"], rank=4, refine="joint", bias_align="learn", refine_steps=30)
    result = run(dit, recipe)
    units = result.refine["units"]
    assert [u["unit"] for u in units] == ["blocks.0", "blocks.1"] and all(u["kind"] == "block" for u in units)
    assert all(u["loss_after"] <= u["loss_before"] for u in units)
    assert sum(u["loss_after"] for u in units) < sum(u["loss_before"] for u in units)
    plain = run(dit, replace(recipe, refine=None, bias_align="mean"))  # the same starting point
    changed = only_quant_values_changed(result.model, plain.model)
    assert any(k.endswith("lora_up") for k in changed) and any(k.endswith("bias_align") for k in changed)


def test_lbq_reversed_modules_then_end_to_end_lowers_the_image_loss(dit):
    recipe = replace(PRESETS["rtn"], refine="lbq", refine_steps=24)
    result = run(dit, recipe)
    units = result.refine["units"]
    assert [u["unit"] for u in units] == ["blocks.1", "blocks.0", "<model>"]  # output end first
    assert [u["steps"] for u in units] == [9, 9, 6]
    assert all(u["loss_after"] <= u["loss_before"] for u in units)
    assert units[-1]["loss_after"] < units[-1]["loss_before"]
    plain = run(dit, replace(recipe, refine=None))
    assert model_mse(dit, result.model) < model_mse(dit, plain.model)
    changed = only_quant_values_changed(result.model, plain.model)
    assert {k.rpartition(".")[2] for k in changed} <= {"qweight", "wscale"}  # boundaries only


def test_learned_bias_alignment_alone_lowers_block_error(dit):
    recipe = replace(PRESETS["rtn"], bias_align="learn", refine_steps=20)
    result = run(dit, recipe)
    units = result.refine["units"]
    assert sum(u["loss_after"] for u in units) < sum(u["loss_before"] for u in units)
    plain = run(dit, replace(recipe, bias_align="mean"))
    changed = only_quant_values_changed(result.model, plain.model)
    assert changed and all(k.endswith("bias_align") for k in changed)


def test_refinement_is_deterministic_with_a_seed(dit):
    recipe = replace(PRESETS["svdquant"], rank=4, refine="joint", bias_align="learn", refine_steps=10, seed=3)
    a, b = run(dit, recipe).model.state_dict(), run(dit, recipe).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
