"""Folding the constant adaLN modulation: same outputs, smaller files, and both forms load."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support import TINY, random_checkpoint, random_model
from vsrq.errors import ModelError
from vsrq.models.dit import DiTConfig, VSRDiT, state_is_folded
from vsrq.models.loader import fold_checkpoint, load_model, read_checkpoint, save_checkpoint
from vsrq.quant.checkpoint import set_module
from vsrq.quant.qlinear import QuantLinear

CONV = DiTConfig(**{**TINY.to_dict(), "local_conv": (3, 3, 3)})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("config", [TINY, CONV])
def test_folded_model_computes_what_the_unfolded_one_does(config):
    model = random_model(config)
    folded = copy.deepcopy(model).fold_modulation_()
    one, two = torch.rand(1, 3, 3, 10, 14), torch.rand(2, 3, 5, 13, 21)
    with torch.no_grad():
        # one clip: the fold repeats the forward's own float32 arithmetic, so bit for bit
        assert torch.equal(folded(one), model(one))
        assert rel_err(folded(two), model(two)) < 1e-6
    assert folded.folded and not model.folded
    keys = folded.state_dict().keys()
    assert not [k for k in keys if "adaln" in k or "t_embed" in k]
    assert {k for k in keys if "modulation" in k} == {f"blocks.{i}.modulation" for i in range(config.depth)} | {"modulation_out"}
    assert folded.blocks[0].modulation.shape == (6 * config.dim,) and folded.modulation_out.shape == (2 * config.dim,)
    assert state_is_folded(keys) and not state_is_folded(model.state_dict().keys())
    assert folded.fold_modulation_() is folded  # folding twice is a no-op


def test_fold_keeps_the_model_dtype_and_an_untrained_model_stays_the_upsampler():
    fresh = VSRDiT(TINY).eval()
    x = torch.rand(1, 3, 2, 8, 8)
    with torch.no_grad():
        ref = fresh(x)
        torch.testing.assert_close(copy.deepcopy(fresh).fold_modulation_()(x), ref)
    half = copy.deepcopy(fresh).half().fold_modulation_()
    assert half.blocks[1].modulation.dtype == torch.float16 and half.modulation_out.dtype == torch.float16


def test_a_quantized_adaln_folds_to_what_it_computes():
    """A recipe with an empty `keep` quantizes adaLN when it does not fold first; folding such a model
    afterwards must store the quantized layer's output, not the float one."""
    model = random_model()
    for name in ("blocks.0.adaln", "adaln_out", "t_embed.2"):
        set_module(model, name, QuantLinear.from_linear(model.get_submodule(name), bits=4, act_bits=4))
    folded = copy.deepcopy(model).fold_modulation_()
    x = torch.rand(1, 3, 3, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-6, atol=1e-6)
    assert folded.blocks[0].modulation.dtype == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_folded_checkpoint_round_trip(tmp_path, precision):
    model = random_model(CONV).fold_modulation_()
    path = tmp_path / "folded.safetensors"
    save_checkpoint(model, path, arch="vsrq-dit", precision=precision)
    tensors, meta = read_checkpoint(path)
    assert meta["vsrq.folded"] == "adaln" and "folded" not in json.loads(meta["vsrq.config"])
    assert tensors["blocks.1.modulation"].dtype == torch.float32  # folded vectors keep their dtype in any file
    loaded = load_model(str(path))
    assert loaded.module.folded and loaded.module.config == CONV
    x = torch.rand(1, 3, 3, 10, 14)
    with torch.no_grad():
        if precision == "fp32":
            assert torch.equal(loaded.module(x), model(x))
        else:
            assert rel_err(loaded.module(x), model(x)) < 1e-2


def test_unfolded_checkpoints_still_load_and_fold_on_rewrite(tmp_path):
    old = random_checkpoint(tmp_path / "old.safetensors", CONV, precision="fp16")
    loaded = load_model(str(old))
    assert not loaded.module.folded and "vsrq.folded" not in read_checkpoint(old)[1]
    new = tmp_path / "new.safetensors"
    fold_checkpoint(old, new)
    a, b = read_checkpoint(old), read_checkpoint(new)
    assert {k for k in a[0] if k not in b[0]} == {k for k in a[0] if "adaln" in k or "t_embed" in k}
    assert all(torch.equal(a[0][k], v) and a[0][k].dtype == v.dtype for k, v in b[0].items() if k in a[0])
    assert b[1]["vsrq.precision"] == "fp16" and b[1]["vsrq.folded"] == "adaln"
    assert new.stat().st_size < old.stat().st_size
    x = torch.rand(1, 3, 3, 10, 14)
    with torch.no_grad():
        assert torch.equal(load_model(str(new)).module(x), loaded.module(x))


def test_the_shipped_w4a4_checkpoint_is_folded(monkeypatch, tmp_path):
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path))
    monkeypatch.delenv("VSRQ_MODELS", raising=False)
    loaded = load_model("vsrq-tiny")
    assert loaded.module.folded and loaded.precision == "w4a4"
    assert not load_model("vsrq-tiny-fp16").module.folded  # the trained float model stays unfolded


def test_inconsistent_fold_is_refused(tmp_path):
    unfolded = random_checkpoint(tmp_path / "u.safetensors")
    tensors, meta = read_checkpoint(unfolded)
    lying = tmp_path / "lying.safetensors"
    save_file(tensors, str(lying), metadata={**meta, "vsrq.folded": "adaln"})
    with pytest.raises(ModelError, match="no folded vectors"):
        load_model(str(lying))
    mixed = tmp_path / "mixed.safetensors"
    save_file({**tensors, "modulation_out": torch.zeros(2 * TINY.dim)}, str(mixed), metadata=meta)
    with pytest.raises(ModelError, match="unexpected"):
        load_model(str(mixed))
    folded = tmp_path / "f.safetensors"
    save_checkpoint(random_model().fold_modulation_(), folded, arch="vsrq-dit", precision="fp32")
    t = load_file(str(folded))
    del t["blocks.1.modulation"]
    short = tmp_path / "short.safetensors"
    save_file(t, str(short), metadata=read_checkpoint(folded)[1])
    with pytest.raises(ModelError, match="missing"):
        load_model(str(short))
