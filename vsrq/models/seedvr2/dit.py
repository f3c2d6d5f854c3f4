"""SeedVR2 DiT ("NaDiT"), 3B and 7B, re-implemented in plain torch.

This is our own implementation, written from reading the official ByteDance-Seed/SeedVR code
(Apache-2.0): `models/dit_v2` (3B) and `models/dit` (7B). The official model works on a packed
("native resolution", varlen) token list and flash-attn; this one works on dense tensors:
B videos of one shape, windows made by padding + reshape, masked SDPA. Parameter names equal
the official checkpoint keys (see `dit_keys.py` for the thin key map).

Shape of one forward (inference: t = 1000, batch 1):

    x   (B, T, H, W, 33)  = noise(16) ++ LR latent(16) ++ ones mask(1), channels last
    txt (L, 5120) or (B, L, 5120)   precomputed text embedding
    t   (B,)  in [0, 1000]
    ->  (B, T, H, W, 16)  the v-prediction

Blocks are MMDiT style: a video stream and a text stream, each with its own weights (or one
shared set, 3B blocks >= mm_layers), adaLN-single modulation from one global timestep embedding
plus learned per-block offsets, and window attention in which each video window attends
jointly with the whole text. The text output is the mean over the windows.

Every linear layer is a plain `nn.Linear` so the quantization engine can swap it by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrq.kernels.head_norm_rope import head_norm_rope, head_norm_rope_supported
from vsrq.kernels.window_gather import window_gather, window_gather_supported

WIN_REGULAR = "720pwin_by_size_bysize"
WIN_SHIFTED = "720pswin_by_size_bysize"
Grid = tuple[int, int, int]  # (T, h, w) token grid after patching


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class SeedVR2DiTConfig:
    """Everything that differs between the 3B and the 7B (and what the tests shrink)."""

    dim: int = 2560  # hidden size of both streams (official vid_dim == txt_dim)
    heads: int = 20
    head_dim: int = 128
    num_layers: int = 32
    # Blocks [0, mm_layers) have separate vid/txt weights; later blocks share one set (".all").
    mm_layers: int = 10
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    expand_ratio: int = 4
    swiglu_multiple_of: int = 256  # the official SwiGLU rounds its hidden size up to this
    # RoPE: "mmrope3d" (3B) = joint text+video integer positions, "lang" freqs, theta 10000;
    #       "rope3d" (7B)   = video only, window-normalised positions in [-1, 1], "pixel" freqs.
    rope: Literal["mmrope3d", "rope3d"] = "mmrope3d"
    # The official constructor gets this width and splits it in 3 axes (rope_dim // 3 each,
    # of which an even part is rotated); 3B: 128 -> 3 x 42 = 126 of 128 channels rotated;
    # 7B: head_dim // 2 = 64 -> 3 x 20 = 60 rotated (pixel freqs use dim // 2 of 21 -> 10).
    rope_dim: int = 128
    rope_theta: float = 10000.0
    rope_max_freq: float = 256.0
    vid_out_norm: bool = True  # 3B: affine RMSNorm + adaLN before vid_out; 7B: none
    last_layer_vid_only: bool = True  # 3B: the last block has no text MLP / text modulation
    vid_in_channels: int = 33
    vid_out_channels: int = 16
    txt_in_dim: int | None = 5120  # None or == dim -> no txt_in layer
    patch: tuple[int, int, int] = (1, 2, 2)
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    # (nt, nh, nw) windows relative to a 720p latent token grid (45 x 80); the same for all layers.
    window: tuple[int, int, int] = (4, 3, 3)
    # Per-layer window method, cycled: even layers regular, odd layers shifted (both models).
    window_methods: tuple[str, ...] = (WIN_REGULAR, WIN_SHIFTED)
    sinusoid_dim: int = 256

    def __post_init__(self) -> None:
        self.patch = tuple(self.patch)  # type: ignore[assignment]
        self.window = tuple(self.window)  # type: ignore[assignment]
        self.window_methods = tuple(self.window_methods)
        for m in self.window_methods:
            if m not in (WIN_REGULAR, WIN_SHIFTED):
                raise ValueError(f"unknown window method {m!r}")

    # -- derived -------------------------------------------------------------------------
    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def emb_dim(self) -> int:
        return 6 * self.dim

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "gelu":
            return self.dim * self.expand_ratio
        hid = int(2 * self.dim * self.expand_ratio / 3)
        m = self.swiglu_multiple_of
        return m * ((hid + m - 1) // m)

    def shared(self, layer: int) -> bool:
        return layer >= self.mm_layers

    def vid_only(self, layer: int) -> bool:
        return self.last_layer_vid_only and layer == self.num_layers - 1

    def window_method(self, layer: int) -> str:
        return self.window_methods[layer % len(self.window_methods)]

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        d["window"] = list(self.window)
        d["window_methods"] = list(self.window_methods)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SeedVR2DiTConfig":
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown SeedVR2DiTConfig fields: {sorted(extra)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str) -> "SeedVR2DiTConfig":
        """Real shapes: "3b" (configs_3b/main.yaml) or "7b" (configs_7b/main.yaml);
        "3b-tiny" / "7b-tiny" are CPU test configs with the same structure."""
        if name == "3b":
            return cls()
        if name == "7b":
            return cls(
                dim=3072, heads=24, head_dim=128, num_layers=36, mm_layers=36, mlp="gelu",
                rope="rope3d", rope_dim=64, vid_out_norm=False, last_layer_vid_only=False,
            )
        if name == "3b-tiny":
            return cls(
                dim=16, heads=2, head_dim=16, num_layers=3, mm_layers=1, rope_dim=16,
                txt_in_dim=24,
            )
        if name == "7b-tiny":
            return cls(
                dim=32, heads=2, head_dim=32, num_layers=2, mm_layers=2, mlp="gelu",
                rope="rope3d", rope_dim=16, vid_out_norm=False, last_layer_vid_only=False,
                txt_in_dim=24,
            )
        raise ValueError(f"unknown SeedVR2 DiT preset {name!r} (3b, 7b, 3b-tiny, 7b-tiny)")


# --------------------------------------------------------------------------------------------
# Small layers
# --------------------------------------------------------------------------------------------


# torch >= 2.8 runs F.rms_norm on CUDA as one fused kernel computing in fp32 (older versions chain ops that
# round to x's dtype before the weight product): only then is the 16-bit input passed in directly.
_FUSED_CUDA_RMS_NORM = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 8)


def rms_norm(x: Tensor, eps: float, weight: Tensor | None = None) -> Tensor:
    """RMSNorm computed in fp32 (as apex FusedRMSNorm does), returned in x's dtype.

    Through torch's own rms_norm (one fused kernel on CUDA; the same x * rsqrt(mean(x^2) + eps) * w
    as the written-out formula, which took ~6 passes over the activation per norm in the eager DiT:
    docs/PERF.md, eleventh session)."""
    if x.is_cuda and _FUSED_CUDA_RMS_NORM and (weight is None or weight.dtype == x.dtype):
        # torch's fused CUDA kernel accumulates and scales 16-bit inputs in fp32 itself: no casts
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), (x.shape[-1],), w, eps).to(x.dtype)


class RMSNorm(nn.Module):
    """Affine RMSNorm (the qk norms and the 3B output norm). Non-affine norms are functional."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps, self.weight)


