"""Causal 3D convolution of SeedVR2's video VAE as one implicit GEMM, in fp8 (e4m3) or bf16.

Why: the VAE's 3x3x3 convolutions are most of a SeedVR2 upscale's GPU time (docs/PERF.md, "SeedVR2's
VAE on the H100"), cuDNN offers no fp8 conv3d through torch, and cuDNN's bf16 conv needs its input
materialised (cached head frames, padding); this kernel reads them in place.

One function covers every conv of that VAE. Activations are logical (B, C, T, H, W) tensors in
``torch.channels_last_3d`` memory (channel stride 1); the result is exactly

    F.conv3d(Xpad, weight, bias, stride) (+ residual)

where Xpad is x prefixed in time by ``head`` (the previous chunk's cached frames) or, with
``replicate_first``, by kt-1 copies of x's frame 0, and zero padded spatially by (ph, pw) at the
top/left and by whatever the requested output size needs at the bottom/right (the encoder's
Downsample: ``F.pad(x, (0, 1, 0, 1))`` then a stride-2 conv without padding of its own). The
Triton kernel reads the head frames from ``head`` and masks the padding: neither is materialised.

Numerics: fp32 accumulation; epilogue ``acc * x_scale * w_scale[n] + bias[n] (+ residual)``, cast
to ``out_dtype``. fp8 mode: e4m3 activations with one scalar scale, e4m3 weights with one scale
per output channel (amax / 448). bf16 mode: scales are 1. :func:`causal_conv3d_ref` is the same
math in fp32 with torch ops (and the CPU path). On Hopper the fp8 tensor cores add into a
reduced-precision accumulator between promotions to fp32 (Triton's default): 1e-3 relative to the
reference in GPU runs 1-2, 30x below e4m3's own error (~4e-2); ``fp8_acc_k=32`` brings it to 4e-5
at 1.4x the time (docs/perf_logs/conv3d-2026-11-24-h100.log).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from vsrq.kernels._triton import can_run_triton, capability, device_index

__all__ = [
    "PreparedConv", "prepare_conv_weight", "quantize_fp8_activation", "causal_conv3d", "causal_conv3d_ref",
    "triton_supported",
]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada, Hopper and newer
FORMATS = ("fp8", "bf16")


@dataclass
class PreparedConv:
    """A Conv3d's weights packed once for the implicit GEMM.

    ``w`` is (Cout, K) with K ordered (kt, kh, kw, Cin), Cin fastest, so one K block is a run of
    channels of one input pixel, as channels-last activations store them. ``scale`` (Cout,) fp32
    is the per-output-channel weight scale (ones in bf16 mode); ``bias`` (Cout,) fp32 or None.
    """

    w: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    fmt: str
    cin: int
    cout: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int]  # spatial (ph, pw); time is causal, never zero padded

    @property
    def dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self.fmt == "fp8" else torch.bfloat16

    def to(self, device: torch.device | str) -> "PreparedConv":
        """The same conv with its tensors on ``device``."""
        return replace(self, w=self.w.to(device), scale=self.scale.to(device),
                       bias=None if self.bias is None else self.bias.to(device))

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight (Cout, Cin, kt, kh, kw) these packed values stand for."""
        kt, kh, kw = self.kernel
        w = self.w.float() * self.scale[:, None]
        return w.view(self.cout, kt, kh, kw, self.cin).permute(0, 4, 1, 2, 3).contiguous()


def prepare_conv_weight(weight: torch.Tensor, fmt: str, bias: torch.Tensor | None = None,
                        stride: tuple[int, int, int] | int = 1,
                        padding: tuple[int, int, int] | tuple[int, int] = (0, 1, 1)) -> PreparedConv:
    """Pack a (Cout, Cin, kt, kh, kw) weight as e4m3 (per-output-channel scale) or bf16.

    ``stride`` and ``padding`` are the module's (``nn.Conv3d.stride/padding``); a 3-tuple padding
    must have no temporal part, as in the VAE, whose time padding is the causal head.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if weight.dim() != 5:
        raise ValueError(f"expected a 5-d conv3d weight, got shape {tuple(weight.shape)}")
    st = (stride,) * 3 if isinstance(stride, int) else tuple(int(s) for s in stride)
    pad = tuple(int(p) for p in padding)
    if len(pad) == 3:
        if pad[0] != 0:
            raise ValueError("temporal padding must be 0: the causal head replaces it")
        pad = pad[1:]
    cout, cin, kt, kh, kw = weight.shape
    w = weight.detach().float().permute(0, 2, 3, 4, 1).reshape(cout, kt * kh * kw * cin)
    if fmt == "fp8":
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        packed = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    else:
        scale = torch.ones(cout, dtype=torch.float32, device=w.device)
        packed = w.to(torch.bfloat16)
    return PreparedConv(
        w=packed.contiguous(), scale=scale.float().contiguous(),
        bias=None if bias is None else bias.detach().float().contiguous(),
        fmt=fmt, cin=cin, cout=cout, kernel=(kt, kh, kw), stride=st, padding=pad,  # type: ignore[arg-type]
    )


def quantize_fp8_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, fp32 scalar scale = amax / 448) of x, keeping x's memory format."""
    amax = x.abs().amax().float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.reshape(1)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    n_head: int  # frames before x in the padded clip
    t_out: int
    h_out: int
    w_out: int


