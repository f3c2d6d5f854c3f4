"""The packaged default model loads offline through the registry and does better than bicubic."""

import numpy as np

from vsrq.eval.baselines import bicubic_upscale
from vsrq.eval.metrics import psnr_y
from vsrq.io import VideoReader
from vsrq.models.loader import load_model
from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions, upscale_clip
from vsrq.train.data import resize_clip
from vsrq.train.degrade import degrade_mild


def test_default_model_is_packaged_and_verified(offline_models):
    loaded = load_model(None)
    assert loaded.name == "vsrq-tiny" and loaded.precision == "w4a4" and loaded.scale == 4
    assert loaded.quant["recipe"]["name"] == "rtn-a32"  # the numerics it was trained through (QAT)
    fp = load_model("vsrq-tiny-fp16")
    assert fp.precision == "fp16" and fp.module.config == loaded.module.config


def test_default_model_beats_bicubic_on_held_out_frames_and_is_as_steady(bbb_path, offline_models):
    """bigbuckbunny is never trained on. Same protocol as the eval set (docs/MODELS.md): frames
    reduced to 640x360, the mild degradation; here 8 frames and the whole frame. Issue 3's two bars
    in small: sharper than bicubic, and no more flicker than bicubic along the true motion."""
    from vsrq.eval.metrics import warping_error

    with VideoReader(bbb_path) as r:
        frames = [f.image for _, f in zip(range(48), r.frames())][40:48]
    hr = resize_clip(np.stack(frames), (360, 640))
    lr = degrade_mild(np.ascontiguousarray(hr))
    up = ChunkUpscaler(load_model(None), UpscaleOptions(chunk=8, overlap=2, device="cpu"))
    out = upscale_clip(up, lr)
    bic = np.asarray(bicubic_upscale(lr))
    ours, base = psnr_y(out, hr, 4).mean, psnr_y(bic, hr, 4).mean
    # measured 2026-11-24 on these frames: the default +0.24 dB, warping error 2.06 against bicubic's
    # 2.19; the sixth-session default was +0.39 dB but 2.27 (docs/MODELS.md)
    assert ours > base + 0.1, (ours, base)
    steady, base_steady = warping_error(out, flow_frames=hr).mean, warping_error(bic, flow_frames=hr).mean
    assert steady < base_steady, (steady, base_steady)


def test_the_default_loads_inside_inference_mode(offline_models):
    import torch

    with torch.inference_mode():  # a natural way to call the Python API; it used to report a damaged layer
        loaded = load_model(None)
        out = loaded.module(torch.rand(1, 3, 2, 8, 8))
    assert out.shape == (1, 3, 2, 32, 32)