class SwiGLU(nn.Module):
    """3B MLP: proj_out(silu(proj_in_gate(x)) * proj_in(x)), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class GeluMLP(nn.Module):
    """7B MLP: proj_out(gelu_tanh(proj_in(x))), with biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


class AdaOffsets(nn.Module):
    """Learned per-block offsets added to the global timestep modulation (adaLN-single).

    Holds `{layer}_shift`, `{layer}_scale`, `{layer}_gate` for each layer name; the 3B output
    head only has `out_shift` and `out_scale` (no gate)."""

    def __init__(self, dim: int, layers: tuple[str, ...], gate: bool = True) -> None:
        super().__init__()
        # Random init as officially (randn / sqrt(dim), scale around 1); checkpoints overwrite it.
        for name in layers:
            setattr(self, f"{name}_shift", nn.Parameter(torch.randn(dim) / dim**0.5))
            setattr(self, f"{name}_scale", nn.Parameter(torch.randn(dim) / dim**0.5 + 1))
            if gate:
                setattr(self, f"{name}_gate", nn.Parameter(torch.randn(dim) / dim**0.5))

    def get(self, name: str, kind: str) -> Tensor:
        return getattr(self, f"{name}_{kind}")


class StreamPair(nn.Module):
    """One module per stream (`.vid`, `.txt`) or one shared module (`.all`), as the official
    MMModule names them. `vid_only` drops the text module (3B last block when not shared)."""

    def __init__(self, make: Any, shared: bool, vid_only: bool = False) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            self.all = make()
        else:
            self.vid = make()
            if not vid_only:
                self.txt = make()

    def pick(self, stream: str) -> nn.Module:
        return self.all if self.shared else getattr(self, stream)


