"""Build a network from a registry entry or a checkpoint file, and load its safetensors weights.

Our checkpoints carry their architecture and config in the safetensors metadata (keys
`vsrq.arch`, `vsrq.config`, `vsrq.precision`), so `--model some/file.safetensors` works without a
registry entry; a registry entry's config, when given, must agree with the file's. Variants of an
architecture that change its tensors (a DiT with folded adaLN modulation) are told apart by the
state dict's keys, spandrel-style, so files written before a variant existed still load.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vsrq.errors import ModelError
from vsrq.models.dit import DiTConfig, VSRDiT, state_is_folded
from vsrq.models.interfaces import is_folded
from vsrq.models.registry import ModelSpec, find_local, is_quantized, load_registry, resolve_files, verify_sha256
from vsrq.quant.checkpoint import FOLDED_META, install_quantized, quant_report, quantized_layer_names, write_checkpoint


@dataclass(frozen=True)
class Architecture:
    """How to build one family of networks from a config dict and, when loading, the checkpoint's
    tensor names (which pick the variant the file holds; none: the trainable form)."""

    name: str
    build: Callable[[dict, Collection[str]], nn.Module]
    config_of: Callable[[nn.Module], dict]


ARCHITECTURES: dict[str, Architecture] = {
    "vsrq-dit": Architecture(
        "vsrq-dit",
        build=lambda cfg, keys=(): VSRDiT(DiTConfig.from_dict(cfg), folded=state_is_folded(keys)),
        config_of=lambda model: model.config.to_dict(),
    ),
}


@dataclass
class LoadedModel:
    """A ready network plus what the CLI reports about it."""

    name: str
    module: nn.Module
    precision: str
    weights_path: Path
    quant: dict = field(default_factory=dict)
    other_files: dict[str, Path] = field(default_factory=dict)  # beside the weights (SeedVR2: vae, text)

    @property
    def scale(self) -> float:
        """The model's native scale (an int where it is whole, as the vsrq DiTs' always are)."""
        s = self.module.config.scale
        return int(s) if float(s).is_integer() else float(s)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is refused with the reason."""
    if path.suffix in {".pth", ".pt", ".ckpt", ".bin"}:
        raise ModelError(f"{path}: only safetensors weights are loaded (pickle files can run code); convert it first")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file, corrupt or truncated ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    return tensors, meta


FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def save_checkpoint(module: nn.Module, path: Path, *, arch: str, precision: str, extra_meta: dict[str, str] | None = None) -> None:
    """Write a float model's weights in `precision` with the metadata `read_checkpoint` needs, atomically."""
    dtype = FLOAT_DTYPES.get(precision)
    write_checkpoint(module, path, arch=arch, config=ARCHITECTURES[arch].config_of(module), precision=precision,
                     float_dtype=dtype, extra_meta=extra_meta)


def _configs_agree(registry_cfg: dict, file_cfg: dict) -> list[str]:
    """Keys where a registry entry's config disagrees with the checkpoint's own."""
    bad = []
    for key, value in registry_cfg.items():
        theirs = file_cfg.get(key)
        norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
        if key not in file_cfg or norm(theirs) != norm(value):
            bad.append(f"{key}={value!r} (file: {theirs!r})")
    return bad


def build_from_checkpoint(name: str, path: Path, spec: ModelSpec | None = None) -> LoadedModel:
    tensors, meta = read_checkpoint(path)
    arch = meta.get("vsrq.arch") or (spec.arch if spec else None)
    if arch is None:
        raise ModelError(f"{path}: no 'vsrq.arch' in its metadata; not a vsrq checkpoint")
    if spec and arch != spec.arch:
        raise ModelError(f"{path}: holds a {arch!r} model but {name!r} is registered as {spec.arch!r}")
    if arch not in ARCHITECTURES:
        raise ModelError(f"{path}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    file_cfg = json.loads(meta["vsrq.config"]) if "vsrq.config" in meta else None
    config = file_cfg if file_cfg is not None else (spec.config if spec else None)
    if config is None:
        raise ModelError(f"{path}: no config in the file or the registry")
    if spec and file_cfg is not None and (bad := _configs_agree(spec.config, file_cfg)):
        raise ModelError(f"{path}: config disagrees with registry entry {name!r}: {', '.join(bad)}")
    precision = meta.get("vsrq.precision") or (spec.precision if spec else "fp32")
    try:
        module = ARCHITECTURES[arch].build(config, tensors.keys())
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: bad {arch} config: {exc}") from exc
    if meta.get(FOLDED_META) and not is_folded(module):
        raise ModelError(f"{path}: its metadata says the {meta[FOLDED_META]} modulation is folded, but it holds no folded vectors (damaged file)")
    if quantized_layer_names(tensors):
        install_quantized(module, tensors)
    elif is_quantized(precision):
        raise ModelError(f"{path}: says {precision} but holds no quantized layers")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)})")
        raise ModelError(f"{path}: tensors do not match a {arch} model with this config: {'; '.join(parts)}")
    module.load_state_dict({k: v.float() if v.is_floating_point() and expected[k].is_floating_point() and expected[k].dtype == torch.float32 else v for k, v in tensors.items()})
    return LoadedModel(name=name, module=module.eval(), precision=precision, weights_path=path, quant=quant_report(meta))


