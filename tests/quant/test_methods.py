"""Each method reduces its own objective on a toy layer; the engine is deterministic; recipes validate."""

import pytest
import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.quant.calibrate import LayerStats
from vsrq.quant.methods import allocate_ranks, layer_error, quantize_layer, search_granularity
from vsrq.quant.recipe import PRESETS, Recipe, load_recipe


def toy_layer(k: int = 128, n: int = 96, outliers: bool = True, seed: int = 0):
    """A linear layer and inputs whose few channels are 30x larger than the rest (as in DiT activations)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    x = torch.randn(2048, k, generator=g)
    if outliers:
        x[:, :4] *= 30
    x += 0.5  # a non-zero mean: quantization error gets a biased part
    st = LayerStats("toy", k)
    st.samples.append(x)
    st.tokens = len(x)
    st.chan_absmax = x.abs().amax(0)
    st.sum, st.sumsq = x.sum(0), (x * x).sum(0)
    return lin, st


def mse_of(recipe: Recipe, lin, st, group_size=None, rank=0) -> float:
    q, _ = quantize_layer(lin, st, recipe, group_size=group_size, rank=rank)
    return layer_error(lin, q, st.x)[0]


def test_smoothquant_beats_rtn_on_outlier_channels():
    lin, st = toy_layer()
    assert mse_of(PRESETS["smoothquant"], lin, st) < 0.7 * mse_of(PRESETS["rtn"], lin, st)


def test_hadamard_rotation_spreads_outliers():
    lin, st = toy_layer()
    assert mse_of(PRESETS["quarot"], lin, st) < 0.7 * mse_of(PRESETS["rtn"], lin, st)


def test_lowrank_branch_reduces_error_and_grows_with_rank():
    lin, st = toy_layer(outliers=False)
    e0 = mse_of(PRESETS["rtn"], lin, st)
    e8 = mse_of(PRESETS["rtn"], lin, st, rank=8)
    e32 = mse_of(PRESETS["rtn"], lin, st, rank=32)
    assert e32 < e8 < e0


def test_error_initialised_lowrank_beats_plain_rtn():
    lin, st = toy_layer(outliers=False)
    assert mse_of(PRESETS["mpq-lowrank"], lin, st, rank=16) < mse_of(PRESETS["rtn"], lin, st)


def test_bias_alignment_removes_the_mean_error():
    lin, st = toy_layer()
    plain, _ = quantize_layer(lin, st, PRESETS["rtn"], group_size=None, rank=0)
    aligned, _ = quantize_layer(lin, st, PRESETS["lba"], group_size=None, rank=0)
    with torch.no_grad():
        ref = lin(st.x)
        mean_plain = (ref - plain(st.x)).mean(0).abs().mean()
        mean_aligned = (ref - aligned(st.x)).mean(0).abs().mean()
    assert mean_aligned < 0.05 * mean_plain
    assert layer_error(lin, aligned, st.x)[0] < layer_error(lin, plain, st.x)[0]


def test_granularity_search_improves_within_budget():
    lins, stats = {}, {}
    for i in range(3):
        lins[f"l{i}"], stats[f"l{i}"] = toy_layer(seed=i, outliers=i == 0)
    choice = search_granularity(lins, stats, PRESETS["qdit"], budget_extra_bits=0.2)
    assert any(g is not None for g in choice.values())
    extra = sum(16 * lins[n].out_features * (lins[n].in_features // g - 1) for n, g in choice.items() if g)
    assert extra <= 0.2 * sum(l.weight.numel() for l in lins.values())
    for n, g in choice.items():
        if g is not None:
            assert mse_of(PRESETS["rtn"], lins[n], stats[n], group_size=g) <= mse_of(PRESETS["rtn"], lins[n], stats[n])


def test_stca_gives_complex_layers_more_rank():
    lins, stats = {}, {}
    for i, (sp, tm) in enumerate([(0.1, 0.0), (0.5, 0.3), (1.0, 1.0)]):
        lins[f"l{i}"], stats[f"l{i}"] = toy_layer(seed=i)
        stats[f"l{i}"].spatial.append(sp)
        stats[f"l{i}"].temporal.append(tm)
    ranks = allocate_ranks(list(lins), stats, PRESETS["stca"], lins)
    assert ranks["l0"] < ranks["l1"] < ranks["l2"]
    assert abs(sum(ranks.values()) - 16 * 3) <= 8


def test_recipes_validate_and_load_from_toml(tmp_path):
    with pytest.raises(VsrqError):
        Recipe(smooth="sometimes")
    with pytest.raises(VsrqError):
        Recipe(w_bits=1)
    f = tmp_path / "mine.toml"
    f.write_text('base = "svdquant"\nrank = 8\nbias_align = "mean"\n')
    r = load_recipe(str(f))
    assert (r.name, r.rank, r.smooth, r.bias_align) == ("mine", 8, "search", "mean")
    f.write_text('base = "svdquant"\nrnak = 8\n')
    with pytest.raises(VsrqError, match="unknown recipe keys"):
        load_recipe(str(f))
    with pytest.raises(VsrqError, match="unknown method"):
        load_recipe("no-such-method")


def test_draq_clip_lowers_error_on_heavy_tailed_tokens():
    torch.manual_seed(0)
    lin, st = toy_layer(outliers=False)
    heavy = torch.distributions.StudentT(2.0).sample(st.x.shape)
    st.samples = [heavy]
    st.chan_absmax = heavy.abs().amax(0)
    q, choice = quantize_layer(lin, st, PRESETS["draq"], group_size=None, rank=0)
    assert choice.act_clip < 1.0
    assert layer_error(lin, q, heavy)[0] < mse_of(PRESETS["rtn"], lin, st)


def test_div_by_int_is_a_true_division():
    """Activation scales must equal the kernels' IEEE division, not a multiply by a rounded 1/d."""
    from vsrq.quant.pack import div_by_int

    x = torch.linspace(0.01, 50.0, 20001, dtype=torch.float32)
    for d in (7, 127, 3):
        exact = (x.double() / d).float()
        assert torch.equal(div_by_int(x, d), exact)
    assert not torch.equal(x * (1.0 / 7), (x.double() / 7).float())  # the shortcut is really different