class TimeEmbedding(nn.Module):
    """t -> sinusoid(256) -> MLP -> (B, 6*dim): the global modulation shared by all blocks."""

    def __init__(self, sinusoid_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.proj_in = nn.Linear(sinusoid_dim, hidden)
        self.proj_hid = nn.Linear(hidden, hidden)
        self.proj_out = nn.Linear(hidden, out)

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        # DDPM sinusoid: [sin | cos], frequencies exp(-ln(1e4) * i / half), on the raw t.
        half = self.sinusoid_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        ang = t.float()[:, None] * freqs[None]
        emb = torch.cat([ang.sin(), ang.cos()], dim=-1).to(dtype)
        emb = F.silu(self.proj_in(emb))
        emb = F.silu(self.proj_hid(emb))
        return self.proj_out(emb)


class PatchIn(nn.Module):
    def __init__(self, in_channels: int, patch: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels * patch[0] * patch[1] * patch[2], dim)


class PatchOut(nn.Module):
    def __init__(self, out_channels: int, patch: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out_channels * patch[0] * patch[1] * patch[2])


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, T, H, W, C) -> (B, T/pt, H/ph, W/pw, pt*ph*pw*C), flatten order (t h w c)."""
    b, t, h, w, c = x.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {t}x{h}x{w} is not divisible by the patch {patch}")
    x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def unpatchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """Inverse of `patchify`."""
    b, t, h, w, k = x.shape
    pt, ph, pw = patch
    c = k // (pt * ph * pw)
    x = x.reshape(b, t, h, w, pt, ph, pw, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, t * pt, h * ph, w * pw, c)


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisWindows:
    """How one axis (t, h or w) of the token grid is cut into windows.

    The windows tile [-front, count*size - front); padding fills what lies outside [0, length).
    No window is empty, so every window also counts in the text mean (as officially)."""

    length: int
    size: int
    front: int
    count: int

    @property
    def padded(self) -> int:
        return self.count * self.size

    @property
    def back(self) -> int:
        return self.padded - self.front - self.length

    def bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each window in real (unpadded) coordinates."""
        return [
            (max(k * self.size - self.front, 0), min((k + 1) * self.size - self.front, self.length))
            for k in range(self.count)
        ]


def window_sizes(grid: tuple[int, int, int], num: tuple[int, int, int]) -> tuple[int, int, int]:
    """The official "720p by size" rule: rescale the (h, w) token grid to the 45x80 area of a
    720p latent, cut that into num windows, and use the size (in real tokens) as window size.
    Time: ceil(min(T, 30) / nt) latent frames."""
    t, h, w = grid
    nt, nh, nw = num
    scale = math.sqrt((45 * 80) / (h * w))
    rh, rw = round(h * scale), round(w * scale)
    return math.ceil(min(t, 30) / nt), math.ceil(rh / nh), math.ceil(rw / nw)


