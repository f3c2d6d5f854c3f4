"""SeedVR2's causal 3D video VAE ("video_vae_v3", s8 c16 t4), re-implemented for vsrq.

Written from the published architecture (SeedVR, Apache-2.0) so that the official checkpoint loads
through a thin key map (`vae_keys.py`) and the numbers match the official inference path
(`set_causal_slicing(split_size=4)` + `set_memory_limit(0.5, 0.5)`) to float rounding.

Facts this file relies on (settled by reading and running the official code):

* Every temporal conv is *causal*: instead of zero padding in time, the clip is prefixed with
  ``kernel_t - 1`` copies of its first frame. Resnet conv1/conv2, conv_in/conv_out and the
  upsampler conv are 3x3x3; conv_shortcut is 1x1x1; the encoder's downsampler is 1x3x3 stride
  (1,2,2) in the first block and 3x3x3 stride (2,2,2) in the temporal-down blocks, always after a
  zero pad of one row/column at the bottom/right and with no spatial padding of its own.
* Time is processed in chunks carrying a cache: each conv remembers the last ``kernel_t -
  stride_t`` frames of its (prefixed) input and prepends them to the next chunk. Everything else
  is per frame (GroupNorm normalises each frame on its own, the mid-block attention attends over
  the H*W tokens of one frame), so *any* chunking whose boundaries respect the temporal stride
  gives the same numbers as one pass over the whole clip. The official memory-limit splits are
  exact spatial tilings of the same convs, i.e. they change rounding only.
* Temporal downsampling keeps the first frame on its own: T = 4n+1 frames -> n+1 latents. The
  decoder's temporal upsampler doubles every latent frame and drops the duplicate of frame 0 in
  the first chunk, so n+1 latents -> 4n+1 frames.
* The DiT consumes ``(posterior - shift) * 0.9152`` channels-last; official inference *samples*
  the posterior (``use_sample`` defaults to True), shift is 0.

Memory: `decode` runs one latent frame at a time (4 output frames) and holds only the per-conv
caches (2 frames per 3x3x3 conv) between chunks. On the GPU activations are channels-last and each
causal conv's input is assembled in place after its cached head frames (`conv_input`), or read in
place by the implicit-GEMM kernel (`vae_convs.py`). Optionally (``conv_max_bytes``, off by default) the
cuDNN-path convs with a temporal kernel and the upsamplers' pointwise convs run over row bands (exact).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrq.kernels.channel_bias import add_channel_bias_
from vsrq.kernels.conv3d import PreparedConv
from vsrq.kernels.group_norm import group_norm_act
from vsrq.kernels._triton import can_run_triton
from vsrq.models.seedvr2.vae_convs import (
    PackedConvs,
    fp8_causal_conv,
    fp8_causal_conv_scaled,
    keep_tail,
    kernel_causal_conv,
)

__all__ = ["SeedVR2VAEConfig", "SeedVR2VAE", "CONV_FORMATS"]

CONV_FORMATS = ("bf16", "fp8")


@dataclass
class SeedVR2VAEConfig:
    """Architecture hyper-parameters; `preset("seedvr2")` is the released s8 c16 t4 model."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder resnets per block; the decoder uses one more
    norm_groups: int = 32
    temporal_down_num: int = 2  # the last `n` downsamplers (first `n` upsamplers) also act in time
    eps: float = 1e-6
    mid_attention: bool = True
    scaling_factor: float = 0.9152
    shifting_factor: float = 0.0

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.temporal_down_num > len(self.block_out_channels) - 1:
            raise ValueError("temporal_down_num exceeds the number of downsamplers")
        for c in self.block_out_channels:
            if c % self.norm_groups:
                raise ValueError(f"channels {c} not divisible by norm_groups {self.norm_groups}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2**self.temporal_down_num

    @classmethod
    def preset(cls, name: str = "seedvr2") -> "SeedVR2VAEConfig":
        """'seedvr2': the released model; 'small'/'tiny': same topology, few channels, for tests."""
        if name == "seedvr2":
            return cls()
        if name == "small":
            return cls(block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_groups=16)
        if name == "tiny":
            return cls(block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_groups=2)
        raise ValueError(f"unknown SeedVR2 VAE preset {name!r} (seedvr2, small, tiny)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SeedVR2VAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- streaming helpers


class _Stream:
    """State of one causal pass over a clip: per-conv tail frames, whether this is chunk 0, and the
    memory format the pass keeps its activations in (channels-last on the GPU: cuDNN's kernels are
    NHWC, so channel-first activations cost a layout conversion around every conv)."""

    def __init__(self, conv_max_bytes: float | None, fmt: torch.memory_format = torch.contiguous_format,
                 fp8: PackedConvs | None = None, kernel_bf16: PackedConvs | None = None) -> None:
        self.tails: dict[nn.Module, Tensor] = {}
        self.first = True
        self.conv_max_bytes = conv_max_bytes
        self.fmt = fmt
        self.fp8 = fp8  # the convs that run in e4m3 (conv_format "fp8"), else None
        self.kernel_bf16 = kernel_bf16  # the convs that run on the implicit-GEMM kernel in bf16 (channels-last)

    def fp8_conv(self, conv: nn.Module) -> PreparedConv | None:
        return None if self.fp8 is None else self.fp8.get(conv)

    def kernel_conv(self, conv: nn.Module, x: Tensor) -> PreparedConv | None:
        if (self.kernel_bf16 is None or self.fmt != torch.channels_last_3d or x.dtype != torch.bfloat16
                or not can_run_triton(x)):
            return None  # (a float32 model keeps its precision: the kernel's operands are bf16)
        return self.kernel_bf16.get(conv)


def _row_bands(n_out: int, n_bands: int) -> list[tuple[int, int]]:
    n_bands = max(1, min(n_bands, n_out))
    step = math.ceil(n_out / n_bands)
    return [(o, min(n_out, o + step)) for o in range(0, n_out, step)]


def conv_input(conv: nn.Module, stream: _Stream, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device, pad_end: int = 0) -> tuple[Tensor, Tensor]:
    """The input buffer of a causal conv, and the body of it that the producer fills.

    The buffer holds the head frames first (the cached tail of the previous chunk, or room for
    ``kernel_t - 1`` copies of the body's first frame at the start of the clip), then the body's
    ``shape`` (B, C, T, H, W); ``pad_end`` zero rows and columns follow at the bottom/right (the
    encoder's downsampler). Writing the body in place is what saves the concatenation (a full copy
    of every conv's input) that prefixing frames would otherwise cost.
    """
    kt = conv.kernel_size[0]
    cached = stream.tails.get(conv)
    n_head = 0 if kt == 1 else (cached.shape[2] if cached is not None else kt - 1)
    b, c, t, h, w = shape
    buf = torch.empty(b, c, n_head + t, h + pad_end, w + pad_end, dtype=dtype, device=device,
                      memory_format=stream.fmt)
    if pad_end:
        buf[:, :, :, h:].zero_()
        buf[:, :, :, :h, w:].zero_()
    return buf, buf[:, :, n_head:, :h, :w]


def _apply_conv(conv: nn.Module, x: Tensor, stream: _Stream, residual: Tensor | None = None) -> Tensor:
    """conv(x) (+ residual). For a plain Conv3d on channels-last activations the conv runs without
    bias and one pass adds bias and residual (`vsrq.kernels.channel_bias`: torch's own bias add
    after a cuDNN conv3d does not vectorise and took ~13 % of a 1080p decode on an H100)."""
    if type(conv) is not nn.Conv3d or conv.bias is None or stream.fmt != torch.channels_last_3d:
        y = conv(x)
        return y if residual is None else y.add_(residual)
    y = F.conv3d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return add_channel_bias_(y, conv.bias, residual)


def run_conv(conv: nn.Module, stream: _Stream, buf: Tensor, residual: Tensor | None = None) -> Tensor:
    """Finish a buffer from `conv_input` (head frames, the tail kept for the next chunk) and run `conv`.

    Only ``kernel_size``, ``stride``, ``padding`` and ``__call__`` of `conv` are used, so a
    quantized drop-in module works. ``residual`` (the output's shape) is added to the result. A
    buffer larger than ``stream.conv_max_bytes`` is convolved over row bands (each band with its
    halo rows), which is exact.
    """
    kt, st = conv.kernel_size[0], conv.stride[0]
    if kt > 1:
        cached = stream.tails.get(conv)
        n_head = cached.shape[2] if cached is not None else kt - 1
        if cached is not None:
            buf[:, :, :n_head] = cached
        else:
            buf[:, :, :n_head] = buf[:, :, n_head : n_head + 1]
        if kt - st > 0:
            stream.tails[conv] = keep_tail(None, buf, kt - st)  # a copy: the buffer can be freed

    h = buf.shape[3]
    kh, sh, ph = conv.kernel_size[1], conv.stride[1], conv.padding[1]
    limit = stream.conv_max_bytes
    in_bytes = buf.numel() * buf.element_size()
    if limit is None or in_bytes <= limit or ph % sh != 0:
        return _apply_conv(conv, buf, stream, residual)

    # Row-banded: output rows [o0, o1) need input rows [o0*sh - ph, (o1-1)*sh - ph + kh).
    h_out = (h + 2 * ph - kh) // sh + 1
    out: Tensor | None = None
    for o0, o1 in _row_bands(h_out, math.ceil(in_bytes / limit)):
        a = max(0, o0 * sh - ph)
        z = min(h, (o1 - 1) * sh - ph + kh)
        yb = _apply_conv(conv, buf[:, :, :, a:z], stream)
        j0 = (o0 * sh - a) // sh  # band output row of global row o0 (exact: ph % sh == 0)
        yb = yb[:, :, :, j0 : j0 + (o1 - o0)]
        if out is None:
            out = torch.empty(yb.shape[0], yb.shape[1], yb.shape[2], h_out, yb.shape[4], dtype=yb.dtype,
                              device=yb.device, memory_format=stream.fmt)
        out[:, :, :, o0:o1] = yb
        del yb
    assert out is not None
    return out if residual is None else out.add_(residual)


def causal_conv(conv: nn.Module, x: Tensor, stream: _Stream, pad_end: int = 0) -> Tensor:
    """Run a Conv3d (temporal padding 0, spatial padding on the module) causally in time.

    The chunk is prefixed with the cached tail of the previous chunk, or with ``kernel_t - 1``
    copies of its first frame at the start of the clip (`conv_input` / `run_conv`); ``pad_end``
    zero rows/columns are added at the bottom/right. Convs whose input comes from a GroupNorm use
    `norm_conv`, which writes the normalised chunk into the buffer instead of copying it.
    """
    if conv.kernel_size[0] == 1 and not pad_end:
        return _apply_conv(conv, x.contiguous(memory_format=stream.fmt), stream)
    buf, body = conv_input(conv, stream, tuple(x.shape), x.dtype, x.device, pad_end)
    body.copy_(x)
    return run_conv(conv, stream, buf)


def _norm_act(norm: nn.GroupNorm, x: Tensor, act: bool = True, out: Tensor | None = None) -> Tensor:
    """GroupNorm of every frame on its own (as the official per-frame batching), then SiLU; one
    pass over the chunk (vsrq/kernels/group_norm.py says why not nn.GroupNorm per frame)."""
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, act, out=out)


def norm_conv(norm: nn.GroupNorm, conv: nn.Module, x: Tensor, stream: _Stream,
              residual: Tensor | None = None) -> Tensor:
    """conv(SiLU(GroupNorm(x))) (+ residual) causally, the normalised chunk written straight into
    the conv's buffer (in fp8 mode: an e4m3 chunk read by the fp8 kernel, bias and residual fused)."""
    pc = stream.fp8_conv(conv)
    if pc is not None:
        x8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device, memory_format=stream.fmt)
        _norm_act(norm, x, out=x8)
        return fp8_causal_conv(conv, pc, x8, stream.tails, x.dtype, residual)
    buf, body = conv_input(conv, stream, (x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]),
                           x.dtype, x.device)
    _norm_act(norm, x, out=body)
    return run_conv(conv, stream, buf, residual)


