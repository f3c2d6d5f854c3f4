"""Per-frame GroupNorm + SiLU of a video VAE's activations, in one pass on the GPU.

Why not nn.GroupNorm frame by frame: with one video and 32 groups, torch reduces each frame in
32 rows of millions of values, and writing frames into an output slice is a strided copy; at
1080p those two were half of SeedVR2's VAE time on an H100 (docs/PERF.md). Here the statistics of
every (video, group, frame) come from torch reductions over the whole chunk (accumulated in fp32),
and one elementwise kernel normalises, applies the affine and SiLU in fp32 registers and writes
the activation dtype: no fp32 copy of the activations is ever stored.

Channels-last activations (`torch.channels_last_3d`, what the VAE uses on the GPU so that cuDNN's
convolutions need no layout conversions) get their statistics from a Triton kernel that reads each
frame once, and the result can be written straight into a caller's buffer (`out`: the body of a causal
conv's input, after its cached head frames), which saves the concatenation a causal conv otherwise
needs.

`group_norm_act_ref` is the reference (and the CPU path): the same math with torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsrq.kernels._triton import can_run_triton
from vsrq.kernels.conv3d import FP8_MAX

__all__ = ["frame_group_stats", "group_norm_act", "group_norm_act_ref", "is_channels_last_body"]


def frame_group_stats(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) in fp32, each (B, G, T), of x (B, C, T, H, W) over each group's channels and pixels.

    The mean is accumulated and returned in fp32 (a bf16 mean would lose the small deviations
    of an activation far from zero); the variance's own rounding only moves rstd by < 0.4 %.
    """
    b, c, t, h, w = x.shape
    xg = x.view(b, groups, c // groups, t, h * w)
    mean = xg.mean(dim=(2, 4), dtype=torch.float32)
    var = torch.var_mean(xg, dim=(2, 4), correction=0)[0].float()
    return mean, torch.rsqrt(var + eps)


def group_norm_act_ref(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, act: bool) -> torch.Tensor:
    """((x - mean) * rstd * weight + bias), SiLU if `act`, computed in fp32, returned in x's dtype."""
    b, c, t, h, w = x.shape
    g = mean.shape[1]
    xg = x.view(b, g, c // g, t, h * w).float()
    y = (xg - mean[:, :, None, :, None]) * rstd[:, :, None, :, None]
    y = y.view(b, c, t, h * w) * weight.float().view(1, c, 1, 1) + bias.float().view(1, c, 1, 1)
    if act:
        y = F.silu(y)
    return y.view(b, c, t, h, w).to(x.dtype)


def is_channels_last_body(t: torch.Tensor) -> bool:
    """Memory (B, T, H, W, C) with each video's elements contiguous (any batch stride): a
    channels_last_3d tensor, or a slice of one along T."""
    b, c, f, h, w = t.shape
    if c > 1 and t.stride(1) != 1:
        return False
    return (w == 1 or t.stride(4) == c) and (h == 1 or t.stride(3) == w * c) and (f == 1 or t.stride(2) == h * w * c)


def _cl_kernel_fits(c: int, groups: int) -> bool:
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    return pow2(c) and pow2(groups) and c % groups == 0 and c <= 1024


def group_norm_act(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   act: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame GroupNorm (+ SiLU) of x (B, C, T, H, W); Triton on CUDA, the reference elsewhere.

    `out` (same shape, any float dtype) receives the result and is returned; without it a new tensor
    in x's dtype and layout is returned. Channels-last inputs stay channels-last.
    """
    if out is not None and out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, x {tuple(x.shape)}")
    if can_run_triton(x) and is_channels_last_body(x) and _cl_kernel_fits(x.shape[1], groups):
        from vsrq.kernels.group_norm_triton import frame_group_stats_cl_triton, group_norm_act_cl_triton

        if out is None:
            out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        if is_channels_last_body(out):
            mean, rstd = frame_group_stats_cl_triton(x, groups, eps)
            return group_norm_act_cl_triton(x, mean, rstd, weight, bias, act, out)
    cl = x.dim() == 5 and is_channels_last_body(x) and x.shape[1] > 1
    x = x.contiguous()
    mean, rstd = frame_group_stats(x, groups, eps)
    if can_run_triton(x):
        from vsrq.kernels.group_norm_triton import group_norm_act_triton

        y = group_norm_act_triton(x, mean, rstd, weight, bias, act)
    else:
        y = group_norm_act_ref(x, mean, rstd, weight, bias, act)
    if out is not None:
        if out.dtype == torch.float8_e4m3fn:
            y = y.float().clamp_(-FP8_MAX, FP8_MAX)
        return out.copy_(y)
    return y.contiguous(memory_format=torch.channels_last_3d) if cl else y
