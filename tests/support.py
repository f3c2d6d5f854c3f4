"""Helpers shared by the tests: small random-weight models saved through the real checkpoint path."""

from __future__ import annotations

from pathlib import Path

import torch

from vsrq.models.dit import DiTConfig, VSRDiT
from vsrq.models.loader import save_checkpoint

TINY = DiTConfig(dim=24, depth=2, heads=2, window=(2, 4, 4), scale=4)


def random_model(config: DiTConfig = TINY, seed: int = 0, std: float = 0.05) -> VSRDiT:
    """A DiT whose every weight is random (the zero-init head would make it a plain bicubic upscaler)."""
    torch.manual_seed(seed)
    model = VSRDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def random_checkpoint(path: Path, config: DiTConfig = TINY, seed: int = 0, precision: str = "fp32") -> Path:
    save_checkpoint(random_model(config, seed), path, arch="vsrq-dit", precision=precision)
    return path
