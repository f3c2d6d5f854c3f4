"""Official SeedVR2 DiT checkpoint <-> our `SeedVR2DiT` state dict.

Our parameter names equal the official ones, so the map is thin:
- the official `blocks.N.attn.rope.rope.freqs` buffers (fixed RoPE frequencies, not learned)
  are dropped: we compute them from the config. They are checked against our values first, so a
  checkpoint whose RoPE does not match the config is refused instead of silently mis-rotating.
- floating tensors are cast to the requested dtype (fp32 by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vsrq.errors import ModelError

from .dit import SeedVR2DiT, SeedVR2DiTConfig, rope_inv_freqs

ROPE_FREQS_SUFFIX = ".attn.rope.rope.freqs"


def load_official_dit(path: str | Path) -> dict[str, Tensor]:
    """Read an official `.pth` (memory-mapped, weights only) or a `.safetensors` state dict."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any read failure is a user-facing model error
        raise ModelError(f"cannot read SeedVR2 DiT checkpoint {path}: {e}") from e
    if not isinstance(sd, Mapping):
        raise ModelError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def expected_dit_shapes(config: SeedVR2DiTConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = SeedVR2DiT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def dit_state_from_official(
    sd: Mapping[str, Tensor], config: SeedVR2DiTConfig, dtype: torch.dtype | None = torch.float32
) -> dict[str, Tensor]:
    """Official state dict -> ours: drop (after checking) the rope freqs buffers, cast dtype.

    `dtype=None` keeps the stored dtypes. Does not check completeness; see `check_dit_state`."""
    inv = rope_inv_freqs(config)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith(ROPE_FREQS_SUFFIX):
            if value.device.type != "meta" and (
                value.shape != inv.shape or not torch.allclose(value.float(), inv, rtol=1e-2, atol=1e-3)
            ):
                raise ModelError(
                    f"SeedVR2 DiT: {key} does not match the rope of this config ({config.rope}, rope_dim "
                    f"{config.rope_dim}): wrong model size or variant?"
                )
            continue
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value
    return out


def check_dit_state(sd: Mapping[str, Any], config: SeedVR2DiTConfig) -> None:
    """Raise ModelError naming the first missing / unexpected / wrong-shape key.

    `sd` maps keys to tensors (any device, meta included) or to shapes."""
    want = expected_dit_shapes(config)
    for key in want:
        if key not in sd:
            raise ModelError(f"SeedVR2 DiT checkpoint is missing {key} (incomplete or not a SeedVR2 DiT file)")
    for key in sd:
        if key not in want:
            raise ModelError(f"SeedVR2 DiT checkpoint has unexpected key {key} (other model or variant?)")
    for key, shape in want.items():
        got = tuple(sd[key].shape) if hasattr(sd[key], "shape") else tuple(sd[key])
        if got != shape:
            raise ModelError(f"SeedVR2 DiT checkpoint key {key} has shape {list(got)}, expected {list(shape)}")


def infer_dit_preset(shapes: Mapping[str, Any]) -> str:
    """Tell "3b" from "7b" from a state dict's keys and shapes (tensors, meta tensors or shapes).

    3B: SwiGLU MLPs (`proj_in_gate`) and an output norm (`vid_out_norm.weight`), hidden 2560;
    7B: GELU MLPs with biases, no output norm, hidden 3072."""

    def shape(key: str) -> tuple[int, ...] | None:
        v = shapes.get(key)
        if v is None:
            return None
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    hid = shape("emb_in.proj_hid.weight")
    if hid is None:
        raise ModelError("not a SeedVR2 DiT state dict: emb_in.proj_hid.weight is missing")
    swiglu = any(k.endswith(".proj_in_gate.weight") for k in shapes)
    out_norm = "vid_out_norm.weight" in shapes
    if swiglu and out_norm and hid[0] == SeedVR2DiTConfig.preset("3b").dim:
        return "3b"
    if not swiglu and not out_norm and hid[0] == SeedVR2DiTConfig.preset("7b").dim:
        return "7b"
    raise ModelError(
        f"unrecognised SeedVR2 DiT (hidden {hid[0]}, swiglu={swiglu}, output norm={out_norm}): "
        "expected the official 3B or 7B"
    )
