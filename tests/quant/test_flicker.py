"""Flicker sensitivity (vsrq/quant/flicker.py) and the recipe option that raises activation bits."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.support import random_model
from vsrq.errors import VsrqError
from vsrq.quant.engine import quantize_model
from vsrq.quant.flicker import (act_budget_bits, activation_stats, error_flicker, plan_flicker_precision,
                                perturbation_sensitivity, static_clip, with_act_bits)
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import PRESETS, Recipe


class Branches(nn.Module):
    """(1, 3, T, H, W) -> same shape: a fixed lift to 8 channels, then three linear branches whose
    outputs are summed with gains (1, 1, 40): the third branch's rounding flips are amplified 40x,
    so it is the fragile one although all three see the same input."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("lift", torch.randn(3, 8, generator=g))
        self.a, self.b, self.c = (nn.Linear(8, 3) for _ in range(3))
        self.register_buffer("gains", torch.tensor([1.0, 1.0, 40.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 4, 1) @ self.lift
        y = sum(g * layer(t) for g, layer in zip(self.gains, (self.a, self.b, self.c)))
        return y.permute(0, 4, 1, 2, 3)


def _toy() -> tuple[Branches, list[torch.Tensor]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return Branches().eval(), [torch.rand(1, 3, 4, 12, 12, generator=g) for _ in range(2)]


def _factory(bits: int):
    return lambda layer: (QuantLinear.from_linear(layer, 4, bits), float(bits))


def test_the_fragile_layer_is_ranked_first_and_raised_alone():
    model, clips = _toy()
    low, high = _factory(4), _factory(8)
    names = ["a", "b", "c"]
    get = model.get_submodule
    # budget for exactly one of three equal layers: average act bits 4 + 4/3
    raised, sens = plan_flicker_precision(model, names, lambda n: low(get(n)), lambda n: high(get(n)), clips,
                                          act_budget_bits(1 / 3, 4, 8, 24, 24))
    ranked = sorted(sens, key=lambda s: s.gain_per_bit, reverse=True)
    assert ranked[0].name == "c" and raised == {"c"}
    assert all(s.err_high < s.err_low for s in sens)  # 8-bit activations flicker less in every branch
    assert ranked[0].err_low > 100 * ranked[-1].err_low  # 40x gain -> 1600x the squared flicker
    assert all(isinstance(get(n), nn.Linear) for n in names)  # the float model is left as it was


def test_with_act_bits_changes_only_the_activations():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(256, 64)
    q = QuantLinear.from_linear(lin, 4, 4, smooth=torch.rand(64) + 0.5, hadamard_block=64, bias_align=True, act_clip=0.8)
    h = with_act_bits(q, 8)
    assert (h.w_bits, h.a_bits, float(h.act_clip[0])) == (4, 8, 1.0)
    for key in ("qweight", "wscale", "smooth", "bias"):
        assert torch.equal(getattr(h, key), getattr(q, key))
    with torch.no_grad():
        ref = lin(x)
    assert float((h(x) - ref).pow(2).mean()) < float((q(x) - ref).pow(2).mean())
    # round-trips like any checkpointed layer
    again = QuantLinear.from_state_dict(h.state_dict())
    assert torch.equal(again(x), h(x))


def test_error_flicker_ignores_the_static_error():
    ref = torch.rand(1, 3, 5, 8, 8)
    assert error_flicker(ref + 0.1, ref) < 1e-12  # float rounding of the added constant only
    g = torch.Generator().manual_seed(0)
    noisy = ref + 0.01 * torch.randn(ref.shape, generator=g)
    assert error_flicker(noisy, ref) == pytest.approx(2e-4, rel=0.2)  # var of a difference: 2 x 0.01^2


def test_static_clip_is_one_scene_with_codec_like_noise():
    clip = torch.randint(0, 256, (1, 3, 3, 10, 10)).float() / 255
    s = static_clip(clip, frames=6, noise=1.0)
    assert s.shape == (1, 3, 6, 10, 10)
    codes = s * 255
    assert torch.equal(codes, codes.round())
    moved = (codes - clip[:, :, :1] * 255).abs()
    assert float(moved.max()) <= 6 and 0.3 < float((moved > 0).float().mean()) < 0.9
    assert torch.equal(static_clip(clip, noise=0.0), clip[:, :, :1].expand(-1, -1, 3, -1, -1))


def test_a_quantized_model_jumps_under_tiny_perturbations_a_float_one_does_not():
    model, _ = _toy()
    clip = torch.rand(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    fp_mean, fp_max = perturbation_sensitivity(model, clip, eps=1e-4)
    for n in ("a", "b", "c"):
        setattr(model, n, QuantLinear.from_linear(model.get_submodule(n), 4, 4))
    q_mean, q_max = perturbation_sensitivity(model, clip, eps=1e-4)
    assert fp_max < 1e-2 and q_max > 10 * fp_max  # whole quantization steps, times the branch gain


def test_activation_stats_see_flips_when_frames_differ():
    torch.manual_seed(0)
    clip = torch.rand(1, 3, 4, 16, 16)
    res = quantize_model(random_model(), replace(PRESETS["rtn"], calib_tokens=256), [clip])
    names = [c.name for c in res.choices]
    still = activation_stats(res.model, names, static_clip(clip, noise=0.0))
    noisy = activation_stats(res.model, names, static_clip(clip, noise=2.0))
    # the first layer sees identical frames; later ones also see attention's frame positions (RoPE)
    assert still["blocks.0.attn.qkv"].flip_rate == 0.0 < noisy["blocks.0.attn.qkv"].flip_rate
    for n in names:
        assert noisy[n].flip_rate > 0.0 and 0.0 <= noisy[n].near_boundary < 0.05 and noisy[n].step > 0


def test_flicker_budget_raises_only_the_chosen_layers_activations():
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) for _ in range(2)]
    fp = random_model()
    base = replace(PRESETS["rtn"], calib_tokens=256)
    low = quantize_model(fp, base, clips)
    res = quantize_model(fp, replace(base, flicker_budget=0.3), clips)
    rep = res.report(res_recipe := replace(base, flicker_budget=0.3))
    raised = set(rep["mixed"]["flicker"]["raised"])
    assert raised and rep["recipe"]["flicker_budget"] == res_recipe.flicker_budget
    widths = {c.name: res.model.get_submodule(c.name).in_features for c in res.choices}
    for c in res.choices:
        q = res.model.get_submodule(c.name)
        assert q.w_bits == 4 and q.a_bits == (8 if c.name in raised else 4) == c.a_bits
    share = sum(widths[n] for n in raised) / sum(widths.values())
    assert share <= 0.3 + 1e-9 and rep["act_bits_8_share"] == pytest.approx(share)
    assert rep["bits_per_weight"] == pytest.approx(low.report(base)["bits_per_weight"])  # weights untouched
    # the raised layers are the ones the flicker score ranked best per activation value
    sens = {s["name"]: s for s in rep["mixed"]["flicker"]["sensitivity"]}
    gain = {n: (s["flicker_low"] - s["flicker_high"]) / widths[n] for n, s in sens.items()}
    top = max(gain, key=gain.get)
    assert top in raised or widths[top] / sum(widths.values()) > 0.3
    # and they flicker less than the all-4-bit model on the calibration scenes
    with torch.no_grad():
        st = static_clip(clips[0])
        ref = fp(st)
        assert error_flicker(res.model(st), ref) < error_flicker(low.model(st), ref)


def test_flicker_recipe_validation():
    with pytest.raises(VsrqError):
        Recipe(flicker_budget=1.5)
    with pytest.raises(VsrqError):
        Recipe(flicker_budget=0.2, flicker_bits=4)
    assert Recipe(flicker_budget=0.2).flicker_bits == 8
    for name, share in (("combo-joint-mpq-steady", 0.5), ("combo-joint-mpq-a8", 1.0)):
        assert PRESETS[name] == replace(PRESETS["combo-joint-mpq"], name=name, flicker_budget=share)


def test_flicker_comes_after_mixed_precision_and_skips_its_layers():
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g)]
    recipe = replace(PRESETS["mpq"], mixed_budget=6.0, flicker_budget=0.2, calib_tokens=256)
    res = quantize_model(random_model(), recipe, clips)
    rep = res.report(recipe)
    promoted, raised = set(rep["mixed"]["promoted"]), set(rep["mixed"]["flicker"]["raised"])
    assert promoted and not promoted & raised
    assert {s["name"] for s in rep["mixed"]["flicker"]["sensitivity"]}.isdisjoint(promoted)
    for n in promoted:
        assert res.model.get_submodule(n).w_bits == 8
