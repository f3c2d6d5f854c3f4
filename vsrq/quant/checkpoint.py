"""The packed low-bit checkpoint: one safetensors file, loadable with no calibration code.

Quantized layers are stored as their QuantLinear buffers (packed int4 `qweight`, `wscale`,
optional `wzero`, `smooth`, `lora_down`/`lora_up`, `bias`, `bias_align` and the `qmeta`
config vector) under the layer's name; every other tensor is the float model's own. The file's
metadata carries the architecture, model config, precision and the quantization report
(recipe, per-layer choices, calibration summary), and `vsrq.folded` when the model's constant
adaLN modulation is stored folded. Layout: docs/FORMAT.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vsrq.errors import ModelError
from vsrq.io.output_path import publish
from vsrq.models.interfaces import FoldableModel, is_folded
from vsrq.quant.qlinear import QuantLinear


FOLDED_META = "vsrq.folded"  # metadata key; value: what was folded ("adaln")


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantized_layer_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k[: -len(".qmeta")] for k in tensors if k.endswith(".qmeta"))


def install_quantized(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Swap the linears named in a checkpoint for QuantLinears built from their stored config."""
    for name in quantized_layer_names(tensors):
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ModelError(f"quantized layer {name!r} does not exist in this architecture") from exc
        if not isinstance(old, nn.Linear):
            raise ModelError(f"quantized layer {name!r} replaces a {type(old).__name__}, not a Linear")
        try:
            q = QuantLinear.from_state_dict(tensors, prefix=name + ".")
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ModelError(f"quantized layer {name!r} is damaged: {str(exc).splitlines()[0]}") from exc
        if (q.in_features, q.out_features) != (old.in_features, old.out_features):
            raise ModelError(f"quantized layer {name!r} is {q.in_features}->{q.out_features}, the model expects {old.in_features}->{old.out_features}")
        set_module(model, name, q)
    return model


def quant_report(meta: dict[str, str]) -> dict:
    return json.loads(meta.get("vsrq.quant", "{}"))


def write_checkpoint(model: nn.Module, path: Path, *, arch: str, config: dict, precision: str,
                     float_dtype: torch.dtype | None, extra_meta: dict[str, str] | None = None) -> None:
    """Write any vsrq model atomically: float tensors in `float_dtype` (None keeps them), the
    buffers of QuantLinears and the tensors the model names in `exact_tensor_names` (folded
    constants) exactly as they are, and the metadata `read_checkpoint` needs."""
    from safetensors.torch import save_file

    import vsrq

    quant_prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, QuantLinear))
    exact = set(model.exact_tensor_names) if isinstance(model, FoldableModel) else set()
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if float_dtype is not None and v.is_floating_point() and k not in exact and not (quant_prefixes and k.startswith(quant_prefixes)):
            v = v.to(float_dtype)
        tensors[k] = v.contiguous()
    meta = {"vsrq.arch": arch, "vsrq.config": json.dumps(config), "vsrq.precision": precision,
            "vsrq.version": vsrq.__version__, **(extra_meta or {})}
    if is_folded(model):  # readers tell a folded model by its keys; this says so to people
        meta[FOLDED_META] = "adaln"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        publish(str(tmp), str(path))  # ordinary permissions (safetensors writes owner-only files)
    finally:
        tmp.unlink(missing_ok=True)


def save_quantized(model: nn.Module, path: Path, *, arch: str, config: dict, precision: str, report: dict, float_dtype: torch.dtype = torch.float16) -> None:
    """A quantized model: layers left in 16-bit as `float_dtype`, the report in `vsrq.quant`."""
    write_checkpoint(model, path, arch=arch, config=config, precision=precision, float_dtype=float_dtype,
                     extra_meta={"vsrq.quant": json.dumps(report)})