def axis_windows(length: int, size: int, shifted: bool) -> AxisWindows:
    """Regular windows start at 0; shifted ones are offset by half a window, which the official
    code writes as boundaries int((i - 0.5) * size), i.e. i*size - ceil(size/2)."""
    size = min(size, length)  # a window at least as long as the axis is the whole axis
    front = 0
    if shifted and size < length and size > 1:
        front = size - size // 2
    count = math.ceil((length + front) / size)
    return AxisWindows(length, size, front, count)


def make_windows(grid: Grid, num: Grid, method: str) -> tuple[AxisWindows, ...]:
    sizes = window_sizes(grid, num)
    shifted = method == WIN_SHIFTED
    return tuple(axis_windows(n, s, shifted) for n, s in zip(grid, sizes))


def window_positions(ax: AxisWindows, normalised: bool) -> Tensor:
    """Per-token RoPE position along one axis, local to the token's window: integers from 0
    (3B), or torch.linspace(-1, 1, window_extent) (7B, rotary "pixel" mode)."""
    pos = torch.empty(ax.length, dtype=torch.float32)
    for a, b in ax.bounds():
        n = b - a
        pos[a:b] = torch.linspace(-1, 1, n) if normalised else torch.arange(n, dtype=torch.float32)
    return pos


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def rope_inv_freqs(cfg: SeedVR2DiTConfig) -> Tensor:
    """Per-axis inverse frequencies; their length times 2 is the rotated width of one axis.

    These equal the official `attn.rope.rope.freqs` buffers (dropped by the key map)."""
    d = cfg.rope_dim // 3
    if cfg.rope == "mmrope3d":
        return 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    return torch.linspace(1.0, cfg.rope_max_freq / 2, d // 2) * math.pi


def axial_angles(pos_t: Tensor, pos_h: Tensor, pos_w: Tensor, inv: Tensor) -> Tensor:
    """(T, H, W, 3*F) angles, axes concatenated t|h|w, each axis F = len(inv) frequencies."""
    T, H, W = len(pos_t), len(pos_h), len(pos_w)
    at = (pos_t[:, None] * inv)[:, None, None, :].expand(T, H, W, -1)
    ah = (pos_h[:, None] * inv)[None, :, None, :].expand(T, H, W, -1)
    aw = (pos_w[:, None] * inv)[None, None, :, :].expand(T, H, W, -1)
    return torch.cat([at, ah, aw], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of the first 2*cos.shape[-1] channels; the rest pass.

    x: (..., N, heads, head_dim); cos/sin: (N, F) broadcast over heads. Done in fp32. (On a GPU the model
    runs it fused with the head norm, `norm_rope`; this is that kernel's reference and the compiled/CPU path.)"""
    r = 2 * cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :r], xf[..., r:]
    x0, x1 = rot.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1).to(x.dtype)


@dataclass
class LayerGeometry:
    """Per window method: the window cut and the RoPE tables for one (T, H, W, L) shape."""

    axes: tuple[AxisWindows, ...]
    vid_cos: Tensor | None  # (T*H*W, F) or None (no rope)
    vid_sin: Tensor | None
    txt_cos: Tensor | None  # (L, F); only the 3B rotates text
    txt_sin: Tensor | None
    key_mask: Tensor | None  # (nwin, 1, 1, S + L) bool, None when no window has padding


def build_geometry(
    cfg: SeedVR2DiTConfig, grid: Grid, txt_len: int, method: str, device: torch.device
) -> LayerGeometry:
    axes = make_windows(grid, cfg.window, method)
    inv = rope_inv_freqs(cfg)
    if cfg.rope == "mmrope3d":
        # Text: position p on all three axes; video: window-local (t + L, h, w).
        pt, ph, pw = (window_positions(a, normalised=False) for a in axes)
        vid_ang = axial_angles(pt + txt_len, ph, pw, inv).reshape(-1, 3 * len(inv))
        p = torch.arange(txt_len, dtype=torch.float32)
        txt_ang = (p[:, None] * inv).repeat(1, 3)
        txt_cos, txt_sin = txt_ang.cos().to(device), txt_ang.sin().to(device)
    else:
        pt, ph, pw = (window_positions(a, normalised=True) for a in axes)
        vid_ang = axial_angles(pt, ph, pw, inv).reshape(-1, 3 * len(inv))
        txt_cos = txt_sin = None
    key_mask = None
    if any(a.padded != a.length for a in axes):
        valid = torch.zeros(*(a.padded for a in axes), dtype=torch.bool)
        valid[tuple(slice(a.front, a.front + a.length) for a in axes)] = True
        valid = to_windows(valid[None, ..., None, None], axes)  # (nwin, 1, S, 1)
        valid = valid[:, 0, :, 0]
        key_mask = torch.cat([valid, valid.new_ones(valid.shape[0], txt_len)], dim=1)
        key_mask = key_mask[:, None, None, :].to(device)
    vid_cos, vid_sin = vid_ang.cos().to(device), vid_ang.sin().to(device)
    return LayerGeometry(axes, vid_cos, vid_sin, txt_cos, txt_sin, key_mask)


def to_windows(x: Tensor, axes: tuple[AxisWindows, ...]) -> Tensor:
    """(B, Tp, Hp, Wp, heads, d) padded grid -> (B*nwin, heads, S, d), windows ordered t,h,w."""
    at, ah, aw = axes
    b, _, _, _, nh, d = x.shape
    x = x.reshape(b, at.count, at.size, ah.count, ah.size, aw.count, aw.size, nh, d)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8)
    return x.reshape(b * at.count * ah.count * aw.count, nh, at.size * ah.size * aw.size, d)


