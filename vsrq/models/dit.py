"""A one-step diffusion-transformer (DiT) for video super-resolution, in one readable file.

The network maps a low-resolution clip (B, 3, T, H, W) in [0, 1] to its x`scale` version in a single
forward pass (one fixed diffusion step, so the timestep only enters through adaLN modulation):

    LR clip -> 3D patches -> tokens -> N x [adaLN, 3D window attention with 3D RoPE, adaLN, MLP]
            -> adaLN head -> pixel-shuffle -> + upsampled LR (residual)

Windows shift by half a window in every other block (Swin-style cyclic shift), so information
crosses window borders. The token grid is padded to whole windows; padded keys and the roll's seam
are masked, which makes the result independent of how much padding a tile needed. All dense layers are `nn.Linear` so the
quantization engine can swap them for low-bit modules without the model knowing.

The timestep is a constant, so every adaLN output is one too: for inference
`VSRDiT.fold_modulation_()` stores those outputs as vectors and drops the timestep MLP and the
adaLN linears (a third of a block's weights); training keeps the layers.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.models.interfaces import normed_forward, residual_forward

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a VSR DiT; one class serves the embedded default and large configs."""

    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: Triple = (1, 2, 2)
    window: Triple = (4, 8, 8)
    scale: int = 4
    in_channels: int = 3
    timestep: float = 999.0
    rope_theta: float = 10000.0
    residual_mode: str = "bicubic"
    # Kernel (t, h, w) of a depthwise convolution added as a residual on the token grid before every
    # block and before the head (0, 0, 0: none). Windows attend only inside themselves and the head
    # maps each token to its own pixels; this gives every token its neighbours at a cost of
    # ~2 % of a block's multiply-adds (27 per channel and token against ~1300).
    local_conv: Triple = (0, 0, 0)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 6 for 3D RoPE")
        if any(self.local_conv) and not all(k > 0 and k % 2 for k in self.local_conv):
            raise ValueError(f"local_conv kernel {list(self.local_conv)} must be three odd sizes, or all 0 for none")
        if self.scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"unsupported scale {self.scale}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def pixel_align(self) -> Triple:
        """LR pixels per window along (t, h, w): tile offsets on this grid keep window layouts equal."""
        return tuple(p * w for p, w in zip(self.patch, self.window))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiT config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("patch", "window", "local_conv"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_3d(grid: Triple, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables (Tt*Ht*Wt, head_dim) for rotary embedding along t, h and w
    (see `apply_rope` for the sign).

    Each axis rotates head_dim // 6 frequency pairs; when head_dim is not a multiple of 6 (e.g. 128,
    as in SeedVR2-sized configs) the few pairs left over get angle 0, i.e. they are not rotated."""
    pairs = head_dim // 6  # frequency pairs per axis
    per_axis = 2 * pairs
    tables = []
    for axis, n in enumerate(grid):
        inv = 1.0 / theta ** (torch.arange(0, per_axis, 2, dtype=torch.float32, device=device) / per_axis)
        pos = torch.arange(n, dtype=torch.float32, device=device)
        ang = torch.outer(pos, inv)  # (n, pairs)
        shape = [1, 1, 1, pairs]
        shape[axis] = n
        tables.append(ang.view(shape).expand(*grid, pairs))
    spare = head_dim // 2 - 3 * pairs
    if spare:
        tables.append(torch.zeros(*grid, spare, device=device))
    ang = torch.cat(tables, dim=-1).reshape(-1, head_dim // 2)
    sin = ang.sin()
    return torch.cat([ang, ang], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, x * cos + [-x2, x1] * sin, with the sign folded into the table
    (`rope_3d`'s second output is [-sin, sin]): [x2, x1] * signed_sin is the same product
    bit for bit and saves the negation pass. x (..., L, head_dim); tables broadcast to x."""
    half = x.shape[-1] // 2
    turned = torch.cat([x[..., half:], x[..., :half]], dim=-1).mul_(signed_sin)
    return (x * cos).add_(turned)


def _window_geometry(grid: Triple, window: Triple, shifted: bool) -> tuple[Triple, Triple, Triple]:
    """Per axis: effective window, cyclic shift (half a window in shifted blocks) and padding after
    the grid to whole windows."""
    win, shift, after = [], [], []
    for n, w in zip(grid, window):
        w = min(w, n)
        win.append(w)
        shift.append(w // 2 if shifted and n > w else 0)
        after.append((-n) % w)
    return tuple(win), tuple(shift), tuple(after)  # type: ignore[return-value]


def _to_windows(x: torch.Tensor, win: Triple) -> torch.Tensor:
    """(B, T, H, W, C) with T, H, W multiples of win -> (B * nW, wt*wh*ww, C)."""
    b, t, h, w, c = x.shape
    wt, wh, ww = win
    x = x.view(b, t // wt, wt, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wt * wh * ww, c)


def _from_windows(x: torch.Tensor, win: Triple, padded: Triple, batch: int) -> torch.Tensor:
    wt, wh, ww = win
    t, h, w = padded
    c = x.shape[-1]
    x = x.view(batch, t // wt, h // wh, w // ww, wt, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, t, h, w, c)


def _roll(x: torch.Tensor, shift: Triple, sign: int) -> torch.Tensor:
    """Cyclic shift of the (T, H, W) axes of a (B, T, H, W, C) grid by sign * shift."""
    if not any(shift):
        return x
    return torch.roll(x, shifts=tuple(sign * s for s in shift), dims=(1, 2, 3))


@dataclass(frozen=True)
class WindowLayout:
    """How the token grid is cut into windows for one block (Swin-style cyclic shift + masks).

    The grid is padded after its end to whole windows and, in shifted blocks, rolled back by half a
    window, so every block attends over the same number of tokens. Attention may not cross the
    seam the roll creates (tokens from the grid's start and end share the last window) nor reach
    padding; only windows on the last row of an axis can contain either, so only those get a mask
    (`masked` = their indices, `mask` (len(masked), 1, L, L) True = may attend) and the others run
    unmasked. The windows are the same token groups as padding half a window before the grid, and
    RoPE tables are rolled with the tokens, so relative positions inside a window are unchanged.
    """

    grid: Triple
    win: Triple
    shift: Triple
    after: Triple
    cos: torch.Tensor  # (nW, 1, L, head_dim)
    sin: torch.Tensor
    masked: torch.Tensor | None  # (nM,) indices of windows that need a mask, None when none does
    mask: torch.Tensor | None  # (nM, 1, L, L)

    @property
    def padded(self) -> Triple:
        return tuple(g + a for g, a in zip(self.grid, self.after))  # type: ignore[return-value]

    @classmethod
    def make(cls, grid: Triple, window: Triple, shifted: bool, head_dim: int, theta: float, device: torch.device) -> "WindowLayout":
        win, shift, after = _window_geometry(grid, window, shifted)
        padded = tuple(g + a for g, a in zip(grid, after))
        cos, sin = rope_3d(padded, head_dim, theta, device)
        cos = _to_windows(_roll(cos.view(1, *padded, head_dim), shift, -1), win).unsqueeze(1)
        sin = _to_windows(_roll(sin.view(1, *padded, head_dim), shift, -1), win).unsqueeze(1)
        masked = mask = None
        if any(shift) or any(after):
            # Per token, in rolled window order: a region code (which side of each roll seam the
            # token came from) and whether it is a real token.
            axes = []
            for axis, (n, p, s) in enumerate(zip(grid, padded, shift)):
                orig = (torch.arange(p, device=device) + s) % p
                shape = [1, 1, 1]
                shape[axis] = p
                axes.append((((orig < s).long() << axis).view(shape), (orig < n).view(shape)))
            region = (axes[0][0] + axes[1][0] + axes[2][0]).expand(*padded)
            valid = (axes[0][1] & axes[1][1] & axes[2][1]).expand(*padded)
            region = _to_windows(region.reshape(1, *padded, 1), win)[..., 0]  # (nW, L)
            valid = _to_windows(valid.reshape(1, *padded, 1), win)[..., 0]
            needs = (region != region[:, :1]).any(dim=1) | ~valid.all(dim=1)
            masked = needs.nonzero().flatten()
            r, v = region[masked], valid[masked]
            # padded queries may attend within their region too: their rows stay finite (they are
            # dropped at merge), real queries never see padding or the other side of a seam
            mask = ((r[:, :, None] == r[:, None, :]) & (v[:, None, :] | ~v[:, :, None])).unsqueeze(1)
        return cls(grid, win, shift, after, cos, sin, masked, mask)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) grid -> (B, nW, L, C) windows (zero tokens where padded)."""
        b, c = x.shape[0], x.shape[-1]
        if any(self.after):
            x = F.pad(x, (0, 0, 0, self.after[2], 0, self.after[1], 0, self.after[0]))
        return _to_windows(_roll(x, self.shift, -1), self.win).view(b, -1, self.cos.shape[2], c)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, nW, L, C) windows -> (B, T, H, W, C) grid, padding dropped."""
        b, c = x.shape[0], x.shape[-1]
        x = _roll(_from_windows(x.reshape(-1, x.shape[2], c), self.win, self.padded, b), self.shift, 1)
        t, h, w = self.grid
        if any(self.after):
            x = x[:, :t, :h, :w]
        return x

    def with_dtype(self, dtype: torch.dtype) -> "WindowLayout":
        return WindowLayout(self.grid, self.win, self.shift, self.after, self.cos.to(dtype), self.sin.to(dtype), self.masked, self.mask)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside 3D windows of the token grid, with 3D RoPE on q and k."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layout: WindowLayout, norm: "PreNorm | None" = None,
                gate: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, nW, L, C) in window order -> same shape; with ``norm`` x is normalized first, and
        with ``gate`` (B, C) the result is x + gate * attention (the block's residual branch)."""
        b, nw, length, c = x.shape
        hd = c // self.heads
        qkv = self.qkv(x) if norm is None else norm_linear(self.qkv, norm, x)
        q, k, v = qkv.view(b, nw, length, 3, self.heads, hd).permute(3, 0, 1, 4, 2, 5).unbind(0)
        # RoPE tables are per window (nW, 1, L, hd) and broadcast over the batch; SDPA gets 4D
        # (B*nW, heads, L, hd) tensors, which keeps it on its fused kernels.
        q = apply_rope(q, layout.cos, layout.sin).view(b * nw, self.heads, length, hd)
        k = apply_rope(k, layout.cos, layout.sin).view(b * nw, self.heads, length, hd)
        v = v.reshape(b * nw, self.heads, length, hd)
        if layout.masked is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self._masked_attention(q, k, v, b, layout)
        out = out.view(b, nw, self.heads, length, hd).transpose(2, 3).reshape(b, nw, length, c)
        return self.proj(out) if gate is None else gated_residual(self.proj, out, gate, x)

    @staticmethod
    def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, layout: WindowLayout) -> torch.Tensor:
        """Unmasked SDPA for most windows, masked SDPA only for the seam/padding windows."""
        nw = q.shape[0] // b
        masked = layout.masked
        if masked.numel() == nw:
            mask = layout.mask if b == 1 else layout.mask.repeat(b, 1, 1, 1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        plain = torch.ones(nw, dtype=torch.bool, device=q.device)
        plain[masked] = False
        plain = plain.nonzero().flatten()
        split = lambda t, idx: t.view(b, nw, *t.shape[1:])[:, idx].reshape(-1, *t.shape[1:])  # noqa: E731
        out = torch.empty_like(q).view(b, nw, *q.shape[1:])
        out[:, plain] = F.scaled_dot_product_attention(split(q, plain), split(k, plain), split(v, plain)).view(b, -1, *q.shape[1:])
        mask = layout.mask if b == 1 else layout.mask.repeat(b, 1, 1, 1)
        out[:, masked] = F.scaled_dot_product_attention(split(q, masked), split(k, masked), split(v, masked), attn_mask=mask).view(b, -1, *q.shape[1:])
        return out.view_as(q)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, norm: "PreNorm | None" = None, gate: torch.Tensor | None = None) -> torch.Tensor:
        """fc2(gelu(fc1(x))); ``norm`` and ``gate`` as in `WindowAttention.forward`."""
        h = F.gelu(self.fc1(x), approximate="tanh") if norm is None else norm_linear(self.fc1, norm, x, activation="gelu_tanh")
        return self.fc2(h) if gate is None else gated_residual(self.fc2, h, gate, x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample shift/scale (B, C) applied to tokens (B, ..., C)."""
    view = (shift.shape[0],) + (1,) * (x.dim() - 2) + (shift.shape[1],)
    return x * (1 + scale.view(view)) + shift.view(view)


@dataclass(frozen=True)
class PreNorm:
    """The LayerNorm (no affine) and adaLN modulation in front of a block's first linear layer."""

    norm: nn.LayerNorm
    shift: torch.Tensor  # (B, C)
    scale: torch.Tensor


def norm_linear(layer: nn.Module, pre: PreNorm, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    """layer(modulate(norm(x), shift, scale)), then GELU (tanh) if ``activation == "gelu_tanh"``.

    Why not always that: a `NormFusingLinear` (`forward_normed`: QuantLinear on the GPU) applies
    the norm and modulation inside its activation quantization, one pass over x instead of three
    (docs/PERF.md, GPU run 5), and the GELU in its GEMM epilogue; it returns None where it cannot
    (CPU reference, rotations, low-rank branches, hooks, one modulation per sample), and the plain
    composition runs."""
    if activation not in (None, "gelu_tanh"):
        raise ValueError(f"activation must be None or 'gelu_tanh', got {activation!r}")
    fused = normed_forward(layer)
    norm = pre.norm
    plain_ln = isinstance(norm, nn.LayerNorm) and norm.weight is None and norm.bias is None and len(norm.normalized_shape) == 1
    if fused is not None and plain_ln and pre.shift.shape[0] == 1:
        y = fused(x, pre.norm.eps, pre.shift[0], pre.scale[0], activation)
        if y is not None:
            return y
    y = layer(modulate(pre.norm(x), pre.shift, pre.scale))
    return y if activation is None else F.gelu(y, approximate="tanh")


def gated_residual(layer: nn.Module, x: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + gate * layer(x), gate (B, C) one vector per sample, residual (B, ..., C).

    Why not always that: a `ResidualFusingLinear` (`forward_residual`: QuantLinear on the GPU) applies
    gate and residual in its GEMM epilogue, so its output is not written and read back once more
    (docs/PERF.md, GPU run 10); it returns None where it cannot (CPU reference, hooks) and one
    modulation per sample is composed here too."""
    fused = residual_forward(layer)
    if fused is not None and gate.shape[0] == 1:
        y = fused(x, gate[0], residual)
        if y is not None:
            return y
    view = (gate.shape[0],) + (1,) * (residual.dim() - 2) + (gate.shape[1],)
    return residual + gate.view(view) * layer(x)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (shift, scale, gate) from the timestep.

    It works on tokens in window order (B, nW, L, C): attention needs that order and the MLP and
    norms don't care, so the grid is re-ordered only once per block. Exactly one of `adaln` (the
    trainable layer) and `modulation` (its folded constant output, (6*dim,)) is set.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, folded: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = WindowAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaln: nn.Linear | None = None if folded else nn.Linear(dim, 6 * dim)
        self.register_buffer("modulation", torch.zeros(6 * dim) if folded else None)

    def shift_scale_gate(self, cond: torch.Tensor | None) -> torch.Tensor:
        """(B, 6*dim) from the timestep embedding, or (1, 6*dim) stored once folded (cond unused)."""
        if self.adaln is None:
            return self.modulation[None]
        return self.adaln(F.silu(cond))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, layout: WindowLayout) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.shift_scale_gate(cond).chunk(6, dim=-1)
        x = self.attn(x, layout, PreNorm(self.norm1, shift1, scale1), gate=gate1)
        return self.mlp(x, PreNorm(self.norm2, shift2, scale2), gate=gate2)


def _linear32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in float32: a Linear's weights are upcast (a no-op in a float32 model, so the fold
    repeats the unfolded forward's arithmetic exactly); any other (quantized) layer runs its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight.float(), None if layer.bias is None else layer.bias.float())
    return layer(x)


def _dtype_of(layer: nn.Module) -> torch.dtype:
    """The float dtype a folded vector is stored in: that of the layer it replaces."""
    return layer.weight.dtype if isinstance(layer, nn.Linear) else torch.float32


def state_is_folded(keys: Collection[str]) -> bool:
    """Whether a state dict is of a folded model (spandrel-style: told by its keys, not metadata)."""
    return "modulation_out" in keys


class VSRDiT(nn.Module):
    """One-step DiT video super-resolution network: (B, 3, T, H, W) in [0, 1] -> (B, 3, T, sH, sW).

    `folded=True` builds the inference form whose modulation is stored (to load a folded state
    dict into); `fold_modulation_()` turns a trained model into it."""

    arch = "vsrq-dit"

    def __init__(self, config: DiTConfig, folded: bool = False) -> None:
        super().__init__()
        self.config = config
        c = config
        pt, ph, pw = c.patch
        self.patch_embed = nn.Linear(c.in_channels * pt * ph * pw, c.dim)
        self.t_embed: nn.Sequential | None = None if folded else nn.Sequential(nn.Linear(256, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.blocks = nn.ModuleList(DiTBlock(c.dim, c.heads, c.mlp_ratio, folded) for _ in range(c.depth))
        k = c.local_conv
        self.local = nn.ModuleList(
            nn.Conv3d(c.dim, c.dim, k, padding=tuple(v // 2 for v in k), groups=c.dim) for _ in range(c.depth + 1)
        ) if all(k) else nn.ModuleList()
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.adaln_out: nn.Linear | None = None if folded else nn.Linear(c.dim, 2 * c.dim)
        self.register_buffer("modulation_out", torch.zeros(2 * c.dim) if folded else None)
        self.head = nn.Linear(c.dim, pt * ph * pw * 3 * c.scale * c.scale)
        self.register_buffer("timestep", torch.tensor([c.timestep]), persistent=False)
        self.reset_parameters()

    @property
    def folded(self) -> bool:
        """Whether the adaLN modulation is stored as vectors (inference form) rather than computed."""
        return self.t_embed is None

    def reset_parameters(self) -> None:
        """DiT-style init: xavier linears, zero adaLN gates and head, so an untrained model is the residual upsampler."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in [blk.adaln for blk in self.blocks] + [self.adaln_out]:
            if layer is not None:  # folded: the zero vectors are already the zero-init output
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for conv in self.local:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def timestep_condition(self, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """(batch, dim) embedding of the fixed timestep, the adaLN layers' input (None once folded)."""
        if self.folded:
            return None
        return self.t_embed(timestep_embedding(self.timestep.expand(batch), 256).to(dtype))

    def head_shift_scale(self, cond: torch.Tensor | None) -> torch.Tensor:
        """(B, 2*dim) modulation of the output head, or (1, 2*dim) stored once folded."""
        if self.adaln_out is None:
            return self.modulation_out[None]
        return self.adaln_out(F.silu(cond))

    @torch.no_grad()
    def constant_modulation(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every block's (6*dim,) adaLN output and the head's (2*dim,), in float32.

        Float32 with the same operations as the unfolded forward, not float64: a float32 model then
        gets the very same vectors, so its output is unchanged bit for bit. That matters for
        W4A4: a one-ulp change of a modulation moves some activation roundings, and those cascade
        into output changes as large as the quantization error itself."""
        lin1, _, lin2 = self.t_embed
        emb = timestep_embedding(self.timestep, 256)
        cond = F.silu(_linear32(lin2, F.silu(_linear32(lin1, emb))))  # adaLN input: silu(t_embed(emb))
        return [_linear32(blk.adaln, cond)[0] for blk in self.blocks], _linear32(self.adaln_out, cond)[0]

    @torch.no_grad()
    def fold_modulation_(self) -> "VSRDiT":
        """Store the constant adaLN outputs (in each replaced layer's dtype) and drop t_embed and the
        adaLN linears, in place. The output is unchanged (bit for bit for one float32 clip). For
        inference only: the stored vectors are buffers, not trained."""
        if self.folded:
            return self
        blocks, head = self.constant_modulation()
        for blk, vec in zip(self.blocks, blocks):
            blk.modulation = vec.to(_dtype_of(blk.adaln))
            blk.adaln = None
        self.modulation_out = head.to(_dtype_of(self.adaln_out))
        self.adaln_out = None
        self.t_embed = None
        return self

    @property
    def exact_tensor_names(self) -> list[str]:
        """State-dict keys a checkpoint keeps in their own dtype (vsrq.quant.checkpoint.write_checkpoint):
        the folded vectors, 6*dim numbers a block, which rounded to 16 bits would move W4A4 roundings."""
        if not self.folded:
            return []
        return [f"blocks.{i}.modulation" for i in range(len(self.blocks))] + ["modulation_out"]

    def _local_mix(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """hidden (B, Tt, Ht, Wt, C) plus the i-th depthwise convolution of it (identity without local_conv)."""
        if not len(self.local):
            return hidden
        conv = self.local[i]
        mixed = conv(hidden.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return hidden + mixed

    def upsample_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The input upsampled to the output size, frame by frame; the network predicts the difference."""
        b, ch, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, ch, h, w)
        s = self.config.scale
        up = F.interpolate(frames.float(), scale_factor=s, mode=self.config.residual_mode, align_corners=False)
        return up.to(x.dtype).view(b, t, ch, h * s, w * s).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, ch, t, h, w = x.shape
        pt, ph, pw = c.patch
        pads = ((-t) % pt, (-h) % ph, (-w) % pw)
        xp = x
        if any(pads):
            # Replicate-pad to whole patches along T, H, W (F.pad on 5D pads the last three dims).
            xp = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
        tp, hp, wp = t + pads[0], h + pads[1], w + pads[2]
        grid = (tp // pt, hp // ph, wp // pw)

        tokens = xp.view(b, ch, grid[0], pt, grid[1], ph, grid[2], pw)
        tokens = tokens.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, grid[0] * grid[1] * grid[2], pt * ph * pw * ch)
        hidden = self.patch_embed(tokens * 2 - 1).view(b, *grid, c.dim)

        cond = self.timestep_condition(b, hidden.dtype)
        layouts = [WindowLayout.make(grid, c.window, shifted, c.head_dim, c.rope_theta, x.device) for shifted in (False, True)]
        layouts = [lay.with_dtype(hidden.dtype) for lay in layouts]
        for i, blk in enumerate(self.blocks):
            layout = layouts[i % 2]
            hidden = layout.merge(blk(layout.partition(self._local_mix(hidden, i)), cond, layout))
        hidden = self._local_mix(hidden, c.depth).reshape(b, -1, c.dim)

        shift, scale = self.head_shift_scale(cond).chunk(2, dim=-1)
        out = self.head(modulate(self.norm_out(hidden), shift, scale))
        s = c.scale
        out = out.view(b, *grid, pt, ph, pw, 3, s, s)
        # (b, Tt, Ht, Wt, pt, ph, pw, 3, s, s) -> (b, 3, Tt, pt, Ht, ph, s, Wt, pw, s)
        out = out.permute(0, 7, 1, 4, 2, 5, 8, 3, 6, 9).reshape(b, 3, tp, hp * s, wp * s)
        out = out[:, :, :t, : h * s, : w * s]
        return out + self.upsample_residual(x)
