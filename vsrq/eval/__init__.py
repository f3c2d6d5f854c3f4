"""Evaluation for vsrq: fidelity/temporal metrics (metrics.py) and non-learned baselines (baselines.py)."""

from .baselines import bicubic_upscale, lanczos_upscale
from .metrics import ClipScore, OpenCVUnavailable, psnr_y, ssim_y, warping_error

__all__ = ["ClipScore", "OpenCVUnavailable", "bicubic_upscale", "lanczos_upscale", "psnr_y", "ssim_y", "warping_error"]
