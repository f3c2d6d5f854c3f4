"""Official SeedVR2 VAE checkpoint (ema_vae.pth) -> `SeedVR2VAE` state dict.

Our parameter names are the official module names, so the map is thin: the official loader runs
diffusers' `_convert_deprecated_attention_blocks` (old ``query/key/value/proj_attn`` ->
``to_q/to_k/to_v/to_out.0``) and then loads non-strictly, which silently ignores the disabled
``quant_conv``/``post_quant_conv``. We do the same renames and drops, then check strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from vsrq.errors import ModelError

from .vae import SeedVR2VAE, SeedVR2VAEConfig

__all__ = ["vae_state_from_official", "check_vae_state", "load_official_vae"]

_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DROPPED_PREFIXES = ("quant_conv.", "post_quant_conv.")  # disabled in s8_c16_t4 (use_*_quant_conv: False)
_STRIP_PREFIXES = ("module.",)  # DDP-wrapped saves


def vae_state_from_official(sd: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Rename deprecated attention keys, drop unused keys, cast floating tensors to `dtype`."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
        if key.startswith(_DROPPED_PREFIXES):
            continue
        parts = key.split(".")
        if ".attentions." in key and len(parts) >= 2 and parts[-2] in _DEPRECATED_ATTN:
            key = ".".join(parts[:-2] + [_DEPRECATED_ATTN[parts[-2]], parts[-1]])
            if value.ndim == 4 and value.shape[-2:] == (1, 1):  # 1x1-conv form of a Linear
                value = value[:, :, 0, 0]
        if value.is_floating_point():
            value = value.to(dtype)
        out[key] = value
    return out


def check_vae_state(model: nn.Module, sd: Mapping[str, Tensor]) -> None:
    """Raise ModelError naming the first missing, unexpected or wrong-shaped key."""
    want = model.state_dict()
    for k, v in want.items():
        if k not in sd:
            raise ModelError(f"SeedVR2 VAE checkpoint is missing key {k!r} ({len(want)} expected)")
    for k, v in sd.items():
        if k not in want:
            raise ModelError(f"SeedVR2 VAE checkpoint has unexpected key {k!r}")
        if tuple(v.shape) != tuple(want[k].shape):
            raise ModelError(
                f"SeedVR2 VAE checkpoint key {k!r} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}"
            )


def load_official_vae(
    path: str | Path, config: SeedVR2VAEConfig | None = None, dtype: torch.dtype = torch.float32
) -> SeedVR2VAE:
    """Build the VAE and load an official ``ema_vae.pth`` (mmap'd, weights only)."""
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing model error
        raise ModelError(f"cannot read SeedVR2 VAE checkpoint {path}: {e}") from e
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    model = SeedVR2VAE(config or SeedVR2VAEConfig.preset("seedvr2"))
    sd = vae_state_from_official(raw, dtype)
    check_vae_state(model, sd)
    model.load_state_dict(sd, strict=True)
    return model.to(dtype).eval()