def fold_checkpoint(src: Path, dst: Path) -> LoadedModel:
    """Re-write a checkpoint with its constant adaLN modulation folded (docs/FORMAT.md), e.g. one
    written before `vsrq quantize` folded. Every other tensor keeps its stored form and dtype
    (quantized files' 16-bit layers fp16, as `save_quantized` writes them), the metadata is kept
    (the writer stamps its own `vsrq.version`). Returns the folded model."""
    loaded = build_from_checkpoint(src.stem, src)
    with safe_open(str(src), framework="pt", device="cpu") as fh:
        meta = dict(fh.metadata() or {})
    module = loaded.module.fold_modulation_()
    kept = {k: v for k, v in meta.items() if k not in {"vsrq.arch", "vsrq.config", "vsrq.precision", "vsrq.version"}}
    write_checkpoint(module, dst, arch=module.arch, config=json.loads(meta["vsrq.config"]), precision=loaded.precision,
                     float_dtype=FLOAT_DTYPES.get(loaded.precision, torch.float16), extra_meta=kept)
    return loaded


SEEDVR2_CONFIG_KEYS = {"dit", "scale"}


def load_seedvr2(name: str, files: dict[str, Path], config: dict) -> LoadedModel:
    """A SeedVR2 restorer from its DiT, VAE and text-embedding files (vsrq/models/seedvr2/load.py)."""
    from vsrq.models.seedvr2.load import load_dit, load_text, load_vae
    from vsrq.pipeline.seedvr2 import SeedVR2Restorer, SeedVR2Settings

    unknown = set(config) - SEEDVR2_CONFIG_KEYS
    if unknown:
        raise ModelError(f"model {name!r}: unknown SeedVR2 config keys {sorted(unknown)} (allowed: {sorted(SEEDVR2_CONFIG_KEYS)})")
    for role in ("vae", "text"):
        if role not in files:
            raise ModelError(f"model {name!r}: a SeedVR2 model needs a {role} file (registry: files.{role})")
    dit, precision, quant = load_dit(files["weights"], config.get("dit"))
    text = load_text(files["text"])
    width = dit.cfg.txt_in_dim or dit.cfg.dim  # what the DiT's text input layer takes
    if text.shape[-1] != width:
        raise ModelError(f"{files['text']}: text embedding of width {text.shape[-1]}, this DiT takes {width} "
                         "(a file from another model?)")
    restorer = SeedVR2Restorer(dit, load_vae(files["vae"]), text,
                               SeedVR2Settings(scale=float(config.get("scale", 2))))
    return LoadedModel(name=name, module=restorer.eval(), precision=precision, weights_path=files["weights"], quant=quant,
                       other_files={role: Path(p) for role, p in files.items() if role != "weights"})


def _seedvr2_parts_for(path: Path, models: dict[str, ModelSpec]) -> dict[str, Path]:
    """VAE and text files for a SeedVR2 DiT given by path: beside it (official names), else those
    of a registered SeedVR2 model already on this machine (verified)."""
    from vsrq.models.seedvr2.load import TEXT_NAMES, VAE_NAMES, companions

    found = companions(path.parent)
    for spec in models.values():
        if spec.arch != "seedvr2":
            continue
        for role, part in spec.files.items():
            if role not in found and (local := find_local(part)) is not None:
                verify_sha256(local, part.sha256, f"model {spec.name!r} ({role})")
                found[role] = local
    missing = [f"{role} ({' or '.join(names)})" for role, names in (("vae", VAE_NAMES), ("text", TEXT_NAMES)) if role not in found]
    if missing:
        raise ModelError(f"{path} is a SeedVR2 DiT; it needs {' and '.join(missing)} beside it in {path.parent} "
                         "(or a registered SeedVR2 model's files on this machine; see `vsrq models`)")
    return {"weights": path, **found}


def _resolve(name_or_path: str | None) -> tuple[dict[str, ModelSpec], str, Path | None]:
    """(registry, key, path): `path` is None for a registry name; a key that is neither is an error."""
    models, default = load_registry()
    key = name_or_path or default
    if key in models:
        return models, key, None
    path = Path(key).expanduser()
    if path.suffix in {".safetensors", ".pth", ".pt", ".ckpt", ".bin"} or path.exists():
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return models, key, path
    raise ModelError(f"unknown model {key!r}; known: {', '.join(sorted(models))} (or a path to a .safetensors file)")


def is_seedvr2_model(name_or_path: str | None) -> bool | None:
    """Whether a model is SeedVR2, told without loading it: from the registry, or from a safetensors
    header; None when only loading would tell (pickled checkpoints, or a name that does not resolve,
    whose error loading reports)."""
    try:
        models, key, path = _resolve(name_or_path)
    except ModelError:
        return None
    if path is None:
        return models[key].arch == "seedvr2"
    if path.suffix == ".safetensors":
        from vsrq.models.seedvr2.load import is_seedvr2_dit_file

        return is_seedvr2_dit_file(path)
    return None


def load_model(name_or_path: str | None) -> LoadedModel:
    """A registry name, a path to a checkpoint, or None for the default model.

    Works inside ``torch.inference_mode()`` too: the module is built with inference mode off
    (building writes into its buffers, which inference tensors refuse), then runs in any mode.
    """
    with torch.inference_mode(False):
        return _load_model(name_or_path)


def _load_model(name_or_path: str | None) -> LoadedModel:
    models, key, path = _resolve(name_or_path)
    if path is None:
        spec = models[key]
        if spec.arch == "seedvr2":
            return load_seedvr2(key, resolve_files(spec), spec.config)
        return build_from_checkpoint(key, resolve_files(spec)["weights"], spec)
    from vsrq.models.seedvr2.load import is_seedvr2_dit_file

    if is_seedvr2_dit_file(path):
        return load_seedvr2(path.stem, _seedvr2_parts_for(path, models), {})
    return build_from_checkpoint(path.stem, path)
