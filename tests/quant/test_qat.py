"""Quantization-aware training: the training forward is the quantized checkpoint's forward, and it learns."""

import copy

import pytest
import torch

from tests.support import random_model
from tests.train.test_trainer import ToyStore, opts
from vsrq.errors import VsrqError
from vsrq.models.loader import load_model, read_checkpoint
from vsrq.quant.engine import quantize_model
from vsrq.quant.qat import FakeQuantLinear, check_qat_recipe, prepare_qat
from vsrq.quant.recipe import PRESETS
from vsrq.train.trainer import export_weights, train


@pytest.mark.parametrize("method", ["rtn", "quarot", "rtn-w8a8"])
def test_training_forward_equals_the_quantized_checkpoints_forward(method):
    recipe = PRESETS[method]
    model = random_model(seed=1).float().eval()
    clip = torch.rand(1, 3, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    trained_view = copy.deepcopy(model)
    names = prepare_qat(trained_view, recipe)
    assert names and all(isinstance(trained_view.get_submodule(n), FakeQuantLinear) for n in names)
    quantized = quantize_model(model, recipe, [clip]).model
    with torch.no_grad():
        a, b, fp = trained_view(clip), quantized(clip), model(clip)
    err = (a - b).abs().max()
    assert err < 1e-4 * (fp - fp.mean()).abs().max(), err
    assert (a - fp).abs().max() > 20 * err  # it does quantize: far from the float model, on the checkpoint


def test_gradients_pass_straight_through_and_keys_are_unchanged():
    model = random_model(seed=2).float()
    keys = list(model.state_dict())
    prepare_qat(model, PRESETS["quarot"])
    assert list(model.state_dict()) == keys
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer runs it on the GPU
        out = model(torch.rand(1, 3, 4, 12, 16))
    out.float().square().mean().backward()
    layer = model.get_submodule("blocks.0.mlp.fc1")
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_recipes_fitted_on_calibration_data_are_refused():
    check_qat_recipe(PRESETS["rtn"])
    for method in ("combo", "smoothquant", "draq", "svdquant", "combo-joint-mpq"):
        with pytest.raises(VsrqError, match="cannot be trained through"):
            check_qat_recipe(PRESETS[method])


def test_qat_training_learns_and_exports_a_float_checkpoint_marked_with_its_recipe(tmp_path):
    logs = []
    o = opts(tmp_path, 30, qat="quarot")
    train(ToyStore(), o, log=logs.append)
    losses = [float(line.split("loss=")[1].split()[0]) for line in logs]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    out = tmp_path / "qat.safetensors"
    export_weights(o.run_dir, out)
    _, meta = read_checkpoint(out)
    assert meta["vsrq.qat"] == "quarot"
    assert load_model(str(out)).precision == "fp16"


def test_every_recipe_field_is_classified_for_qat():
    # a new Recipe field must be either fitted on data (refused by QAT) or numerics QAT reproduces / ignores
    import dataclasses

    from vsrq.quant.qat import _DATA_FITTED
    from vsrq.quant.recipe import Recipe

    not_fitted = {"name", "w_bits", "a_bits", "group_size", "act_group_size", "symmetric", "rotate", "keep",
                  "fold_modulation", "seed", "calib_tokens", "extra",
                  # only read when a data-fitted field above is on
                  "smooth_alpha", "rank_alloc", "lowrank_init", "refine_steps", "refine_layers", "mixed_bits", "flicker_bits"}
    fields = {f.name for f in dataclasses.fields(Recipe)}
    assert fields == set(_DATA_FITTED) | not_fitted, fields ^ (set(_DATA_FITTED) | not_fitted)
