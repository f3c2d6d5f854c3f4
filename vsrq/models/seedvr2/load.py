"""Load a SeedVR2 model from its three files: DiT weights, VAE weights, text embedding.

The DiT file is the official `.pth`, a safetensors re-upload with the official key names
(detected 3B or 7B from its tensors, spandrel-style), or a vsrq checkpoint of the DiT (written by
`vsrq quantize`, metadata `vsrq.arch = seedvr2-dit`). Pickle files are read with
`torch.load(weights_only=True)`, which refuses anything but tensors and containers. Modules are
built on the meta device and take the file's tensors as they are (`assign=True`), so loading
costs the file's size in memory, not a float32 copy on top.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vsrq.errors import ModelError
from vsrq.quant.checkpoint import install_quantized, quant_report, quantized_layer_names

from .dit import SeedVR2DiT, SeedVR2DiTConfig
from .dit_keys import check_dit_state, dit_state_from_official, infer_dit_preset
from .vae import SeedVR2VAE, SeedVR2VAEConfig
from .vae_keys import check_vae_state, vae_state_from_official

DIT_ARCH = "seedvr2-dit"  # metadata arch of a vsrq-written SeedVR2 DiT checkpoint
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def read_tensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (memory-mapped where the format allows) and the metadata of a weights file."""
    try:
        if path.suffix in PICKLE_SUFFIXES:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                obj = obj["state_dict"]
            if isinstance(obj, torch.Tensor):
                return {"": obj}, {}
            if not isinstance(obj, Mapping):
                raise ModelError(f"{what} {path}: holds a {type(obj).__name__}, not tensors")
            return dict(obj), {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except ModelError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{what} {path}: unreadable, corrupt or truncated ({first})") from exc
    except Exception as exc:  # noqa: BLE001 - weights_only refuses pickles with code: one line for the user
        raise ModelError(f"{what} {path}: not a plain tensor file ({type(exc).__name__}); refusing to unpickle it") from exc


def _stored_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = [v.dtype for v in tensors.values() if v.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{what}: {str(exc).splitlines()[0]}") from exc


def load_dit(path: Path, expect_preset: str | None = None) -> tuple[SeedVR2DiT, str, dict]:
    """(module, precision label, quantization report) from an official or a vsrq DiT file."""
    tensors, meta = read_tensors(path, "SeedVR2 DiT")
    if meta.get("vsrq.arch") == DIT_ARCH:
        try:
            cfg = SeedVR2DiTConfig.from_dict(json.loads(meta["vsrq.config"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"{path}: bad SeedVR2 DiT config in its metadata ({exc})") from exc
        with torch.device("meta"):
            module = SeedVR2DiT(cfg)
        if quantized_layer_names(tensors):
            install_quantized(module, tensors)
        expected = module.state_dict()
        bad = sorted(set(expected) ^ set(tensors))
        if bad:
            raise ModelError(f"{path}: tensors do not match a SeedVR2 DiT with its config (e.g. {bad[0]})")
        _assign(module, tensors, str(path))
        precision = meta.get("vsrq.precision", DTYPE_NAMES.get(_stored_dtype(tensors), "fp32"))
        return module.eval(), precision, quant_report(meta)
    if meta.get("vsrq.arch"):
        raise ModelError(f"{path}: holds a {meta['vsrq.arch']!r} model, not a SeedVR2 DiT")
    preset = infer_dit_preset(tensors)
    if expect_preset is not None and preset != expect_preset:
        raise ModelError(f"{path}: holds a SeedVR2-{preset.upper()} DiT, the registry entry expects {expect_preset.upper()}")
    cfg = SeedVR2DiTConfig.preset(preset)
    state = dit_state_from_official(tensors, cfg, dtype=None)
    check_dit_state(state, cfg)
    with torch.device("meta"):
        module = SeedVR2DiT(cfg)
    _assign(module, state, str(path))
    return module.eval(), DTYPE_NAMES.get(_stored_dtype(state), "fp32"), {}


def load_vae(path: Path, config: SeedVR2VAEConfig | None = None) -> SeedVR2VAE:
    """The official VAE file, or one of another shape whose safetensors metadata holds `vsrq.config`."""
    tensors, meta = read_tensors(path, "SeedVR2 VAE")
    if config is None and "vsrq.config" in meta:
        try:
            config = SeedVR2VAEConfig.from_dict(json.loads(meta["vsrq.config"]))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: bad SeedVR2 VAE config in its metadata ({exc})") from exc
    state = vae_state_from_official(tensors, dtype=_stored_dtype(tensors))
    with torch.device("meta"):
        module = SeedVR2VAE(config or SeedVR2VAEConfig.preset("seedvr2"))
    check_vae_state(module, state)
    _assign(module, state, str(path))
    return module.eval()


def load_text(path: Path) -> torch.Tensor:
    """The precomputed positive prompt embedding, (L, 5120): a tensor file or a one-tensor safetensors."""
    tensors, _ = read_tensors(path, "SeedVR2 text embedding")
    if len(tensors) != 1:
        raise ModelError(f"{path}: a text embedding file holds one tensor, this one holds {len(tensors)}")
    emb = next(iter(tensors.values()))
    if emb.ndim == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 2 or not emb.is_floating_point():
        raise ModelError(f"{path}: a text embedding is a float (tokens, channels) tensor, got {tuple(emb.shape)} {emb.dtype}")
    return emb.clone()


VAE_NAMES = ("ema_vae_fp16.safetensors", "ema_vae.safetensors", "ema_vae.pth")
TEXT_NAMES = ("pos_emb.pt", "pos_emb.safetensors")


def companions(folder: Path) -> dict[str, Path]:
    """The VAE and text-embedding files found beside a DiT file, by their official names."""
    found = {}
    for role, names in (("vae", VAE_NAMES), ("text", TEXT_NAMES)):
        for name in names:
            if (folder / name).is_file():
                found[role] = folder / name
                break
    return found


def is_seedvr2_dit_file(path: Path) -> bool:
    """Whether a weights file holds a SeedVR2 DiT (official keys or a vsrq seedvr2-dit checkpoint)."""
    try:
        if path.suffix in PICKLE_SUFFIXES:
            keys = read_tensors(path, "weights").__getitem__(0).keys()
            return "emb_in.proj_hid.weight" in keys
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            return meta.get("vsrq.arch") == DIT_ARCH or (not meta.get("vsrq.arch") and "emb_in.proj_hid.weight" in fh.keys())
    except (SafetensorError, OSError, ValueError, ModelError):
        return False
