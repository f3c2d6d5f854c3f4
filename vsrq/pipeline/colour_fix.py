"""Colour correction of a restored video against its (resized) input.

A one-step diffusion restorer reinvents detail well but lets the overall colour drift: its
VAE latent carries low frequencies loosely. Both fixes keep the restored frames' detail and take
their colour from the input, which the model was asked to preserve anyway:

- `wavelet`: split both into a low-frequency base and high-frequency detail with a stack of
  dilated blurs (an à trous wavelet); output = restored detail + input base. Strong: also
  restores local tone, so it is the default of SeedVR2's authors.
- `adain`: match each frame's per-channel mean and standard deviation to the input's. Gentle:
  only a global shift and gain per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOUR_FIXES = ("wavelet", "adain", "none")


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes of `dilation` pixels, replicate-padded; x is (N, C, H, W)."""
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=dilation)


def wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(detail, base) of frames (N, C, H, W) with detail + base == x."""
    base = x
    detail = torch.zeros_like(x)
    for i in range(levels):
        # replicate padding needs the pad smaller than the frame; larger holes add nothing there
        d = min(2 ** i, max(1, min(x.shape[-2:]) - 1))
        blurred = _blur(base, d)
        detail = detail + (base - blurred)
        base = blurred
    return detail, base


def wavelet_fix(restored: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Restored detail on the reference's low frequencies; both (N, C, H, W), same shape."""
    detail, _ = wavelet_split(restored, levels)
    _, base = wavelet_split(reference, levels)
    return detail + base


def adain_fix(restored: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-frame, per-channel mean and std of `reference` given to `restored`; (N, C, H, W)."""
    mu_r, sd_r = restored.mean((-2, -1), keepdim=True), restored.std((-2, -1), keepdim=True)
    mu_s, sd_s = reference.mean((-2, -1), keepdim=True), reference.std((-2, -1), keepdim=True)
    return (restored - mu_r) / (sd_r + eps) * sd_s + mu_s


def colour_fix(restored: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply one of COLOUR_FIXES to frames (N, C, H, W); computed in float32 for any input dtype."""
    if method == "none":
        return restored
    if restored.shape != reference.shape:
        raise ValueError(f"colour fix needs frames of one shape, got {tuple(restored.shape)} and {tuple(reference.shape)}")
    r, s = restored.float(), reference.float()
    if method == "wavelet":
        out = wavelet_fix(r, s)
    elif method == "adain":
        out = adain_fix(r, s)
    else:
        raise ValueError(f"colour fix must be one of {', '.join(COLOUR_FIXES)}, got {method!r}")
    return out.to(restored.dtype)