def window_tokens(x: Tensor, txt: Tensor | None, grid: Grid, axes: tuple[AxisWindows, ...]) -> Tensor:
    """(B, N, heads, d) video tokens [+ (B, L, heads, d) text] -> (B*nwin, heads, S [+ L], d): each
    window's tokens (`to_windows` order), zeros where a window lies outside the grid, then the text
    repeated for every window. Eagerly on a GPU one gather kernel (`vsrq.kernels.window_gather`, the
    same values); under torch.compile, which fuses the copies itself, and on the CPU `window_tokens_torch`."""
    if not torch.compiler.is_compiling() and window_gather_supported(x, txt):
        return window_gather(x, txt, grid, tuple((a.count, a.size, a.front) for a in axes))
    return window_tokens_torch(x, txt, grid, axes)


def window_tokens_torch(x: Tensor, txt: Tensor | None, grid: Grid, axes: tuple[AxisWindows, ...]) -> Tensor:
    """`window_tokens` in torch ops (its reference).

    Written into one buffer (the window-ordered view of its first S rows takes the permuted grid in
    one strided copy; the text goes into the last L rows), not `torch.cat` of a windowed copy and an
    expanded text view: that cat took ~1.2 ms per call at 1080p on an H100, ~19 % of the compiled
    DiT's kernel time (docs/PERF.md)."""
    at, ah, aw = axes
    b, _, nh, d = x.shape
    nwin, s = at.count * ah.count * aw.count, at.size * ah.size * aw.size
    if txt is not None and txt.dtype != x.dtype:
        raise TypeError(f"window_tokens: text {txt.dtype} and video {x.dtype} tokens must share a dtype")
    n_txt = 0 if txt is None else txt.shape[1]
    out = x.new_empty(b * nwin, nh, s + n_txt, d)
    grid_x = pad_grid(x.reshape(b, *grid, nh, d), axes)
    grid_x = grid_x.reshape(b, at.count, at.size, ah.count, ah.size, aw.count, aw.size, nh, d)
    out[:, :, :s].unflatten(0, (b, at.count, ah.count, aw.count)).unflatten(5, (at.size, ah.size, aw.size)).copy_(
        grid_x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8))
    if txt is not None:
        out[:, :, s:].unflatten(0, (b, nwin)).copy_(txt.transpose(1, 2)[:, None])
    return out