def _geometry(x: torch.Tensor, pc: PreparedConv, head: torch.Tensor | None, replicate_first: bool,
              out_hw: tuple[int, int] | None) -> _Geometry:
    b, c, t, h, w = x.shape
    kt, kh, kw = pc.kernel
    st, sh, sw = pc.stride
    ph, pw = pc.padding
    if c != pc.cin:
        raise ValueError(f"x has {c} channels, the conv expects {pc.cin}")
    if head is not None and replicate_first:
        raise ValueError("give either head or replicate_first, not both")
    n_head = 0
    if head is not None:
        if head.dim() != 5 or head.shape[:2] != x.shape[:2] or head.shape[3:] != x.shape[3:]:
            raise ValueError(f"head {tuple(head.shape)} does not match x {tuple(x.shape)} outside time")
        if head.dtype != x.dtype:
            raise ValueError(f"head dtype {head.dtype} differs from x's {x.dtype}")
        n_head = head.shape[2]
    elif replicate_first:
        n_head = kt - 1
    t_out = (n_head + t - kt) // st + 1
    if out_hw is None:
        out_hw = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    h_out, w_out = out_hw
    if t_out < 1 or h_out < 1 or w_out < 1:
        raise ValueError(f"empty output ({t_out}, {h_out}, {w_out}) for input {tuple(x.shape)}")
    return _Geometry(n_head, t_out, int(h_out), int(w_out))


def _padded_input(x: torch.Tensor, head: torch.Tensor | None, replicate_first: bool, kt: int,
                  pc: PreparedConv, g: _Geometry) -> torch.Tensor:
    """Xpad, materialised (the reference and the cuDNN fallback need it; the kernel does not)."""
    if head is not None:
        x = torch.cat([head.to(x.dtype), x], dim=2)
    elif replicate_first and kt > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, kt - 1, -1, -1), x], dim=2)
    _, kh, kw = pc.kernel
    _, sh, sw = pc.stride
    ph, pw = pc.padding
    h, w = x.shape[3], x.shape[4]
    bottom = (g.h_out - 1) * sh + kh - h - ph  # negative: rows the conv never reads, cropped
    right = (g.w_out - 1) * sw + kw - w - pw
    return F.pad(x, (pw, right, ph, bottom))


def _as_real(x: torch.Tensor, x_scale: torch.Tensor | float | None) -> torch.Tensor:
    xf = x.float()
    if x_scale is not None:
        xf = xf * (x_scale.float().reshape(()) if isinstance(x_scale, torch.Tensor) else float(x_scale))
    return xf


# ----------------------------------------------------------------------------- reference


