"""The VAE's convolutions on the implicit-GEMM kernel (`vsrq.kernels.conv3d`): which convs, their packed
weights, their causal state. Mostly fp8 (e4m3); also the downsamplers in bf16 (below).

Why: the VAE is most of a SeedVR2 upscale's GPU time and its 3x3x3 convolutions most of that; on
an H100 the implicit-GEMM kernel of `vsrq.kernels.conv3d` runs them in fp8 at 1.5-1.75x cuDNN's
bf16 (docs/PERF.md). Which convs:

* convs fed by a GroupNorm + SiLU (every resnet conv, the encoder's conv_out): the norm kernel
  writes e4m3 directly (scale 1: normalised activations sit well inside e4m3's range, and it
  saturates at +-448), so quantizing costs no pass of its own;
* the upsamplers' 3x3x3 convs (the largest single convs of the decoder): their input (a pixel
  shuffle of the residual stream) has no known range, so it gets a per-chunk power-of-two scale
  (>= amax / 448; a power of two so that dividing by it is exact in bf16);
* everything else (conv_in/conv_out with 3 or 16 channels, the 1x1 shortcuts, downsamplers) stays
  bf16. The encoder's stride-2 downsamplers run on the kernel in bf16 in every mode (cuDNN is slow at
  stride 2: 79 TFLOP/s against the kernel's 386 at 1080p on an H100, and the kernel reads the bottom/right
  zero pad and the head frames in place).

Causal state: the kernel reads the cached head frames in place. For scale-1 inputs the cache holds
e4m3 frames; for per-chunk scales it holds the real (bf16) frames, requantized with each chunk's
scale, so head and body always share one scale.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from vsrq.kernels.conv3d import FP8_MAX, PreparedConv, causal_conv3d, prepare_conv_weight, triton_supported

__all__ = ["PackedConvs", "fp8_causal_conv", "fp8_causal_conv_scaled", "kernel_causal_conv", "keep_tail"]


class PackedConvs:
    """The packed weights (`fmt` "fp8" or "bf16") of the convs that run on the kernel; `get` is None for
    any other conv or a shape the kernel does not take. A pack is reused while the conv holds the same
    weight tensor (identity, not just its address: a new tensor may land at a freed one's address) at
    the same version; weights changed in place inside inference mode (no version counter) are not
    seen, so change them outside it or call `clear`."""

    def __init__(self, convs: list[nn.Conv3d], fmt: str = "fp8") -> None:
        self._convs = {id(c) for c in convs}
        self._packed: dict[int, tuple[tuple, PreparedConv | None]] = {}
        self.fmt = fmt

    def clear(self) -> None:
        self._packed.clear()

    def get(self, conv: nn.Module) -> PreparedConv | None:
        if id(conv) not in self._convs or not isinstance(conv, nn.Conv3d):
            return None
        w, b = conv.weight, conv.bias
        stamp = (w.data_ptr(), w.device, _version(w), None if b is None else (b.data_ptr(), _version(b)))
        hit = self._packed.get(id(conv))
        if hit is not None and hit[0][0] == stamp and hit[0][1]() is w and (b is None or hit[0][2]() is b):
            return hit[1]
        pc = prepare_conv_weight(w, self.fmt, b, conv.stride, conv.padding)
        if not triton_supported(pc):
            pc = None  # remembered, so an unsupported shape is not packed again on every call
        self._packed[id(conv)] = ((stamp, weakref.ref(w), None if b is None else weakref.ref(b)), pc)
        return pc


def _version(t: Tensor) -> int:
    """In-place updates bump a tensor's version (weights loaded into the same storage repack);
    inference tensors have none (-1: see `PackedConvs`)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def keep_tail(prefix: Tensor | None, x: Tensor, keep: int) -> Tensor:
    """A copy of the last `keep` frames of cat(prefix, x) along time, built without the cat: what a
    causal conv carries to its next chunk (both conv paths of the VAE keep their caches with it)."""
    n_prefix = 0 if prefix is None else prefix.shape[2]
    if keep > n_prefix + x.shape[2]:
        raise ValueError("causal chunk too short for the conv's temporal cache")
    if keep <= x.shape[2]:
        return x[:, :, x.shape[2] - keep :].clone()
    assert prefix is not None
    return torch.cat([prefix[:, :, n_prefix - (keep - x.shape[2]) :], x], dim=2)


def _head_and_tail(conv: nn.Module, x: Tensor, cache: dict[nn.Module, Tensor]) -> tuple[Tensor | None, bool]:
    """The head frames for this chunk (None + replicate at the clip start) and the cache updated
    with the last ``kt - st`` frames of the head-prefixed input."""
    kt, st = conv.kernel_size[0], conv.stride[0]
    if kt == 1:
        return None, False
    head = cache.get(conv)
    if kt - st > 0:
        prefix = head if head is not None else x[:, :, :1].expand(-1, -1, kt - 1, -1, -1)
        cache[conv] = keep_tail(prefix, x, kt - st)
    return head, head is None


def fp8_causal_conv(conv: nn.Module, pc: PreparedConv, x8: Tensor, cache: dict[nn.Module, Tensor],
                    out_dtype: torch.dtype, residual: Tensor | None = None) -> Tensor:
    """Causal conv of an e4m3 chunk at scale 1 (a GroupNorm's output), bias and residual fused."""
    head, rep = _head_and_tail(conv, x8, cache)
    return causal_conv3d(x8, pc, head=head, replicate_first=rep, x_scale=1.0, residual=residual,
                         out_dtype=out_dtype)


def fp8_causal_conv_scaled(conv: nn.Module, pc: PreparedConv, x: Tensor, cache: dict[nn.Module, Tensor]) -> Tensor:
    """Causal conv of a real-valued (bf16) chunk quantized with its own scale: the power of two at
    or above amax / 448 over the chunk and its cached head frames (which are requantized with it)."""
    head, rep = _head_and_tail(conv, x, cache)
    amax = x.abs().amax().float()
    if head is not None:
        amax = torch.maximum(amax, head.abs().amax().float())
    scale = torch.exp2(torch.ceil(torch.log2(torch.clamp_min(amax, 1e-30) / FP8_MAX))).reshape(1)
    inv = 1.0 / scale

    def q(t: Tensor) -> Tensor:
        out = torch.empty(t.shape, dtype=torch.float8_e4m3fn, device=t.device, memory_format=torch.channels_last_3d)
        return torch.mul(t, inv.to(t.dtype), out=out)

    return causal_conv3d(q(x), pc, head=None if head is None else q(head), replicate_first=rep, x_scale=scale,
                         out_dtype=x.dtype)


def kernel_causal_conv(conv: nn.Module, pc: PreparedConv, x: Tensor, cache: dict[nn.Module, Tensor],
                       pad_end: int = 0) -> Tensor:
    """Causal bf16 conv of a chunk on the kernel, ``pad_end`` zero rows/columns read at the bottom/right."""
    head, rep = _head_and_tail(conv, x, cache)
    (kh, kw), (sh, sw), (ph, pw) = pc.kernel[1:], pc.stride[1:], pc.padding
    out_hw = ((x.shape[3] + 2 * ph + pad_end - kh) // sh + 1, (x.shape[4] + 2 * pw + pad_end - kw) // sw + 1)
    return causal_conv3d(x, pc, head=head, replicate_first=rep, out_hw=out_hw, out_dtype=x.dtype)
