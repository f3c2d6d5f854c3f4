"""Quantization-aware training (QAT): train a float model through the exact numerics of a recipe.

Why: on the GPU-trained default, post-training recipes leave W4A4 0.37 dB below fp16 and make it
flicker (every 4-bit activation re-draws its rounding error each frame; docs/QUANT.md). Training
with the quantizer in the forward pass lets every weight, normalisation and convolution of the
model adapt to that error, on the training clips and with the temporal loss, which calibration on
a few clips cannot do.

How: ``prepare_qat`` swaps each layer the recipe quantizes for a :class:`FakeQuantLinear`, an
``nn.Linear`` (same ``weight``/``bias`` parameters, same state-dict keys, so the trainer's state,
EMA and export are unchanged) whose forward is the recipe's quantized forward, with
straight-through gradients for the two roundings. Only recipes whose numerics are fixed by the
weights alone qualify (RTN, optionally the Hadamard rotation, any bits and group sizes): anything
fitted on calibration data (smoothing, clip ratios, low-rank branches, bias alignment, refinement,
mixed precision) would change the numerics after training. ``vsrq quantize --method <the same
recipe>`` on the exported float weights then stores integers whose forward is the trained one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vsrq.errors import VsrqError
from vsrq.kernels.reference import transform_input
from vsrq.quant.calibrate import target_layers
from vsrq.quant.methods import hadamard_block_for
from vsrq.quant.pack import fake_quant_activation, fake_quant_weight
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import Recipe

__all__ = ["FakeQuantLinear", "check_qat_recipe", "prepare_qat"]

# Recipe fields that fit values on calibration data; QAT needs them at their "off" value. A new
# data-fitted Recipe field must be added here, or QAT would accept it and train other numerics.
_DATA_FITTED = {"smooth": None, "rank": 0, "act_clip": None, "bias_align": None, "refine": None,
                "granularity_search": False, "mixed_budget": 0.0, "flicker_budget": 0.0,
                "balance": None, "binary_residual": 0.0}


def check_qat_recipe(recipe: Recipe) -> None:
    """Refuse a recipe whose quantized numerics are not a function of the weights alone."""
    bad = [f"{k}={getattr(recipe, k)!r}" for k, off in _DATA_FITTED.items() if getattr(recipe, k) != off]
    if bad:
        raise VsrqError(
            f"recipe {recipe.name!r} cannot be trained through: {', '.join(bad)} fit(s) values on calibration "
            "data; use a recipe of round-to-nearest and rotation only (e.g. rtn-a32, rtn, quarot, rtn-w8a8)"
        )


def _ste(exact: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, the gradient of `exact` in the backward pass."""
    return exact + (value - exact).detach()


class FakeQuantLinear(nn.Linear):
    """An nn.Linear whose forward is QuantLinear's numerics for RTN weights and dynamic activations.

    Computed in float32 whatever the autocast (the quantizers are defined in float32); under
    autocast the output is cast to the autocast dtype, as an nn.Linear's would be. Forward value:
    x_hat = x H (block Hadamard when rotating), per-token (or per-group) dynamic quantization of
    x_hat; W' = W H quantized per channel (or group) with fp16-stored scales, as
    ``QuantLinear.from_linear``; y = Q(x_hat) Q(W')^T + b. Gradients pass straight through both
    roundings to x and W.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, w_bits: int = 4, a_bits: int = 4,
                 group_size: int | None = None, act_group_size: int | None = None, symmetric: bool = True,
                 hadamard_block: int = 0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.group_size, self.act_group_size = group_size, act_group_size
        self.symmetric, self.hadamard_block = symmetric, hadamard_block

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe) -> "FakeQuantLinear":
        """The layer as `recipe` would quantize it (same group choices as methods.build); shares
        the linear's parameters, so an optimizer built on them keeps working."""
        k = linear.in_features
        group = recipe.group_size
        agroup = recipe.act_group_size if recipe.act_group_size is not None else group
        had = hadamard_block_for(k) if recipe.rotate else 0
        mod = cls(k, linear.out_features, linear.bias is not None, w_bits=recipe.w_bits, a_bits=recipe.a_bits,
                  group_size=None if group in (None, k) else group, act_group_size=None if agroup in (None, k) else agroup,
                  symmetric=recipe.symmetric, hadamard_block=had, device="meta")
        mod.weight = linear.weight
        mod.bias = linear.bias
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            shape = x.shape
            xh = transform_input(x.reshape(-1, shape[-1]), None, self.hadamard_block)
            xq = _ste(xh, fake_quant_activation(xh.detach(), self.a_bits, self.act_group_size))
            w = QuantLinear.transform_weight(self.weight, None, self.hadamard_block)
            wq = _ste(w, fake_quant_weight(w.detach(), self.w_bits, self.group_size, self.symmetric, torch.float16))
            y = F.linear(xq, wq, None if self.bias is None else self.bias.float())
        if torch.is_autocast_enabled(x.device.type):  # hand on what an autocast nn.Linear would
            y = y.to(torch.get_autocast_dtype(x.device.type))
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}, group_size={self.group_size}, "
                f"act_group_size={self.act_group_size}, hadamard_block={self.hadamard_block}")


def prepare_qat(model: nn.Module, recipe: Recipe) -> list[str]:
    """Swap, in place, every layer `recipe` quantizes for its FakeQuantLinear; returns their names.

    The modulation layers are left as they are: the recipe's keep list covers them, and when
    ``fold_modulation`` is on they become constant vectors at quantization time (exact).
    """
    check_qat_recipe(recipe)
    names = target_layers(model, recipe.keep)
    for name in names:
        parent, _, attr = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, attr, FakeQuantLinear.from_linear(getattr(holder, attr), recipe))
    return names
