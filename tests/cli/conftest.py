"""A small real clip with audio, and a random-weight model registered through a user registry file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support import random_checkpoint
from vsrq.io import VideoReader, VideoWriter, probe


def shrink_clip(src: Path, out: Path, size: tuple[int, int] = (64, 36), frames: int | None = None) -> Path:
    """src resized to `size` (first `frames` frames, or all), its audio copied, not re-encoded."""
    info = probe(src)
    w, h = size
    with VideoReader(src) as reader, VideoWriter(out, width=w, height=h, fps=info.fps, time_base=info.time_base, source=info, crf=12) as writer:
        for frame in reader.frames():
            if frames is not None and frame.index >= frames:
                break
            x = torch.from_numpy(frame.image).permute(2, 0, 1)[None].float()
            small = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True).clamp(0, 255).round()
            writer.write(small[0].permute(1, 2, 0).to(torch.uint8).numpy(), frame.pts, frame.duration)
    return out


@pytest.fixture(scope="session")
def small_bbb(bbb_path, tmp_path_factory) -> Path:
    """bigbuckbunny.mp4 shrunk to 64x36, every frame and its AAC audio kept (copied, not re-encoded)."""
    return shrink_clip(Path(bbb_path), tmp_path_factory.mktemp("media") / "bbb_64x36.mp4")


@pytest.fixture
def test_model(tmp_path, monkeypatch) -> str:
    """A registry file (VSRQ_MODELS) whose default is a random-weight x4 model: the real loading path."""
    ckpt = random_checkpoint(tmp_path / "random-tiny.safetensors")
    reg = tmp_path / "models.toml"
    reg.write_text(f'default = "random-tiny"\n[models.random-tiny]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\n')
    monkeypatch.setenv("VSRQ_MODELS", str(reg))
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path / "cache"))
    return "random-tiny"


def static_clip(path: Path, frames: int = 20, size: tuple[int, int] = (48, 32)) -> Path:
    """A textured picture that never moves."""
    rng = np.random.default_rng(1)
    img = (rng.random((size[1] // 4, size[0] // 4, 3)) * 255).astype(np.uint8)
    img = np.kron(img, np.ones((4, 4, 1), dtype=np.uint8))
    from fractions import Fraction

    with VideoWriter(path, width=size[0], height=size[1], fps=Fraction(25), time_base=Fraction(1, 25), source=None, codec="ffv1", crf=None, preset=None, pix_fmt="yuv444p") as w:
        for t in range(frames):
            w.write(img, t)
    return path


@pytest.fixture(scope="session")
def short_bbb(bbb_path, tmp_path_factory) -> Path:
    """The first 40 frames of bigbuckbunny at 64x36 with its AAC audio: long enough for 5 segments of 8."""
    return shrink_clip(Path(bbb_path), tmp_path_factory.mktemp("media") / "bbb_40f.mp4", frames=40)
