"""`vsrq quantize` end to end on a small random model: checkpoint round trip, determinism, bad input."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tests.support import TINY, random_checkpoint
from vsrq.cli import app
from vsrq.models.loader import load_model, read_checkpoint
from vsrq.quant.qlinear import QuantLinear


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def fp_model(tmp_path) -> Path:
    return random_checkpoint(tmp_path / "fp.safetensors", TINY)


def test_quantize_saves_a_loadable_w4a4_checkpoint(fp_model, tmp_path):
    out = tmp_path / "q.safetensors"
    result = run("quantize", "--model", fp_model, "--method", "svdquant", "--rank", "4", "--out", out, "--report", tmp_path / "r.json", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    loaded = load_model(str(out))
    assert loaded.precision == "w4a4" and loaded.quant["recipe"]["name"] == "svdquant"
    qlayers = [m for m in loaded.module.modules() if isinstance(m, QuantLinear)]
    assert len(qlayers) == 4 * TINY.depth and all(q.rank == 4 and q.w_bits == 4 for q in qlayers)
    fp = load_model(str(fp_model)).module
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        yq, yf = loaded.module(x), fp(x)
    rel = ((yq - yf) ** 2).mean() / (yf**2).mean()
    assert 0 < rel < 1e-2  # quantized, but close
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["layers"]) == len(qlayers) and all(l["sqnr_db"] > 10 for l in report["layers"])


def test_quantize_is_deterministic(fp_model, tmp_path):
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in outs:
        assert run("quantize", "--model", fp_model, "--method", "rtn", "--out", out, "-q").exit_code == 0
    with safe_open(str(outs[0]), "pt") as a, safe_open(str(outs[1]), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_w8a8_is_closer_than_w4a4(fp_model, tmp_path):
    fp = load_model(str(fp_model)).module
    x = torch.rand(1, 3, 4, 16, 16)
    errs = {}
    for bits in (8, 4):
        out = tmp_path / f"q{bits}.safetensors"
        assert run("quantize", "--model", fp_model, "--bits", bits, "--out", out, "-q").exit_code == 0
        with torch.no_grad():
            errs[bits] = float(((load_model(str(out)).module(x) - fp(x)) ** 2).mean())
    assert errs[8] < errs[4] / 10


def bad(result, match: str):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert match.lower() in result.stderr.lower(), result.stderr


def test_bad_inputs_write_nothing(fp_model, tmp_path):
    out = tmp_path / "q.safetensors"
    bad(run("quantize", "--model", fp_model, "--bits", "9", "--out", out), "--bits")
    bad(run("quantize", "--model", fp_model, "--bits", "1", "--out", out), "--bits")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad(run("quantize", "--model", fp_model, "--calib", empty, "--out", out), "no video files")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.conv.weight": torch.zeros(3, 3)}, str(other))
    bad(run("quantize", "--model", other, "--out", out), "not a vsrq checkpoint")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(fp_model.read_bytes()[:1000])
    bad(run("quantize", "--model", corrupt, "--out", out), "corrupt")
    bad(run("quantize", "--model", fp_model, "--method", "nope", "--out", out), "unknown method")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_quantizing_a_quantized_model_is_refused(fp_model, tmp_path):
    q = tmp_path / "q.safetensors"
    assert run("quantize", "--model", fp_model, "--out", q, "-q").exit_code == 0
    bad(run("quantize", "--model", q, "--out", tmp_path / "qq.safetensors"), "already quantized")


def test_quantized_checkpoint_of_wrong_shape_is_refused(fp_model, tmp_path):
    q = tmp_path / "q.safetensors"
    assert run("quantize", "--model", fp_model, "--out", q, "-q").exit_code == 0
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(q))
    with safe_open(str(q), "pt") as fh:
        meta = fh.metadata()
    tensors["blocks.0.mlp.fc1.qweight"] = tensors["blocks.0.mlp.fc1.qweight"][:, :-1].contiguous()
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    from vsrq.errors import ModelError

    with pytest.raises(ModelError, match="blocks.0.mlp.fc1"):
        load_model(str(broken))


def test_quantized_model_keeps_its_local_convs_in_full_precision(tmp_path):
    from vsrq.models.dit import DiTConfig

    cfg = DiTConfig(**{**TINY.to_dict(), "local_conv": (3, 3, 3)})
    fp_path = random_checkpoint(tmp_path / "fp.safetensors", cfg)
    out = tmp_path / "q.safetensors"
    result = run("quantize", "--model", fp_path, "--out", out, "-q")
    assert result.exit_code == 0, result.output + result.stderr
    loaded, fp = load_model(str(out)).module, load_model(str(fp_path)).module
    assert loaded.config.local_conv == (3, 3, 3)
    torch.testing.assert_close(loaded.local[0].weight, fp.local[0].weight, rtol=1e-3, atol=1e-3)
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        yq, yf = loaded(x), fp(x)
    assert 0 < float(((yq - yf) ** 2).mean() / (yf**2).mean()) < 1e-2


def test_preset_bits_hold_unless_bits_is_given(fp_model, tmp_path):
    """`--method rtn-w8a8` alone gives W8A8; `--bits` overrides the recipe (activations follow it)."""
    out8, out4 = tmp_path / "w8.safetensors", tmp_path / "w4.safetensors"
    assert run("quantize", "--model", fp_model, "--method", "rtn-w8a8", "--out", out8, "-q").exit_code == 0
    assert load_model(str(out8)).precision == "w8a8"
    assert run("quantize", "--model", fp_model, "--method", "rtn-w8a8", "--bits", "4", "--out", out4, "-q").exit_code == 0
    assert load_model(str(out4)).precision == "w4a4"
    assert run("quantize", "--model", fp_model, "--bits", "9", "--out", tmp_path / "x.safetensors", "-q").exit_code == 2
    out48 = tmp_path / "w4a8.safetensors"  # the label comes from what the layers hold
    assert run("quantize", "--model", fp_model, "--bits", "4", "--act-bits", "8", "--out", out48, "-q").exit_code == 0
    assert load_model(str(out48)).precision == "w4a8"


def test_quantize_writes_the_adaln_modulation_folded(fp_model, tmp_path):
    """The constant adaLN layers and the timestep MLP become stored vectors (a recipe can opt out)."""
    out = tmp_path / "q.safetensors"
    assert run("quantize", "--model", fp_model, "--out", out, "-q").exit_code == 0
    tensors, meta = read_checkpoint(out)
    assert meta["vsrq.folded"] == "adaln" and json.loads(meta["vsrq.quant"])["recipe"]["fold_modulation"]
    assert not [k for k in tensors if "adaln" in k or "t_embed" in k]
    assert tensors["blocks.0.modulation"].dtype == torch.float32
    loaded = load_model(str(out))
    assert loaded.module.folded and all(not isinstance(m, QuantLinear) or "adaln" not in n for n, m in loaded.module.named_modules())
    recipe = tmp_path / "unfolded.toml"
    recipe.write_text('base = "rtn"\nfold_modulation = false\n')
    plain = tmp_path / "plain.safetensors"
    assert run("quantize", "--model", fp_model, "--method", recipe, "--out", plain, "-q").exit_code == 0
    assert "blocks.0.adaln.weight" in read_checkpoint(plain)[0] and not load_model(str(plain)).module.folded
    assert out.stat().st_size < plain.stat().st_size
    # the same quantization either way (folding repeats the forward's float32 arithmetic), and the
    # folded vectors come from the float32 layers where the unfolded file rounds them to fp16
    folded_t, plain_t = tensors, read_checkpoint(plain)[0]
    assert all(torch.equal(v, plain_t[k]) for k, v in folded_t.items() if k in plain_t)
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        ref, a, b = load_model(str(fp_model)).module(x), loaded.module(x), load_model(str(plain)).module(x)
    assert float(((a - ref) ** 2).mean()) < 1e-2 * float((ref**2).mean())
    assert float(((a - b) ** 2).mean()) < 1e-2 * float((ref**2).mean())


def test_bench_low_bit_variants_are_folded_and_compared_with_bf16(tmp_path):
    from vsrq.bench import checkpoint_bytes, rtn_variant

    fp = load_model(str(random_checkpoint(tmp_path / "model.safetensors", TINY)))
    w4 = rtn_variant(fp.module, 4, 4, rank=0)
    assert w4.folded and not fp.module.folded
    (out := tmp_path / "bench").mkdir()
    sizes = {p: checkpoint_bytes(fp, m, p, out) for p, m in (("fp", fp.module), ("w4a4", w4))}
    assert read_checkpoint(out / "fp.safetensors")[1]["vsrq.precision"] == "bf16"
    assert read_checkpoint(out / "w4a4.safetensors")[1]["vsrq.folded"] == "adaln"
    assert sizes["w4a4"] < sizes["fp"] / 2
