from dataclasses import replace

import pytest
import torch

from tests.support import random_model
from vsrq.errors import VsrqError
from vsrq.quant.engine import quantize_model
from vsrq.quant.mixed import LayerSensitivity, allocate_bits
from vsrq.quant.recipe import PRESETS, Recipe


def _s(name, params, err_low, err_high):
    return LayerSensitivity(name, params, err_low, err_high, 4.0, 8.0)


def test_allocation_respects_the_budget_and_prefers_error_per_bit():
    sens = [_s("big", 1000, 10.0, 0.0), _s("small", 100, 5.0, 0.0), _s("useless", 100, 1.0, 1.0)]
    # 'small' removes 5 per 400 extra bits, 'big' 10 per 4000: 'small' first
    assert allocate_bits(sens, 4.0) == set()
    assert allocate_bits(sens, 4.4) == {"small"}  # 4 + 400/1200 = 4.33; adding big would be 7.67
    assert allocate_bits(sens, 8.0) == {"small", "big"}  # 'useless' gains nothing, never promoted


def test_mixed_recipe_validation():
    with pytest.raises(VsrqError):
        Recipe(mixed_budget=3.5)  # below w_bits
    with pytest.raises(VsrqError):
        Recipe(mixed_budget=5.0, mixed_bits=4)


def test_mixed_precision_lowers_model_error_within_budget():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) for _ in range(2)]
    fp = random_model()

    def error(recipe: Recipe) -> tuple[float, dict]:
        res = quantize_model(fp, replace(recipe, calib_tokens=256), clips)
        with torch.no_grad():
            mse = sum(float(((res.model(c) - fp(c)) ** 2).mean()) for c in clips) / len(clips)
        return mse, res.report(recipe)

    low, low_rep = error(PRESETS["rtn"])
    # width 24: the per-channel scales alone add 0.67 bits/weight, so the budget is set above that
    mixed, rep = error(replace(PRESETS["mpq"], mixed_budget=6.0))
    assert rep["mixed"]["promoted"] and rep["bits_per_weight"] <= 6.0 + 1e-6
    assert low_rep["bits_per_weight"] < rep["bits_per_weight"]
    assert mixed < low