def from_windows(x: Tensor, axes: tuple[AxisWindows, ...], batch: int) -> Tensor:
    """Inverse of `to_windows`: (B*nwin, heads, S, d) -> (B, Tp, Hp, Wp, heads, d)."""
    at, ah, aw = axes
    nh, d = x.shape[1], x.shape[3]
    x = x.reshape(batch, at.count, ah.count, aw.count, nh, at.size, ah.size, aw.size, d)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
    return x.reshape(batch, at.padded, ah.padded, aw.padded, nh, d)


def pad_grid(x: Tensor, axes: tuple[AxisWindows, ...]) -> Tensor:
    """Zero-pad (B, T, H, W, ...) on t/h/w by each axis' front/back padding."""
    if all(a.padded == a.length for a in axes):
        return x
    pads: list[int] = [0, 0] * (x.ndim - 4)
    for a in reversed(axes):
        pads += [a.front, a.back]
    return F.pad(x, pads)


def crop_grid(x: Tensor, axes: tuple[AxisWindows, ...]) -> Tensor:
    """Inverse of `pad_grid`."""
    t, h, w = (slice(a.front, a.front + a.length) for a in axes)
    return x[:, t, h, w]


# --------------------------------------------------------------------------------------------
# Attention and block
# --------------------------------------------------------------------------------------------


def norm_rope(x: Tensor, norm: RMSNorm, cos: Tensor | None, sin: Tensor | None) -> Tensor:
    """`apply_rope(norm(x), cos, sin)` of the heads of q or k (cos None: the norm only). Eagerly on a GPU one
    Triton pass over the strided view (`vsrq.kernels.head_norm_rope`, 6-10x the ops at 1080p on an H100);
    under torch.compile, which fuses these ops itself, and on the CPU the ops."""
    if cos is not None and sin is not None and not torch.compiler.is_compiling():
        if head_norm_rope_supported(x, norm.weight, cos):
            return head_norm_rope(x, norm.weight, norm.eps, cos, sin)
    y = norm(x)
    return y if cos is None or sin is None else apply_rope(y, cos, sin)


