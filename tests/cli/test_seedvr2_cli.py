"""SeedVR2 through the real commands, with a tiny random model of the real structure: upscale a real
clip (frames, size, audio), quantize its DiT to W4A4 and upscale with that, and the option errors."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from tests.cli.test_upscale_e2e import audio_packets, run_vsrq
from tests.support import tiny_seedvr2_files
from vsrq.cli import app
from vsrq.io import VideoReader, probe
from vsrq.models.loader import load_model
from vsrq.quant.qlinear import QuantLinear


def test_seedvr2_upscale_then_quantize_and_upscale_again(short_bbb, tmp_path, monkeypatch):
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path / "cache"))
    files = tiny_seedvr2_files(tmp_path / "ckpts")
    out = tmp_path / "out.mp4"
    result = run_vsrq("upscale", str(short_bbb), str(out), "--model", str(files["weights"]), "--scale", "2",
                      "--chunk", "9", "--overlap", "2", "--colour-fix", "adain", "--vae-tile", "64", "--quiet")
    assert result.returncode == 0, result.stderr
    src, dst = probe(short_bbb), probe(out)
    assert (dst.width, dst.height) == (128, 72)
    with VideoReader(out) as r:
        assert sum(1 for _ in r.frames()) == 40
    assert audio_packets(out) == audio_packets(short_bbb)
    assert abs(dst.duration - src.duration) < 0.05

    q = tmp_path / "ckpts" / "seedvr2_tiny_w4a4.safetensors"  # beside the VAE and text: found by name
    res = CliRunner().invoke(app, ["quantize", "--model", str(files["weights"]), "--method", "rtn", "--bits", "4", "--out", str(q), "-q"])
    assert res.exit_code == 0, res.output
    loaded = load_model(str(q))
    qlayers = [n for n, m in loaded.module.dit.named_modules() if isinstance(m, QuantLinear)]
    assert loaded.precision == "w4a4" and qlayers and all(n.startswith("blocks.") for n in qlayers)
    assert not any(isinstance(m, QuantLinear) for m in loaded.module.vae.modules())
    fp = load_model(str(files["weights"])).module
    garbage = load_model(str(files["weights"])).module  # the same model with its DiT weights scrambled
    with torch.no_grad():
        for p in garbage.dit.parameters():
            p.add_(torch.randn_like(p) * p.float().std().nan_to_num(0.02).clamp_min(0.02))
    for m in (loaded.module, fp, garbage):  # no colour fix: it would pull any DiT output towards the input
        m.settings.colour_fix = "none"
    x = torch.rand(1, 3, 5, 16, 24)
    with torch.no_grad():
        yq, yf, yg = loaded.module(x), fp(x), garbage(x)
    dq, dg = float((yq - yf).abs().mean()), float((yg - yf).abs().mean())
    assert 0 < dq < 0.25 * dg, (dq, dg)  # quantized, and far closer to the float model than a broken DiT
    out_q = tmp_path / "out_q.mp4"
    result = run_vsrq("upscale", str(short_bbb), str(out_q), "--model", str(q), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (probe(out_q).width, probe(out_q).height) == (128, 72)  # the registered default scale 2 of a DiT file: x2


def test_seedvr2_options_on_another_model_are_one_line_errors(short_bbb, test_model, tmp_path):
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--colour-fix", "adain")
    assert result.returncode == 2 and "apply to SeedVR2 models only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--vae-tile", "40")
    assert result.returncode == 2 and "multiple of 16" in result.stderr
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--vae-tile", "48")  # would blend without overlap
    assert result.returncode == 2 and "from 64 up" in result.stderr
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--seed", "0")  # any seed, not just non-zero ones
    assert result.returncode == 2 and "apply to SeedVR2 models only" in result.stderr
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--vae-precision", "fp8", "--device", "cpu")
    assert result.returncode == 2 and "needs a CUDA GPU with fp8 tensor cores" in result.stderr
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--vae-precision", "bf16")
    assert result.returncode == 2 and "--vae-precision apply to SeedVR2 models only" in result.stderr
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--vae-precision", "fp16")
    assert result.returncode == 2 and "--vae-precision must be bf16 or fp8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--max-vram", "8", "--device", "cpu")
    assert result.returncode == 2 and "needs a CUDA device" in result.stderr
    files = tiny_seedvr2_files(tmp_path / "ckpts")
    result = run_vsrq("upscale", str(short_bbb), str(tmp_path / "o.mp4"), "-m", str(files["weights"]), "--scale", "1.3", "--tile", "32")
    assert result.returncode != 0 and "--tile needs a whole output scale" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path(tmp_path / "o.mp4").exists()


def test_resume_fingerprint_names_the_vae_and_text_files(short_bbb, test_model, tmp_path):
    import os

    from vsrq.pipeline.upscale import EncodeOptions, UpscaleOptions, job_fingerprint

    files = tiny_seedvr2_files(tmp_path / "m")
    info, opts, enc = probe(str(short_bbb)), UpscaleOptions(), EncodeOptions()
    before = job_fingerprint(info, load_model(str(files["weights"])), opts, enc, (64, 64))
    assert set(before["model files"]) == {"vae", "text"}
    st = os.stat(files["vae"])
    os.utime(files["vae"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a replaced VAE file
    after = job_fingerprint(info, load_model(str(files["weights"])), opts, enc, (64, 64))
    assert after["model files"]["vae"] != before["model files"]["vae"] and after["model"] == before["model"]
    assert "model files" not in job_fingerprint(info, load_model(str(test_model)), opts, enc, (64, 64))


def test_seedvr2_bad_text_width_tiny_output_and_nan_budget_are_one_line_errors(short_bbb, test_model, tmp_path):
    import pytest

    from vsrq.errors import ModelError

    files = tiny_seedvr2_files(tmp_path / "m")
    torch.save(torch.randn(7, 3), files["text"])  # an embedding of another width
    with pytest.raises(ModelError, match="width 3"):
        load_model(str(files["weights"]))
    files = tiny_seedvr2_files(tmp_path / "n")
    out = tmp_path / "o.mp4"
    result = run_vsrq("upscale", str(short_bbb), str(out), "-m", str(files["weights"]), "--scale", "0.05", "--quiet")
    assert result.returncode != 0 and "under 16 pixels" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = run_vsrq("upscale", str(short_bbb), str(out), "--max-vram", "nan")
    assert result.returncode == 2 and "positive number of GiB" in result.stderr


def test_seedvr2_options_on_a_known_other_model_fail_before_loading_it(short_bbb, tmp_path, monkeypatch):
    from vsrq.models.loader import is_seedvr2_model

    assert is_seedvr2_model(None) is False and is_seedvr2_model("seedvr2-3b") is True
    assert is_seedvr2_model(str(tmp_path / "missing.pth")) is None  # only loading would tell
    files = tiny_seedvr2_files(tmp_path / "ckpts")
    assert is_seedvr2_model(str(files["weights"])) is True

    def no_load(name):
        raise AssertionError("the model was loaded before the option check")

    monkeypatch.setattr("vsrq.models.loader.load_model", no_load)
    res = CliRunner().invoke(app, ["upscale", str(short_bbb), str(tmp_path / "o.mp4"), "--colour-fix", "adain"])
    assert res.exit_code == 2 and "apply to SeedVR2 models only" in res.output, res.output


def test_vae_precision_setting_reaches_the_vae(tmp_path):
    """SeedVR2Settings.vae_precision: "fp8" runs the VAE's e4m3 convs (a different, nearby output and a
    different resume fingerprint); anything else is refused."""
    import pytest

    from vsrq.pipeline.seedvr2 import SeedVR2Settings

    from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig

    files = tiny_seedvr2_files(tmp_path / "ckpts")
    model = load_model(str(files["weights"])).module
    torch.manual_seed(0)
    model.vae = SeedVR2VAE(SeedVR2VAEConfig.preset("small")).eval()  # channels the e4m3 conv takes (the tiny VAE's 4-8 are too few)
    model.settings.colour_fix = "none"
    x = torch.rand(1, 3, 5, 16, 24)
    with torch.no_grad():
        ref = model(x)
        fp = model.settings.fingerprint()
        model.settings.vae_precision = "fp8"
        got = model(x)
    assert model.vae.conv_format == "fp8" and model.settings.fingerprint() != fp
    assert "vae precision" not in fp  # journals written before the option stay resumable
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.5, rel
    with pytest.raises(ValueError, match="VAE precision"):
        SeedVR2Settings(vae_precision="fp4")
