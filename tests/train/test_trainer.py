"""The training loop on tiny CPU sizes: it learns, and a resumed run equals an uninterrupted one."""

import numpy as np
import torch
from safetensors import safe_open

from vsrq.models.loader import load_model
from vsrq.train.data import CameraMotion
from vsrq.train.losses import charbonnier, temporal_l1, vsr_loss
from vsrq.train.trainer import STATE, TrainOptions, batch_plan, export_weights, train

MODEL = {"dim": 24, "depth": 2, "heads": 2, "window": [2, 4, 4], "scale": 2}


class ToyStore:
    """Smooth random HR clips and their 2x box-downscaled LR: learnable in a few steps."""

    def __init__(self, n: int = 4) -> None:
        rng = np.random.default_rng(0)
        self.hr = []
        for _ in range(n):
            base = rng.random((6, 8, 8, 3))
            hr = np.kron(base, np.ones((1, 4, 4, 1)))[:, :32, :32]
            self.hr.append((hr * 255).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.hr)

    def pair(self, i):
        hr = self.hr[i]
        lr = hr.reshape(6, 16, 2, 16, 2, 3).mean(axis=(2, 4)).astype(np.uint8)
        return lr, hr


def opts(tmp_path, steps, **kw):
    base = dict(run_dir=tmp_path / "run", model=MODEL, steps=steps, batch=2, crop=8, frames=4, lr=2e-3, warmup=1,
                minutes=5, log_every=1, workers=0, device="cpu", seed=3)
    base.update(kw)
    return TrainOptions(**base)


def test_losses_are_zero_for_perfect_output_and_catch_flicker():
    x = torch.rand(1, 3, 4, 8, 8)
    assert charbonnier(x, x) < 2e-3 and temporal_l1(x, x) == 0
    flicker = x.clone()
    flicker[:, :, 1::2] += 0.1
    assert temporal_l1(flicker, x) > 0.05
    total, parts = vsr_loss(flicker, x)
    assert total > 0 and set(parts) == {"pixel", "frequency", "temporal"}


def test_training_lowers_the_loss(tmp_path):
    logs = []
    train(ToyStore(), opts(tmp_path, 30), log=logs.append)
    losses = [float(line.split("loss=")[1].split()[0]) for line in logs]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_resume_equals_uninterrupted(tmp_path):
    train(ToyStore(), opts(tmp_path / "a", 4), log=lambda s: None)
    train(ToyStore(), opts(tmp_path / "b", 2), log=lambda s: None)
    summary = train(ToyStore(), opts(tmp_path / "b", 4), log=lambda s: None)
    assert summary["start_step"] == 2 and summary["step"] == 4
    with safe_open(str(tmp_path / "a" / "run" / STATE), "pt") as a, safe_open(str(tmp_path / "b" / "run" / STATE), "pt") as b:
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-5, atol=1e-6)


def test_batches_depend_only_on_seed_and_step():
    assert batch_plan(0, 7, 10, 4) == batch_plan(0, 7, 10, 4)
    assert batch_plan(0, 7, 10, 4) != batch_plan(0, 8, 10, 4)


def test_export_gives_a_loadable_checkpoint(tmp_path):
    train(ToyStore(), opts(tmp_path, 2), log=lambda s: None)
    out = tmp_path / "m.safetensors"
    export_weights(tmp_path / "run", out)
    loaded = load_model(str(out))
    assert loaded.precision == "fp16" and loaded.scale == 2


def test_init_weights_starts_from_a_float_checkpoint_and_refuses_others(tmp_path):
    import pytest

    from tests.support import random_checkpoint
    from vsrq.errors import VsrqError
    from vsrq.models.dit import DiTConfig, VSRDiT
    from vsrq.train.trainer import init_weights

    train(ToyStore(), opts(tmp_path, 2), log=lambda s: None)
    out = tmp_path / "m.safetensors"
    export_weights(tmp_path / "run", out)
    model = VSRDiT(DiTConfig.from_dict(MODEL))
    init_weights(model, out)
    ref = load_model(str(out)).module
    assert all(torch.equal(v.float(), ref.state_dict()[k].float()) for k, v in model.state_dict().items())
    # a run started with init begins from those weights (its step-0 state is them)
    run2 = opts(tmp_path / "ft", 1, init=str(out), lr=0.0)
    train(ToyStore(), run2, log=lambda s: None)
    export_weights(run2.run_dir, tmp_path / "ft.safetensors")
    ft = load_model(str(tmp_path / "ft.safetensors")).module
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ft.state_dict().items())
    with pytest.raises(VsrqError, match="differs"):
        init_weights(VSRDiT(DiTConfig(dim=48, depth=1, heads=2, window=(2, 4, 4), scale=2)), out)
    other = random_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(VsrqError, match="differs"):
        init_weights(VSRDiT(DiTConfig.from_dict(MODEL)), other)


def test_light_family_draws_are_recognised_and_heavy_ones_mostly_not(monkeypatch):
    import importlib

    degrade = importlib.import_module("vsrq.train.degrade")  # the module (the package re-exports a function of that name)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(degrade, "MILD_SHARE", 1.0)
    assert all(degrade.is_light(degrade.sample_degrade_params(rng).to_dict()) for _ in range(200))
    monkeypatch.setattr(degrade, "MILD_SHARE", 0.0)
    heavy = [degrade.is_light(degrade.sample_degrade_params(rng).to_dict()) for _ in range(500)]
    assert sum(heavy) < 25  # the heavy mix overlaps the light ranges only by chance


def test_static_loss_scores_flicker_on_a_static_noisy_clip_and_trains(tmp_path):
    from vsrq.train.losses import static_clip, static_flicker

    lr = torch.rand(2, 3, 4, 8, 8)
    s = static_clip(lr, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(s, (s * 255).round() / 255)  # 8-bit codes
    assert (s - lr[:, :, :1]).abs().max() < 6 / 255 and (s[:, :, 1:] != s[:, :, :1]).any()  # noise, re-drawn per frame
    assert static_flicker(lr[:, :, :1].expand_as(lr)) == 0 and static_flicker(lr) > 0.1
    logs = []
    train(ToyStore(), opts(tmp_path, 3, loss={"static": 1.0}), log=logs.append)
    assert len(logs) == 3 and all("static=" in line for line in logs)


class CameraStore(ToyStore):
    """ToyStore whose clips claim a camera motion: the warp loss gets their (exact, here made-up) flow."""

    def motion(self, i):
        return CameraMotion(1.0, (1.0, 0.5)).to_dict(), (32, 32)


def test_warp_loss_trains_with_flow_from_the_store_and_zero_flow_without(tmp_path):
    from vsrq.train.trainer import CropDataset

    item = CropDataset(CameraStore(), 8, 4, 2, flow=True)[(0, 5)]
    assert len(item) == 4 and item[2].shape == (2, 3, 16, 16) and item[2].abs().amax() > 0.4 and item[3] == 1
    plain = CropDataset(ToyStore(), 8, 4, 2, flow=True)[(0, 5)]
    assert not plain[2].any() and plain[3] == 0
    assert len(CropDataset(ToyStore(), 8, 4, 2)[(0, 5)]) == 2  # no flow unless asked
    logs = []
    train(CameraStore(), opts(tmp_path, 3, loss={"warp": 1.0}), log=logs.append)
    assert len(logs) == 3 and all("warp=" in line for line in logs)
