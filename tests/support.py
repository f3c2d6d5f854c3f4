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


def tiny_seedvr2(seed: int = 0):
    """A SeedVR2 restorer of the real structure at toy width: (dit, vae, text)."""
    from vsrq.models.seedvr2.dit import SeedVR2DiT, SeedVR2DiTConfig
    from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig

    torch.manual_seed(seed)
    dit = SeedVR2DiT(SeedVR2DiTConfig.preset("3b-tiny")).eval()
    vae = SeedVR2VAE(SeedVR2VAEConfig.preset("tiny")).eval()
    text = torch.randn(7, dit.cfg.txt_in_dim)
    return dit, vae, text


def tiny_seedvr2_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The three files of a tiny SeedVR2 model, named as the official ones are (DiT as a vsrq checkpoint,
    the VAE with its config in the metadata, the text embedding as a torch tensor file)."""
    import json

    from safetensors.torch import save_file

    from vsrq.quant.checkpoint import write_checkpoint

    dit, vae, text = tiny_seedvr2(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"weights": folder / "seedvr2_tiny.safetensors", "vae": folder / "ema_vae.safetensors", "text": folder / "pos_emb.pt"}
    write_checkpoint(dit, files["weights"], arch="seedvr2-dit", config=dit.cfg.to_dict(), precision="fp32", float_dtype=None)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(files["vae"]),
              metadata={"vsrq.config": json.dumps(vae.config.to_dict())})
    torch.save(text, files["text"])
    return files
