"""The optional capabilities of vsrq's models and layers, named once.

A loaded model is a plain `VSRDiT` or a `SeedVR2Restorer` (DiT + VAE + text embedding), and a
linear layer a plain `nn.Linear` or a `QuantLinear`; the pipeline, CLI and quantizer ask a module
what it can do rather than which class it is. These protocols say what each capability means and
who provides it; the classes do not inherit from them (structural typing), and
tests/models/test_interfaces.py checks that the real classes satisfy the ones they should.

Two rules for the runtime checks:
- no `isinstance` against a protocol on a per-layer-call path: it costs 10-20 us on Python 3.11
  (the protocol's members are looked up on every call), about what a whole quantized layer call
  costs on the host. The layer helpers below (`normed_forward`, `residual_forward`) do one getattr.
- a protocol member is a method, a property, a class attribute or a plain instance attribute, never
  a submodule, parameter or buffer: from Python 3.12 `isinstance` looks members up with
  `inspect.getattr_static`, which does not see what nn.Module keeps in `_modules`/`_parameters`/
  `_buffers` (so "has a `dit` submodule" cannot be a protocol member).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from vsrq.pipeline.seedvr2 import SeedVR2Settings


# -- layers -------------------------------------------------------------------------------------

@runtime_checkable
class NormFusingLinear(Protocol):
    """A linear layer that can take its block's pre-norm: LayerNorm (no affine) of x, one (K,)
    adaLN modulation, the layer and optionally the GELU after it, in one pass over x instead of
    three (QuantLinear on the Triton path; used by `vsrq.models.dit.norm_linear`). It returns None
    where it declines (CPU reference, rotations, low-rank branches, hooks), and the caller then
    composes the norm, the modulation and the plain layer call itself."""

    def forward_normed(self, x: torch.Tensor, eps: float, shift: torch.Tensor | None,
                       scale: torch.Tensor | None, activation: str | None = None) -> torch.Tensor | None: ...


@runtime_checkable
class ResidualFusingLinear(Protocol):
    """A linear layer that can apply `residual + gate * self(x)` (gate (N,), one vector for every
    token) in its GEMM epilogue, so its own output is never written and read back (QuantLinear on
    the Triton path; used by `vsrq.models.dit.gated_residual`). None where it declines (CPU
    reference, hooks), and the caller composes the sum."""

    def forward_residual(self, x: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | None: ...


if TYPE_CHECKING:  # the bound methods: (x, eps, shift, scale, activation) and (x, gate, residual)
    NormedForward = Callable[[torch.Tensor, float, torch.Tensor | None, torch.Tensor | None, str | None],
                             torch.Tensor | None]
    ResidualForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]


def normed_forward(layer: nn.Module) -> NormedForward | None:
    """`layer.forward_normed` where the layer is a `NormFusingLinear`, else None (runs on every
    layer call: one getattr, not an isinstance)."""
    return getattr(layer, "forward_normed", None)


def residual_forward(layer: nn.Module) -> ResidualForward | None:
    """`layer.forward_residual` where the layer is a `ResidualFusingLinear`, else None (runs on
    every layer call: one getattr, not an isinstance)."""
    return getattr(layer, "forward_residual", None)


# -- models -------------------------------------------------------------------------------------

class ModelConfig(Protocol):
    """What the pipeline reads from a model's `config` (DiTConfig, RestorerConfig)."""

    @property
    def scale(self) -> float:
        """Output size / input size."""
        ...

    @property
    def pixel_align(self) -> tuple[int, ...]:
        """Input pixels a tile origin must be a multiple of, (t, h, w) or (t, hw); [1] is read."""
        ...


@runtime_checkable
class VSRModel(Protocol):
    """A network `load_model` returns (VSRDiT, SeedVR2Restorer): `arch` names its family in
    checkpoints (`vsrq.arch`) and messages, `config` its shape, scale and tile alignment."""

    arch: str

    @property
    def config(self) -> ModelConfig: ...


@runtime_checkable
class FoldableModel(Protocol):
    """A model whose constant adaLN modulation can be folded into stored vectors (VSRDiT; see
    vsrq.models.dit): the quantizer folds before calibrating (`vsrq.quant.engine.fold_constants`),
    checkpoints keep the folded vectors exact and say so in their metadata."""

    @property
    def folded(self) -> bool:
        """Whether the modulation is stored as vectors (inference form)."""
        ...

    @property
    def exact_tensor_names(self) -> list[str]:
        """State-dict keys a checkpoint keeps in their own dtype (the folded vectors)."""
        ...

    def fold_modulation_(self) -> nn.Module:
        """Fold in place (a no-op once folded); returns the model."""
        ...


@runtime_checkable
class ManagedRestorer(Protocol):
    """A restorer of several networks run as one (SeedVR2Restorer), not a plain network: the CLI
    fills its per-run `settings` from its options (and a resumed job must share them), it places
    itself on a device (DiT block offload keeps blocks in host memory), prefers its own chunking,
    and its attention windows would change under frame tiles (memory is saved in other ways)."""

    settings: SeedVR2Settings
    preferred_chunk: tuple[int, int]  # frames per chunk and cross-faded overlap

    def place(self, device: torch.device, dtype: torch.dtype) -> nn.Module: ...


@runtime_checkable
class PartlyQuantized(Protocol):
    """A model of which `vsrq quantize` quantizes and writes one part (SeedVR2Restorer: the DiT);
    calibration still runs the whole model, so the part sees the inputs it really gets."""

    quant_part: str  # the submodule quantized and written
    quant_keep: tuple[str, ...]  # module names kept 16-bit (small, or outside the part)

    def quantized_checkpoint(self) -> tuple[nn.Module, str, dict]:
        """What is written after quantization: (network, its `vsrq.arch`, its config dict)."""
        ...


DEFAULT_CHUNK = (8, 2)  # frames per chunk and overlap for models that prefer none (the vsrq DiTs)


def preferred_chunk(module: nn.Module) -> tuple[int, int]:
    """The (chunk, overlap) a model prefers (`ManagedRestorer.preferred_chunk`), else DEFAULT_CHUNK."""
    return getattr(module, "preferred_chunk", DEFAULT_CHUNK)


def is_folded(module: nn.Module) -> bool:
    """Whether a model holds its adaLN modulation folded (`FoldableModel.folded`); False for models
    that cannot fold."""
    return isinstance(module, FoldableModel) and module.folded
