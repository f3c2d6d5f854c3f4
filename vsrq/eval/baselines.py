"""Non-learned upscalers for the comparison table: bicubic (torch) and Lanczos-3 (own separable kernel).

Same input convention as metrics.py: numpy uint8 (T, H, W, 3) in -> numpy uint8 (T, sH, sW, 3) out
(rounded), or torch float (..., 3, H, W) in [0, 1] -> torch float clamped to [0, 1]. Both use
pixel-centre alignment (align_corners=False) like the DiT's own bicubic residual, so LR pixel i
covers HR pixels [s*i, s*i + s).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["bicubic_upscale", "lanczos_upscale", "lanczos_matrix"]


def _as_float(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError("torch inputs must be float in [0, 1] with layout (..., 3, H, W)")
        return x, False
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.shape[-1] != 3:
        raise TypeError(f"numpy inputs must be uint8 (..., H, W, 3), got {a.dtype} {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).movedim(-1, -3).float() / 255.0
    return t, True


def _back(y: torch.Tensor, was_numpy: bool) -> np.ndarray | torch.Tensor:
    y = y.clamp(0, 1)
    if was_numpy:
        return y.mul(255).round().to(torch.uint8).movedim(-3, -1).contiguous().numpy()
    return y


def bicubic_upscale(x: np.ndarray | torch.Tensor, scale: int = 4) -> np.ndarray | torch.Tensor:
    """F.interpolate bicubic (a = -0.75, antialias=False, align_corners=False), clamped to [0, 1]."""
    t, was_np = _as_float(x)
    lead = t.shape[:-3]
    flat = t.reshape(-1, *t.shape[-3:])
    y = F.interpolate(flat, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    return _back(y.reshape(*lead, *y.shape[-3:]), was_np)


def _lanczos(x: torch.Tensor, a: int = 3) -> torch.Tensor:
    out = torch.sinc(x) * torch.sinc(x / a)
    return torch.where(x.abs() < a, out, torch.zeros_like(out))


def lanczos_matrix(n_in: int, n_out: int, a: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n_out, n_in) resampling matrix of a Lanczos-`a` filter, edge-replicated and row-normalised.

    When reducing, the kernel is stretched by the reduction factor (antialiasing), as image
    libraries do; when enlarging it is the plain windowed sinc.
    """
    scale = n_out / n_in
    stretch = max(1.0, 1.0 / scale)
    support = a * stretch
    centres = (torch.arange(n_out, dtype=dtype) + 0.5) / scale - 0.5
    first = torch.floor(centres - support).long() + 1
    taps = int(math.ceil(2 * support)) + 1
    idx = first[:, None] + torch.arange(taps)[None, :]
    w = _lanczos((centres[:, None] - idx.to(dtype)) / stretch, a)
    m = torch.zeros(n_out, n_in, dtype=dtype)
    m.scatter_add_(1, idx.clamp(0, n_in - 1), w)
    return m / m.sum(dim=1, keepdim=True)


def lanczos_upscale(x: np.ndarray | torch.Tensor, scale: int = 4, a: int = 3) -> np.ndarray | torch.Tensor:
    """Separable Lanczos-3 resize by `scale` (two small matrix products per frame), clamped to [0, 1]."""
    t, was_np = _as_float(x)
    h, w = t.shape[-2:]
    mh = lanczos_matrix(h, round(h * scale), a).to(t.dtype)
    mw = lanczos_matrix(w, round(w * scale), a).to(t.dtype)
    y = torch.matmul(torch.matmul(mh, t), mw.T)
    return _back(y, was_np)
