"""Quantization recipes: every method of the literature as a switchable field, plus named presets.

A recipe is plain data (a dataclass, or a TOML file with the same keys), so an ablation row is
"preset X with field Y changed", and the checkpoint records exactly what produced it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from vsrq.errors import VsrqError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Layers that stay in 16-bit unless a recipe says otherwise: they are small or run once per clip
# (patch embedding, timestep MLP, adaLN modulation, output head); measured in docs/QUANT.md.
DEFAULT_KEEP = ("patch_embed", "t_embed", "adaln", "head")


@dataclass(frozen=True)
class Recipe:
    """What `vsrq quantize` does to each linear layer of a model (see docs/QUANT.md)."""

    name: str = "rtn"
    w_bits: int = 4
    a_bits: int = 4
    group_size: int | None = None  # weights: None = per output channel, else group along K
    act_group_size: int | None = None  # activations: None = per token (dynamic), else per group
    symmetric: bool = True
    # SmoothQuant: per-channel scale s_j = max|X_j|^a / max|W_j|^(1-a); "search" picks a per layer
    smooth: str | None = None  # None | "fixed" | "search"
    smooth_alpha: float = 0.5
    rotate: bool = False  # QuaRot-style block Hadamard on K (online for activations)
    # ViDiT-Q's static-dynamic channel balancing: a static per-channel scale (smoothing) followed by
    # the online rotation (dynamic). On this one-timestep model that pair is `smooth` + `rotate`
    # (docs/QUANT.md); "static-dynamic" adds, as smoothing candidates, scales computed from the
    # channel ranges the calibration clips share (median over clips) beside the all-token max
    balance: str | None = None  # None | "static-dynamic" (needs smooth and rotate)
    # 16-bit low-rank branch (SVDQuant / QuantVSR / LSGQuant / MPQ-DMv2)
    rank: int = 0
    rank_alloc: str = "uniform"  # "uniform" | "stca" (by spatio-temporal complexity, QuantVSR)
    lowrank_init: str = "svd_weight"  # "svd_weight" (SVDQuant) | "svd_error" (MPQ-DMv2: SVD of W - Q(W))
    granularity_search: bool = False  # Q-DiT: per-layer weight group size chosen under a cost budget
    # MPQ-DMv2-style binary residual branch (vsrq/quant/binres.py): this share of each quantized
    # layer's weights (per output row round(share * K), at least 1) gets a +-scale correction of
    # its quantization residual, the largest residuals of the row; the low-bit grid may then clip
    binary_residual: float = 0.0  # share in [0, 0.25]; 0 = off
    act_clip: str | None = None  # None | "draq" (LSGQuant: per-layer activation range ratio fitted to token ranges)
    bias_align: str | None = None  # None | "mean" (closed form) | "learn" (LBA, QuantVSR)
    refine: str | None = None  # None | "qao" (LSGQuant) | "joint" (QuantVSR) | "lbq" (PassionSR boundaries)
    refine_steps: int = 0
    refine_layers: float = 1.0  # VOLTS: fraction of layers (by calibration variance) that are refined
    # Mixed precision (MPQ): promote the layers whose measured effect on the model output per extra
    # bit is largest to W{mixed_bits}A{mixed_bits} while the average bits/weight stay <= mixed_budget
    mixed_budget: float = 0.0  # 0 = off
    mixed_bits: int = 8
    # Against flicker (issue 4, vsrq/quant/flicker.py): raise only the *activations* of the layers
    # whose rounding makes the output change most from frame to frame (static noisy calibration
    # clips, per activation value) to flicker_bits, weights unchanged, until flicker_budget of the
    # quantized layers' activation values per token are raised; layers the mixed step made
    # W{mixed_bits}A{mixed_bits} are not candidates
    flicker_budget: float = 0.0  # share in [0, 1]; 0 = off
    flicker_bits: int = 8
    keep: tuple[str, ...] = DEFAULT_KEEP  # name fragments of layers left in 16-bit
    # Fold the constant adaLN modulation into stored vectors before anything else (exact; removes
    # the timestep MLP and adaLN layers, a third of a DiT block's weights; docs/FORMAT.md)
    fold_modulation: bool = True
    calib_tokens: int = 4096  # tokens sampled per layer and calibration clip
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 2 <= self.w_bits <= 8 or not 2 <= self.a_bits <= 8:
            raise VsrqError(f"bits must be 2..8 for weights and activations, got W{self.w_bits}A{self.a_bits}")
        choices = {
            "smooth": (None, "fixed", "search"),
            "rank_alloc": ("uniform", "stca"),
            "lowrank_init": ("svd_weight", "svd_error"),
            "act_clip": (None, "draq"),
            "bias_align": (None, "mean", "learn"),
            "refine": (None, "qao", "joint", "lbq"),
            "balance": (None, "static-dynamic"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise VsrqError(f"recipe {self.name!r}: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.mixed_budget and not (self.w_bits < self.mixed_bits <= 8 and self.mixed_budget > self.w_bits):
            raise VsrqError(f"recipe {self.name!r}: mixed precision needs w_bits < mixed_bits <= 8 and mixed_budget > w_bits")
        if self.flicker_budget and not (0 < self.flicker_budget <= 1 and self.a_bits < self.flicker_bits <= 8):
            raise VsrqError(f"recipe {self.name!r}: flicker_budget is a share in (0, 1] and needs a_bits < flicker_bits <= 8")
        if self.rank < 0 or self.refine_steps < 0 or not 0 < self.refine_layers <= 1:
            raise VsrqError(f"recipe {self.name!r}: rank and refine_steps must be >= 0, refine_layers in (0, 1]")
        if self.balance and not (self.smooth and self.rotate):
            raise VsrqError(f"recipe {self.name!r}: balance = {self.balance!r} is ViDiT-Q's static scaling followed by "
                            "the dynamic rotation: it needs smooth = 'fixed' or 'search' and rotate = true")
        if isinstance(self.binary_residual, bool) or not isinstance(self.binary_residual, (int, float)) \
                or not 0.0 <= self.binary_residual <= 0.25:
            raise VsrqError(f"recipe {self.name!r}: binary_residual is the share of weights with a binary residual "
                            f"entry, a number in [0, 0.25], got {self.binary_residual!r}")
        if self.binary_residual and (self.refine or self.bias_align == "learn"):
            raise VsrqError(f"recipe {self.name!r}: binary_residual cannot be combined with gradient refinement "
                            "(refine, bias_align = 'learn'): refinement re-quantizes the weights without the branch")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep"] = list(self.keep)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise VsrqError(f"unknown recipe keys {sorted(unknown)} (known: {sorted(known)})")
        d = dict(d)
        if "keep" in d:
            d["keep"] = tuple(d["keep"])
        return cls(**d)


def _presets() -> dict[str, Recipe]:
    base = Recipe()
    p = {
        "rtn-w8a8": replace(base, name="rtn-w8a8", w_bits=8, a_bits=8),
        "rtn": base,
        # per-group (32 values) dynamic activation scales: finer steps than per token, no calibration;
        # the numerics vsrq-tiny was trained through (vsrq train --qat, docs/QUANT.md)
        "rtn-a32": replace(base, name="rtn-a32", act_group_size=32),
        "smoothquant": replace(base, name="smoothquant", smooth="search"),
        "quarot": replace(base, name="quarot", rotate=True),
        "svdquant": replace(base, name="svdquant", smooth="search", rank=16),
        "qdit": replace(base, name="qdit", granularity_search=True),
        "lba": replace(base, name="lba", bias_align="mean"),
        "draq": replace(base, name="draq", act_clip="draq"),
        "stca": replace(base, name="stca", smooth="search", rank=16, rank_alloc="stca"),
        "mpq-lowrank": replace(base, name="mpq-lowrank", rank=16, lowrank_init="svd_error"),
        "qao": replace(base, name="qao", smooth="search", rank=16, refine="qao", refine_steps=200, refine_layers=0.5),
        "joint": replace(base, name="joint", smooth="search", rank=16, bias_align="learn", refine="joint", refine_steps=200),
        "lbq": replace(base, name="lbq", refine="lbq", refine_steps=200),
        "mpq": replace(base, name="mpq", mixed_budget=4.5),
        # MPQ-DMv2's binary residual branch on RTN: 2 % of each layer's weights (2 per row at K = 96)
        "mpq-binary": replace(base, name="mpq-binary", binary_residual=0.02),
        # ViDiT-Q's channel balancing reduced to one timestep (static smoothing + dynamic rotation), and
        # with the static scale also drawn from the channel ranges the calibration clips share
        "vidit-q": replace(base, name="vidit-q", smooth="search", rotate=True),
        "vidit-balance": replace(base, name="vidit-balance", smooth="search", rotate=True, balance="static-dynamic"),
        # Combinations measured in docs/QUANT.md: every component that helped alone, without and
        # with a (small) low-rank branch, whose bits count heavily on narrow layers.
        "combo": replace(base, name="combo", smooth="search", rotate=True, act_clip="draq", bias_align="mean"),
        "combo-mpq": replace(base, name="combo-mpq", smooth="search", rotate=True, act_clip="draq", bias_align="mean",
                             mixed_budget=4.6),
        # combo + QuantVSR-style joint refinement without a low-rank branch (weight steps and learned
        # bias alignment) + mixed precision; the shipped vsrq-tiny recipe since the GPU-trained model.
        "combo-joint-mpq": replace(base, name="combo-joint-mpq", smooth="search", rotate=True, act_clip="draq",
                                   bias_align="learn", refine="joint", refine_steps=200, mixed_budget=4.6),
        "combo-lr": replace(base, name="combo-lr", smooth="search", rotate=True, act_clip="draq", bias_align="learn",
                            rank=8, rank_alloc="stca", refine="joint", refine_steps=200),
    }
    # combo-joint-mpq against flicker (issue 4, docs/QUANT.md): 8-bit activations (weights stay
    # 4-bit) for the layers that flicker most per activation value, up to half of the activation
    # values ("-steady"), or for every layer ("-a8": W4A8 but for the mixed step's W8A8 layers)
    for suffix, share in (("steady", 0.5), ("a8", 1.0)):
        name = f"combo-joint-mpq-{suffix}"
        p[name] = replace(p["combo-joint-mpq"], name=name, flicker_budget=share)
    return p


PRESETS = _presets()


def load_recipe(spec: str, **overrides) -> Recipe:
    """A preset name or a recipe TOML file (keys of Recipe; `base = "preset"` to start from one)."""
    if spec in PRESETS:
        recipe = PRESETS[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            raise VsrqError(f"unknown method {spec!r}: choose one of {', '.join(PRESETS)} or give a recipe .toml file")
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise VsrqError(f"cannot read recipe {path}: {exc}") from exc
        base = data.pop("base", "rtn")
        if base not in PRESETS:
            raise VsrqError(f"{path}: base {base!r} is not a preset ({', '.join(PRESETS)})")
        recipe = Recipe.from_dict({**PRESETS[base].to_dict(), "name": path.stem, **data})
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Recipe.from_dict({**recipe.to_dict(), **clean}) if clean else recipe