# ----------------------------------------------------------------------------- blocks


class ResnetBlock(nn.Module):
    """norm-SiLU-conv3x3x3 twice plus (1x1x1) shortcut; names follow the checkpoint."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=(0, 1, 1))
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=(0, 1, 1))
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        h = norm_conv(self.norm1, self.conv1, x, stream)
        if self.conv_shortcut is not None:
            x = causal_conv(self.conv_shortcut, x, stream)
        return norm_conv(self.norm2, self.conv2, h, stream, residual=x)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (diffusers-style names)."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        out = torch.empty_like(x)
        for i in range(t):
            frame = x[:, :, i]
            tok = self.group_norm(frame).permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when channels-last
            q, k, v = self.to_q(tok), self.to_k(tok), self.to_v(tok)
            a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
            a = self.to_out[0](a).view(b, h, w, c)
            out[:, :, i].permute(0, 2, 3, 1).copy_(a + frame.permute(0, 2, 3, 1))
        return out


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, eps: float, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialAttention(channels, groups, eps)] if attention else [])

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        x = self.resnets[0](x, stream)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x, stream)


class Downsample(nn.Module):
    """Stride-2 conv after a zero pad of one row/column at the bottom/right; 3x3x3 if it also halves time."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        kt = 3 if temporal else 1
        st = 2 if temporal else 1
        self.conv = nn.Conv3d(channels, channels, (kt, 3, 3), stride=(st, 2, 2), padding=0)

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        pc = stream.kernel_conv(self.conv, x)
        if pc is not None:  # reads the pad and the head frames in place (vae_convs.py says why)
            return kernel_causal_conv(self.conv, pc, x, stream.tails, pad_end=1)
        return causal_conv(self.conv, x, stream, pad_end=1)