class WindowAttention(nn.Module):
    """Joint video-window + text attention (official NaSwinAttention), dense and batched."""

    def __init__(self, cfg: SeedVR2DiTConfig, shared: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        dim, inner = cfg.dim, cfg.inner_dim
        self.proj_qkv = StreamPair(lambda: nn.Linear(dim, 3 * inner, bias=cfg.qkv_bias), shared)
        self.proj_out = StreamPair(lambda: nn.Linear(inner, dim), shared)
        self.norm_q = StreamPair(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps), shared)
        self.norm_k = StreamPair(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps), shared)

    def _qkv(self, x: Tensor, stream: str, cos: Tensor | None, sin: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q and k normalised per head and rotated (cos None: not rotated), and v; each (B, N, heads, d)."""
        qkv = self.proj_qkv.pick(stream)(x).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        return norm_rope(q, self.norm_q.pick(stream), cos, sin), norm_rope(k, self.norm_k.pick(stream), cos, sin), v

    def forward(
        self, vid: Tensor, txt: Tensor, grid: tuple[int, int, int], geo: LayerGeometry, want_txt: bool
    ) -> tuple[Tensor, Tensor | None]:
        """vid (B, N, dim), txt (B, L, dim) -> attention outputs after proj_out."""
        B, N, _ = vid.shape
        L = txt.shape[1]
        vq, vk, vv = self._qkv(vid, "vid", geo.vid_cos, geo.vid_sin)  # (B, N, heads, d)
        tq, tk, tv = self._qkv(txt, "txt", geo.txt_cos, geo.txt_sin)  # (B, L, heads, d)

        axes = geo.axes
        nwin = math.prod(a.count for a in axes)
        S = math.prod(a.size for a in axes)
        k = window_tokens(vk, tk, grid, axes)  # (B*nwin, h, S + L, d)
        v = window_tokens(vv, tv, grid, axes)
        q = window_tokens(vq, tq if want_txt else None, grid, axes)
        mask = None
        if geo.key_mask is not None:
            mask = geo.key_mask[None].expand(B, -1, -1, -1, -1).reshape(B * nwin, 1, 1, S + L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B*nwin, h, S(+L), d)

        vid_out = from_windows(out[:, :, :S], axes, B)
        vid_out = crop_grid(vid_out, axes).reshape(B, N, self.heads * self.head_dim)
        vid_out = self.proj_out.pick("vid")(vid_out)
        if not want_txt:
            return vid_out, None
        # Each window saw its own copy of the text; the official code averages the copies.
        txt_out = out[:, :, S:].reshape(B, nwin, self.heads, L, self.head_dim).mean(1)
        txt_out = txt_out.transpose(1, 2).reshape(B, L, self.heads * self.head_dim)
        return vid_out, self.proj_out.pick("txt")(txt_out)


def modulation(emb: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Global (shift, scale, gate) of one sub-layer, each (B, 1, dim).

    The 6*dim embedding is laid out (dim, layer[attn, mlp], [shift, scale, gate]): dim is the
    outer index, so this is a strided view, not six contiguous chunks."""
    e = emb.unflatten(-1, (-1, 2, 3))[:, None, :, layer, :]
    return e[..., 0], e[..., 1], e[..., 2]


class Block(nn.Module):
    """One MMDiT block (official NaMMSRTransformerBlock): pre-RMSNorm (no affine), adaLN in,
    window attention, gate, residual; then the same with the MLP."""

    def __init__(self, cfg: SeedVR2DiTConfig, index: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.index = index
        shared, vid_only = cfg.shared(index), cfg.vid_only(index)
        self.window_method = cfg.window_method(index)
        self.vid_only = vid_only
        self.attn = WindowAttention(cfg, shared)
        mlp_cls = SwiGLU if cfg.mlp == "swiglu" else GeluMLP
        self.mlp = StreamPair(lambda: mlp_cls(cfg.dim, cfg.mlp_hidden), shared, vid_only)
        self.ada = StreamPair(lambda: AdaOffsets(cfg.dim, ("attn", "mlp")), shared, vid_only)

    def _mod(self, stream: str, emb: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        name = ("attn", "mlp")[layer]
        ada = self.ada.pick(stream)
        shift, scale, gate = modulation(emb, layer)
        return shift + ada.get(name, "shift"), scale + ada.get(name, "scale"), gate + ada.get(name, "gate")

    def forward(
        self, vid: Tensor, txt: Tensor, emb: Tensor, grid: Grid, geo: LayerGeometry, want_txt: bool = True
    ) -> tuple[Tensor, Tensor]:
        """vid (B, N, dim), txt (B, L, dim), emb (B, 6*dim). Returns the new (vid, txt).

        `want_txt=False` skips the text output (it is unused after the last block); txt is
        then returned unchanged."""
        eps = self.cfg.norm_eps
        v_sh, v_sc, v_g = self._mod("vid", emb, 0)
        # x * scale + shift and residual + y * gate as one addcmul each (one pass instead of two)
        v_in = torch.addcmul(v_sh, rms_norm(vid, eps), v_sc)
        t_in = rms_norm(txt, eps)
        want_txt = want_txt and not self.vid_only
        if not self.vid_only:
            t_sh, t_sc, t_g = self._mod("txt", emb, 0)
            t_in = torch.addcmul(t_sh, t_in, t_sc)
        # (3B last block: the text still feeds the attention, normed but not modulated.)
        v_att, t_att = self.attn(v_in, t_in, grid, geo, want_txt)
        vid = torch.addcmul(vid, v_att, v_g)

        v_sh, v_sc, v_g = self._mod("vid", emb, 1)
        vid = torch.addcmul(vid, self.mlp.pick("vid")(torch.addcmul(v_sh, rms_norm(vid, eps), v_sc)), v_g)
        if not want_txt:
            return vid, txt
        assert t_att is not None
        txt = torch.addcmul(txt, t_att, t_g)
        t_sh, t_sc, t_g = self._mod("txt", emb, 1)
        txt = torch.addcmul(txt, self.mlp.pick("txt")(torch.addcmul(t_sh, rms_norm(txt, eps), t_sc)), t_g)
        return vid, txt


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass
class DiTState:
    """What flows between blocks; `embed` makes it, `run_block` updates it, `head` consumes it."""

    vid: Tensor  # (B, N, dim)
    txt: Tensor  # (B, L, dim)
    emb: Tensor  # (B, 6*dim)
    grid: tuple[int, int, int]  # token grid (T, h, w) after patching
    geometry: dict[str, LayerGeometry] = field(default_factory=dict)


class SeedVR2DiT(nn.Module):
    """SeedVR2 NaDiT (3B or 7B by config). `forward` = `embed` + each `run_block` + `head`;
    a pipeline that offloads blocks calls those three itself."""

    def __init__(self, cfg: SeedVR2DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vid_in = PatchIn(cfg.vid_in_channels, cfg.patch, cfg.dim)
        has_txt_in = cfg.txt_in_dim and cfg.txt_in_dim != cfg.dim
        self.txt_in = nn.Linear(cfg.txt_in_dim, cfg.dim) if has_txt_in else nn.Identity()
        self.emb_in = TimeEmbedding(cfg.sinusoid_dim, cfg.dim, cfg.emb_dim)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        if cfg.vid_out_norm:
            self.vid_out_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.vid_out_ada = AdaOffsets(cfg.dim, ("out",), gate=False)
        self.vid_out = PatchOut(cfg.vid_out_channels, cfg.patch, cfg.dim)

    def embed(self, x: Tensor, txt: Tensor, t: Tensor | float) -> DiTState:
        """x (B, T, H, W, C_in) latent; txt (L, C_txt) or (B, L, C_txt); t scalar or (B,)."""
        B = x.shape[0]
        tokens = patchify(x, self.cfg.patch)
        grid = tuple(tokens.shape[1:4])
        vid = self.vid_in.proj(tokens.reshape(B, -1, tokens.shape[-1]))
        if txt.ndim == 2:
            txt = txt[None].expand(B, -1, -1)
        txt = self.txt_in(txt)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t.reshape(B)
        emb = self.emb_in(t, vid.dtype)
        return DiTState(vid, txt, emb, grid)  # type: ignore[arg-type]

    def geometry(self, state: DiTState, method: str) -> LayerGeometry:
        """Windows and RoPE tables; the same for every layer of one window method (cached)."""
        if method not in state.geometry:
            L, device = state.txt.shape[1], state.vid.device
            state.geometry[method] = build_geometry(self.cfg, state.grid, L, method, device)
        return state.geometry[method]

    def run_block(self, i: int, state: DiTState, block: nn.Module | None = None) -> DiTState:
        """Run block i (or a stand-in module for it, e.g. one just moved to the GPU)."""
        block = self.blocks[i] if block is None else block
        want_txt = i < self.cfg.num_layers - 1  # the text leaving the last block is unused
        geo = self.geometry(state, self.cfg.window_method(i))
        state.vid, state.txt = block(state.vid, state.txt, state.emb, state.grid, geo, want_txt)
        return state

    def head(self, state: DiTState) -> Tensor:
        """Output norm (3B), linear, unpatchify -> (B, T, H, W, C_out)."""
        vid = state.vid
        if self.cfg.vid_out_norm:
            # The official out-adaLN reads the embedding cached under the blocks' "attn" key
            # (same cache entry), i.e. the attn shift/scale of the global embedding, plus its
            # own learned out_shift/out_scale.
            shift, scale, _ = modulation(state.emb, 0)
            ada = self.vid_out_ada
            vid = self.vid_out_norm(vid) * (scale + ada.out_scale) + (shift + ada.out_shift)
        out = self.vid_out.proj(vid)
        B = out.shape[0]
        return unpatchify(out.reshape(B, *state.grid, out.shape[-1]), self.cfg.patch)

    def forward(self, x: Tensor, txt: Tensor, t: Tensor | float) -> Tensor:
        state = self.embed(x, txt, t)
        for i in range(len(self.blocks)):
            state = self.run_block(i, state)
        return self.head(state)
