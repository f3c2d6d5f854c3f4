"""y += bias[c] (+ residual) over channels-last activations, in one pass.

Why: after a cuDNN conv3d torch adds the bias in a separate broadcasting kernel that does not
vectorise (its offsets are computed per element); on SeedVR2's VAE at 1080p those adds were ~13 %
of the decode on an H100 (docs/PERF.md), and the resnet's residual add was one more pass over the
same tensor. Channels-last memory (B, T, H, W, C) makes the bias index simply `offset % C`, so one
Triton kernel adds bias and residual while the tensor streams through once.

`add_channel_bias_ref` is the reference and the path for anything the kernel does not take.
"""

from __future__ import annotations

import torch

from vsrq.kernels._triton import can_run_triton

__all__ = ["add_channel_bias_", "add_channel_bias_ref"]


def add_channel_bias_ref(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """In place: y = y + bias (per channel, dim 1) + residual, computed in fp32, rounded once."""
    acc = y.float() + bias.float().view(1, -1, *([1] * (y.dim() - 2)))
    if residual is not None:
        acc += residual.float()
    return y.copy_(acc)


def _dense_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def add_channel_bias_(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """In place y += bias[c] (+ residual); y (B, C, T, H, W). Triton for dense channels-last tensors
    (the residual too), the reference otherwise. Returns y."""
    ok = can_run_triton(y) and _dense_channels_last(y) and (residual is None or (
        _dense_channels_last(residual) and residual.shape == y.shape and residual.device == y.device))
    if not ok:
        return add_channel_bias_ref(y, bias, residual)
    from vsrq.kernels.channel_bias_triton import add_channel_bias_triton

    return add_channel_bias_triton(y, bias.contiguous(), residual)