class Upsample(nn.Module):
    """Learned depth-to-space (1x1x1 conv to s*s*tz*C channels, shuffle) then a causal 3x3x3 conv."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.tz = 2 if temporal else 1
        self.upscale_conv = nn.Conv3d(channels, channels * 4 * self.tz, 1)
        self.conv = nn.Conv3d(channels, channels, 3, padding=(0, 1, 1))

    def _shuffled(self, y: Tensor) -> Tensor:
        """(b, 4*tz*c, t, h, w) -> a (b, c, t, tz, h, 2, w, 2) view whose reshape is the upsampled
        (b, c, t*tz, 2h, 2w); channel index = ((sx * 2 + sy) * tz + z) * C + c."""
        b, _, t, h, w = y.shape
        c = y.shape[1] // (4 * self.tz)
        return y.view(b, 2, 2, self.tz, c, t, h, w).permute(0, 4, 5, 3, 6, 1, 7, 2)

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        b, c, t, h, w = x.shape
        drop = 1 if (self.tz == 2 and stream.first) else 0  # frame 0's duplicate, start of clip only
        shape = (b, c, t * self.tz - drop, 2 * h, 2 * w)
        pc = stream.fp8_conv(self.conv)
        if pc is not None:  # the fp8 kernel reads the head frames in place: no buffer around the body
            buf = body = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=stream.fmt)
        else:
            buf, body = conv_input(self.conv, stream, shape, x.dtype, x.device)
        out_bytes = body.numel() * body.element_size() * 2  # upscaled + shuffled copy
        limit = stream.conv_max_bytes
        n_bands = 1 if limit is None else max(1, math.ceil(out_bytes / limit))
        for r0, r1 in _row_bands(h, n_bands):  # pointwise conv: row bands need no halo
            y = self._shuffled(_apply_conv(self.upscale_conv, x[:, :, :, r0:r1], stream))
            rows = body[:, :, :, 2 * r0 : 2 * r1]
            if drop:
                y = y.reshape(b, c, t * self.tz, 2 * (r1 - r0), 2 * w)
                rows.copy_(torch.cat([y[:, :, :1], y[:, :, 2:]], dim=2))
            else:  # written straight into the conv's buffer: one strided copy
                rows.view(b, c, t, self.tz, r1 - r0, 2, w, 2).copy_(y)
            del y
        if pc is not None:
            return fp8_causal_conv_scaled(self.conv, pc, body, stream.tails)
        return run_conv(self.conv, stream, buf)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, eps: float, down: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, eps) for i in range(layers)]
        )
        self.downsamplers = (
            nn.ModuleList([Downsample(cout, temporal=(down == "st"))]) if down is not None else None
        )

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        for r in self.resnets:
            x = r(x, stream)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, stream)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, eps: float, up: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, eps) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(cout, temporal=(up == "st"))]) if up is not None else None

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        for r in self.resnets:
            x = r(x, stream)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, stream)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: SeedVR2VAEConfig) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        n = len(ch)
        self.conv_in = nn.Conv3d(cfg.in_channels, ch[0], 3, padding=(0, 1, 1))
        blocks = []
        for i in range(n):
            down = None if i == n - 1 else ("st" if i >= n - 1 - cfg.temporal_down_num else "s")
            blocks.append(
                DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, cfg.norm_groups, cfg.eps, down)
            )
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(ch[-1], cfg.norm_groups, cfg.eps, cfg.mid_attention)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, ch[-1], eps=cfg.eps)
        self.conv_out = nn.Conv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=(0, 1, 1))

    def forward(self, x: Tensor, stream: _Stream) -> Tensor:
        x = causal_conv(self.conv_in, x, stream)
        for blk in self.down_blocks:
            x = blk(x, stream)
        x = self.mid_block(x, stream)
        return norm_conv(self.conv_norm_out, self.conv_out, x, stream)


class Decoder(nn.Module):
    def __init__(self, cfg: SeedVR2VAEConfig) -> None:
        super().__init__()
        ch = tuple(reversed(cfg.block_out_channels))
        n = len(ch)
        self.conv_in = nn.Conv3d(cfg.latent_channels, ch[0], 3, padding=(0, 1, 1))
        self.mid_block = MidBlock(ch[0], cfg.norm_groups, cfg.eps, cfg.mid_attention)
        blocks = []
        for i in range(n):
            up = None if i == n - 1 else ("st" if i < cfg.temporal_down_num else "s")
            blocks.append(
                UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, cfg.norm_groups, cfg.eps, up)
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, ch[-1], eps=cfg.eps)
        self.conv_out = nn.Conv3d(ch[-1], cfg.out_channels, 3, padding=(0, 1, 1))

    def forward(self, z: Tensor, stream: _Stream) -> Tensor:
        x = causal_conv(self.conv_in, z, stream)
        x = self.mid_block(x, stream)
        for blk in self.up_blocks:
            x = blk(x, stream)
        return norm_conv(self.conv_norm_out, self.conv_out, x, stream)


# ----------------------------------------------------------------------------- the VAE


class SeedVR2VAE(nn.Module):
    """Encoder + decoder with the official chunked-causal inference numerics.

    `encode`: (B,3,T,H,W) in [-1,1], T = 4n+1 -> (B, n+1, H/8, W/8, 16), scaled for the DiT.
    `decode`: that latent -> (B,3,4n+1,H,W) (not clamped, as the official `vae_decode`).
    """

    def __init__(self, config: SeedVR2VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or SeedVR2VAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        # Inputs of the cuDNN-path causal convs (not the 1x1x1 shortcuts, not the kernel's convs) above
        # this many bytes run over exact row bands (the official code splits at 0.5 GiB). Off: with
        # the inputs assembled in place (`conv_input`) bands only add copies;
        # on an H100 at 1080p they cost 15 % of the decode and saved no peak memory (docs/PERF.md).
        self.conv_max_bytes: float | None = None
        # Activations channels-last (cuDNN's native layout): None = on CUDA only.
        self.channels_last: bool | None = None
        # "bf16" (the model's dtype, cuDNN) or "fp8": the convs of vae_convs.py's list in e4m3.
        self.conv_format = "bf16"
        self._fp8: PackedConvs | None = None
        self._kernel_bf16: PackedConvs | None = None

    def fp8_convs(self) -> list[nn.Conv3d]:
        """The convs that run in e4m3 when conv_format is "fp8" (vae_convs.py says why these)."""
        convs: list[nn.Conv3d] = []
        for mod in self.modules():
            if isinstance(mod, ResnetBlock):
                convs += [mod.conv1, mod.conv2]
            elif isinstance(mod, Upsample):
                convs.append(mod.conv)
        return convs + [self.encoder.conv_out]

    def _stream(self, device: torch.device) -> _Stream:
        """A fresh causal pass; in channels-last mode the conv weights are made channels-last too
        (once), so that cuDNN converts nothing."""
        cl = device.type == "cuda" if self.channels_last is None else self.channels_last
        fmt = torch.channels_last_3d if cl else torch.contiguous_format
        w = self.encoder.conv_in.weight
        if not w.is_contiguous(memory_format=fmt):
            with torch.inference_mode(False):  # normal tensors even inside the pipeline's inference mode
                self.to(memory_format=fmt)
        if self.conv_format not in CONV_FORMATS:
            raise ValueError(f"conv_format must be one of {CONV_FORMATS}, got {self.conv_format!r}")
        fp8 = None
        if self.conv_format == "fp8":
            if self._fp8 is None:
                self._fp8 = PackedConvs(self.fp8_convs(), "fp8")
            fp8 = self._fp8
        if self._kernel_bf16 is None:
            self._kernel_bf16 = PackedConvs([m.conv for m in self.modules() if isinstance(m, Downsample)], "bf16")
        return _Stream(self.conv_max_bytes, fmt, fp8, self._kernel_bf16)

    # -- raw (unscaled, channel-first) passes ---------------------------------------------

    def _chunks(self, t: int, first: int, size: int | None) -> list[tuple[int, int]]:
        if size is None or size <= 0 or t <= first:
            return [(0, t)]
        spans = [(0, first)]
        spans += [(s, min(t, s + size)) for s in range(first, t, size)]
        return spans

    @torch.no_grad()
    def encode_moments(self, video: Tensor, chunk_frames: int | None = 4) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar clamped to [-30, 20]), each (B,16,T',h,w), float as the model.

        Chunks: frame 0 alone, then `chunk_frames` frames (a multiple of the temporal factor);
        None = one pass over the clip. All choices give the same numbers up to rounding.
        """
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        b, c, t, h, w = video.shape
        if (t - 1) % tf or h % sf or w % sf:
            raise ValueError(f"video must be (B,3,{tf}n+1,H,W) with H,W divisible by {sf}; got {tuple(video.shape)}")
        if chunk_frames is not None and chunk_frames % tf:
            raise ValueError(f"chunk_frames must be a multiple of {tf}")
        dtype = next(self.parameters()).dtype
        stream = self._stream(video.device)
        parts = []
        for s, e in self._chunks(t, 1, chunk_frames):
            parts.append(self.encoder(video[:, :, s:e].to(dtype), stream))
            stream.first = False
        moments = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        lc = self.config.latent_channels
        return moments[:, :lc], moments[:, lc:].clamp(-30.0, 20.0)

    @torch.no_grad()
    def decode_iter(self, z: Tensor, chunk_latents: int | None = 1) -> Iterator[Tensor]:
        """Raw (unscaled, channel-first (B,16,T',h,w)) latent -> successive chunks of frames.

        Yields frame 0 first (from latent 0), then 4 frames per latent. Consumers that write
        frames out as they come never hold the whole clip at full resolution.
        """
        dtype = next(self.parameters()).dtype
        stream = self._stream(z.device)
        for s, e in self._chunks(z.shape[2], 1, chunk_latents):
            yield self.decoder(z[:, :, s:e].to(dtype), stream).contiguous()
            stream.first = False

    @torch.no_grad()
    def decode_raw(self, z: Tensor, chunk_latents: int | None = 1) -> Tensor:
        b, _, tl, h, w = z.shape
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        out: Tensor | None = None
        pos = 0
        for part in self.decode_iter(z, chunk_latents):
            if out is None:
                out = part.new_empty(b, part.shape[1], (tl - 1) * tf + 1, h * sf, w * sf)
            out[:, :, pos : pos + part.shape[2]] = part
            pos += part.shape[2]
        assert out is not None and pos == out.shape[2]
        return out

    # -- what the pipeline calls ------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        chunk_frames: int | None = 4,
    ) -> Tensor:
        """Video (B,3,T,H,W) in [-1,1] -> DiT latent (B,T',H/8,W/8,16) = (z - shift) * scale.

        ``sample=True`` (the official inference default) draws z = mean + std * N(0,1), the
        noise shaped (B,16,T',h,w) like the official ``randn_like(mean)``; ``sample=False`` uses
        the mean.
        """
        mean, logvar = self.encode_moments(video, chunk_frames)
        z = mean
        if sample:
            # drawn where the generator lives (a CPU generator gives the same noise on every device)
            where = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        z = (z - self.config.shifting_factor) * self.config.scaling_factor
        return z.permute(0, 2, 3, 4, 1).contiguous()

    @torch.no_grad()
    def decode(self, latent: Tensor, *, chunk_latents: int | None = 1) -> Tensor:
        """DiT latent (B,T',h,w,16) -> video (B,3,(T'-1)*4+1,8h,8w), roughly in [-1,1]."""
        z = latent / self.config.scaling_factor + self.config.shifting_factor
        return self.decode_raw(z.permute(0, 4, 1, 2, 3), chunk_latents)
