"""One frame resize for the pipelines: bicubic, antialiased when either axis shrinks.

Why one: `--outscale` (any model) and SeedVR2's resize-to-target both resize frames; torch's
antialiased bicubic is another kernel (a = -0.5) than the plain one (a = -0.75), so two call sites
with different flags gave visibly different results for the same enlargement (up to 0.09 of the
range). Enlarging both axes uses the plain bicubic the DiT's own residual and the eval baseline
use; when one axis shrinks, torch antialiases both (one flag per call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_images"]


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, H, W) with (H, W) = size; unchanged when already that size."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-3:]) if x.dim() != 4 else x
    out = F.interpolate(flat, size=tuple(size), mode="bicubic", align_corners=False,
                        antialias=size[0] < h or size[1] < w)
    return out.reshape(*lead, *size)
