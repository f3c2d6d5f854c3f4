"""ViDiT-Q's static-dynamic channel balancing on a one-timestep model (docs/QUANT.md)."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.support import random_model
from vsrq.errors import VsrqError
from vsrq.kernels.reference import hadamard_matrix, hadamard_scale, transform_input
from vsrq.quant.calibrate import LayerStats, calibrate, target_layers
from vsrq.quant.methods import hadamard_block_for, layer_error, quantize_layer
from vsrq.quant.pack import fake_quant_activation, fake_quant_weight
from vsrq.quant.qat import check_qat_recipe
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import PRESETS, Recipe


def clip_layer(spike: float, clips: int = 8, k: int = 96, n: int = 96, seed: int = 0) -> tuple[nn.Linear, LayerStats]:
    """A layer whose inputs share a channel imbalance in every clip (channels 0-3, 10x) and have a
    clip-specific one (a channel `spike`x larger in the first two clips only)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        lin.bias.zero_()
    st = LayerStats("toy", k)
    for c in range(clips):
        x = torch.randn(256, k, generator=g)
        x[:, :4] *= 10
        if c < 2:
            x[:, 10 + c] *= spike
        st.samples.append(x)
        st.chan_absmax_clips.append(x.abs().amax(0))
    x = st.x
    st.tokens, st.chan_absmax = len(x), x.abs().amax(0)
    st.sum, st.sumsq = x.sum(0), (x * x).sum(0)
    return lin, st


def vidit_q_reference(lin: nn.Linear, act_max: torch.Tensor, alpha_v: float, x: torch.Tensor, block: int) -> torch.Tensor:
    """ViDiT-Q's channel balancing, written from its description: a static per-channel mask
    m = max|W_j|^alpha / max|X_j|^(1 - alpha) from calibration maxima over all timesteps (here:
    clips), x * m and W / m, then the Hadamard rotation of both; our quantizers on the result."""
    w = lin.weight.detach().float()
    mask = w.abs().amax(0) ** alpha_v / act_max ** (1 - alpha_v)
    h = hadamard_matrix(block) * hadamard_scale(block)
    k = w.shape[1]
    xr = ((x * mask).reshape(-1, k // block, block) @ h).reshape(-1, k)
    wr = ((w / mask).reshape(-1, k // block, block) @ h).reshape(w.shape[0], k)
    return fake_quant_activation(xr, 4) @ fake_quant_weight(wr, 4, scale_dtype=torch.float16).T + lin.bias.detach()


@pytest.mark.parametrize("alpha_v", [0.3, 0.5, 0.7])
def test_vidit_q_balancing_is_smoothing_then_rotation_on_one_timestep(alpha_v):
    """On a one-timestep model ViDiT-Q's static scale (calibrated over all timesteps) followed by the
    dynamic rotation is our `smooth` + `rotate` with alpha = 1 - ViDiT-Q's alpha: same transform."""
    lin, st = clip_layer(spike=20)
    recipe = replace(PRESETS["rtn"], smooth="fixed", smooth_alpha=1 - alpha_v, rotate=True)
    q, choice = quantize_layer(lin, st, recipe, group_size=None, rank=0)
    block = hadamard_block_for(96)
    assert q.hadamard_block == block == 32 and choice.smooth_stat == "max"
    act_max = torch.stack(st.chan_absmax_clips).amax(0)  # the max over "timesteps" (clips)
    mask = lin.weight.detach().abs().amax(0) ** alpha_v / act_max ** (1 - alpha_v)
    assert torch.allclose(q.smooth, 1 / mask, rtol=1e-5)
    x = st.x[:512]
    h = hadamard_matrix(block) * hadamard_scale(block)
    assert torch.allclose(transform_input(x, q.smooth, block), ((x * mask).reshape(-1, 3, 32) @ h).reshape(-1, 96), atol=1e-4)
    ref = vidit_q_reference(lin, act_max, alpha_v, x, block)
    with torch.no_grad():
        out = q(x)
    assert ((out - ref) ** 2).mean() < 1e-6 * (ref**2).mean()


def test_static_dynamic_balancing_never_loses_and_wins_on_moderate_clip_peaks():
    for spike in (5.0, 50.0):
        lin, st = clip_layer(spike)
        q0, c0 = quantize_layer(lin, st, PRESETS["vidit-q"], group_size=None, rank=0)
        q1, c1 = quantize_layer(lin, st, PRESETS["vidit-balance"], group_size=None, rank=0)
        e0, e1 = layer_error(lin, q0, st.x)[0], layer_error(lin, q1, st.x)[0]
        assert e1 <= e0 and c1.smooth_stat in ("max", "static")
        if spike == 5.0:  # a peak two clips show: the clips' shared range is the better static scale
            assert c1.smooth_stat == "static" and e1 < 0.99 * e0
    assert PRESETS["vidit-q"].rotate and PRESETS["vidit-balance"].balance == "static-dynamic"


def test_static_part_is_the_median_over_clips_of_the_clip_ranges():
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 4, 16, 16, generator=g) * (i + 1) for i in range(3)]
    model = random_model()
    names = target_layers(model, PRESETS["rtn"].keep)
    stats, _ = calibrate(model, names, clips, 64)
    for st in stats.values():
        per_clip = torch.stack(st.chan_absmax_clips)
        assert per_clip.shape[0] == 3 and torch.equal(per_clip.amax(0), st.chan_absmax)
        assert torch.allclose(st.static_absmax(), per_clip.median(0).values)
    assert LayerStats("empty", 4).static_absmax() is None


def test_balance_validation():
    with pytest.raises(VsrqError, match="smooth"):
        Recipe(balance="static-dynamic", rotate=True)
    with pytest.raises(VsrqError, match="rotate"):
        Recipe(balance="static-dynamic", smooth="search")
    with pytest.raises(VsrqError, match="balance"):
        Recipe(balance="dynamic", smooth="search", rotate=True)
    with pytest.raises(VsrqError, match="balance"):
        check_qat_recipe(replace(PRESETS["quarot"], smooth="fixed", balance="static-dynamic"))
    assert isinstance(quantize_layer(*clip_layer(5.0), PRESETS["vidit-balance"], group_size=None, rank=0)[0], QuantLinear)