def causal_conv3d_ref(x: torch.Tensor, pc: PreparedConv, *, head: torch.Tensor | None = None,
                      replicate_first: bool = False, x_scale: torch.Tensor | float | None = None,
                      residual: torch.Tensor | None = None, out_hw: tuple[int, int] | None = None,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The same math in fp32 with torch ops: dequantize, build Xpad, F.conv3d, epilogue.

    Returned channels-last in ``out_dtype``. This is the CPU path of :func:`causal_conv3d`.
    """
    if pc.fmt == "bf16":  # the kernel's operands are bf16: round x (and head) as it does
        x = x.to(torch.bfloat16)
        head = None if head is None else head.to(torch.bfloat16)
    g = _geometry(x, pc, head, replicate_first, out_hw)
    xs = x_scale if pc.fmt == "fp8" else None
    xr = _as_real(x, xs)
    hr = None if head is None else _as_real(head, xs)
    xp = _padded_input(xr, hr, replicate_first, pc.kernel[0], pc, g)
    y = F.conv3d(xp, pc.dequantized().to(xp.device), pc.bias, stride=pc.stride)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype).contiguous(memory_format=torch.channels_last_3d)


def _cudnn(x: torch.Tensor, pc: PreparedConv, head: torch.Tensor | None, replicate_first: bool,
           x_scale: torch.Tensor | float | None, residual: torch.Tensor | None, g: _Geometry,
           out_dtype: torch.dtype) -> torch.Tensor:
    """Fallback on CUDA for shapes the kernel does not take: bf16 cuDNN on a materialised Xpad."""
    xs = x_scale if pc.fmt == "fp8" else None
    xb = _as_real(x, xs).bfloat16() if pc.fmt == "fp8" else x.bfloat16()
    hb = None if head is None else (_as_real(head, xs).bfloat16() if pc.fmt == "fp8" else head.bfloat16())
    xp = _padded_input(xb, hb, replicate_first, pc.kernel[0], pc, g)
    bias = None if pc.bias is None else pc.bias.bfloat16()
    y = F.conv3d(xp, pc.dequantized().bfloat16(), bias, stride=pc.stride)
    if residual is not None:
        y = y.float() + residual.float()
    return y.to(out_dtype).contiguous(memory_format=torch.channels_last_3d)


# ----------------------------------------------------------------------------- dispatch


def triton_supported(pc: PreparedConv) -> bool:
    """Shapes the Triton kernel takes: Cin a multiple of 16 (the smallest K block; a K block never
    straddles two taps) and Cout a multiple of 8 (16-byte output rows). Elsewhere (conv_in's 3 input
    channels, conv_out's 3 outputs) :func:`causal_conv3d` falls back."""
    return pc.cin % 16 == 0 and pc.cout % 8 == 0 and pc.cout >= 16


def _channel_fastest(t: torch.Tensor) -> torch.Tensor:
    """x and head may be any strided view whose channels are adjacent (the kernel takes their
    strides); anything else is copied to channels-last first."""
    return t if t.stride(1) == 1 else t.contiguous(memory_format=torch.channels_last_3d)


def _fp8_mma_ok(x: torch.Tensor) -> bool:
    """fp8 tensor cores exist from sm89 (Ada, Hopper); the interpreter emulates them."""
    return not x.is_cuda or capability(device_index(x)) >= FP8_MIN_CAPABILITY


def causal_conv3d(x: torch.Tensor, pc: PreparedConv, *, head: torch.Tensor | None = None,
                  replicate_first: bool = False, x_scale: torch.Tensor | float | None = None,
                  residual: torch.Tensor | None = None, out_hw: tuple[int, int] | None = None,
                  out_dtype: torch.dtype = torch.bfloat16, config: dict | None = None,
                  fp8_acc_k: int = 0) -> torch.Tensor:
    """The causal conv (module docstring) of x (B, Cin, T, H, W); returns (B, Cout, To, Ho, Wo)
    channels-last in ``out_dtype``.

    fp8: x (and head) float8_e4m3fn, ``x_scale`` the scalar scale (float or 1-element tensor). bf16:
    x is cast to bf16. ``out_hw`` defaults to the symmetric-padding size; ask for more to pad at the
    bottom/right. Dispatch: the Triton implicit GEMM where ``can_run_triton(x)`` and
    :func:`triton_supported`; otherwise on CUDA, cuDNN bf16 F.conv3d on a materialised Xpad
    (fp8 inputs dequantized to bf16); otherwise (CPU) :func:`causal_conv3d_ref`. ``config`` pins a
    launch config (else the shared tuner picks one per shape). ``pc`` must be on x's device.
    ``fp8_acc_k`` > 0 promotes Hopper's fp8 tensor-core accumulator to full fp32 every that many
    products (Triton's ``max_num_imprecise_acc``; 0 keeps Triton's default).
    """
    if pc.fmt == "fp8":
        if x.dtype != torch.float8_e4m3fn:
            raise ValueError(f"fp8 conv expects float8_e4m3fn activations, got {x.dtype}")
        if x_scale is None:
            raise ValueError("fp8 conv needs x_scale")
    else:
        x = x.to(torch.bfloat16)
        head = None if head is None else head.to(torch.bfloat16)
    g = _geometry(x, pc, head, replicate_first, out_hw)
    if residual is not None and tuple(residual.shape) != (x.shape[0], pc.cout, g.t_out, g.h_out, g.w_out):
        raise ValueError(f"residual {tuple(residual.shape)} does not match the output")
    if not (can_run_triton(x) and triton_supported(pc) and (pc.fmt == "bf16" or _fp8_mma_ok(x))):
        if x.is_cuda:
            return _cudnn(x, pc, head, replicate_first, x_scale, residual, g, out_dtype)
        return causal_conv3d_ref(x, pc, head=head, replicate_first=replicate_first, x_scale=x_scale,
                                 residual=residual, out_hw=(g.h_out, g.w_out), out_dtype=out_dtype)
    from vsrq.kernels.conv3d_triton import conv3d_triton

    if pc.fmt == "bf16":
        xs = torch.ones(1, dtype=torch.float32, device=x.device)
    elif isinstance(x_scale, torch.Tensor):
        xs = x_scale.to(device=x.device, dtype=torch.float32).reshape(1)
    else:
        xs = torch.full((1,), float(x_scale), dtype=torch.float32, device=x.device)  # type: ignore[arg-type]
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last_3d)  # read as (M, Cout) rows
    return conv3d_triton(
        _channel_fastest(x), pc, None if head is None else _channel_fastest(head), xs, residual,
        g.n_head, replicate_first, (g.t_out, g.h_out, g.w_out), out_dtype, config, fp8_acc_k,
    )
