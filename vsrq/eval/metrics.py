"""Fidelity and temporal-consistency metrics for x4 video SR, as reported in the comparison table.

Input convention (one for every function here): a clip is either
  * numpy uint8 of shape (T, H, W, 3), RGB, or
  * a torch float tensor of shape (T, 3, H, W) with values in [0, 1] (the model's output layout
    without the batch dimension), which is first quantised like a saved video:
    round(clamp(x, 0, 1) * 255) to uint8.
A single frame (H, W, 3) / (3, H, W) is treated as a one-frame clip. Metrics are computed in
float64 on the 0..255 scale from those uint8 values, so a model's score does not depend on
sub-quantisation differences that no viewer would ever see.

PSNR/SSIM follow the SR literature: luma Y of ITU-R BT.601 in studio range,
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (not rounded), peak 255, optional removal of
`crop_border` pixels on every side (typically the scale, 4). SSIM is Wang et al. (2004) with an
11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, mean over 'valid' positions.
Clip scores are the mean of the per-frame scores (as in video SR papers), not a pooled MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClipScore",
    "to_uint8_clip",
    "rgb_to_y",
    "psnr_y",
    "ssim_y",
    "warping_error",
    "OpenCVUnavailable",
]


class OpenCVUnavailable(RuntimeError):
    """Raised by warping_error when OpenCV (opencv-python-headless) is not installed."""


@dataclass(frozen=True)
class ClipScore:
    """Per-frame values (or per frame pair, for warping error) and their mean."""

    per_frame: np.ndarray
    mean: float

    def __float__(self) -> float:
        return self.mean

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> "ClipScore":
        v = np.asarray(values, dtype=np.float64)
        return cls(v, float(v.mean()) if v.size else float("nan"))


def to_uint8_clip(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Normalise an input to uint8 (T, H, W, 3) following the module's convention."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.uint8:
            raise TypeError("torch inputs must be float in [0, 1] with shape (T, 3, H, W); pass uint8 as numpy (T, H, W, 3)")
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"expected a torch tensor (T, 3, H, W), got {tuple(t.shape)}")
        return t.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    a = np.asarray(x)
    if a.dtype != np.uint8:
        raise TypeError(f"numpy inputs must be uint8 (T, H, W, 3), got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected a numpy array (T, H, W, 3), got {a.shape}")
    return a


def rgb_to_y(clip: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma of a uint8 (T, H, W, 3) clip as float64 (T, H, W), range 16..235."""
    c = clip.astype(np.float64)
    return 16.0 + (65.481 * c[..., 0] + 128.553 * c[..., 1] + 24.966 * c[..., 2]) / 255.0


def _pair_y(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    ua, ub = to_uint8_clip(a), to_uint8_clip(b)
    if ua.shape != ub.shape:
        raise ValueError(f"clips differ in shape: {ua.shape} vs {ub.shape}")
    ya, yb = rgb_to_y(ua), rgb_to_y(ub)
    if crop_border:
        if 2 * crop_border >= min(ya.shape[1:]):
            raise ValueError(f"crop_border {crop_border} leaves nothing of {ya.shape[1:]}")
        ya = ya[:, crop_border:-crop_border, crop_border:-crop_border]
        yb = yb[:, crop_border:-crop_border, crop_border:-crop_border]
    return ya, yb


def psnr_y(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, crop_border: int = 0) -> ClipScore:
    """PSNR (dB) on BT.601 Y, peak 255, per frame; identical frames score +inf."""
    ya, yb = _pair_y(a, b, crop_border)
    mse = ((ya - yb) ** 2).reshape(len(ya), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        vals = np.where(mse == 0, np.inf, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)))
    return ClipScore.of(vals)


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_y(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, crop_border: int = 0) -> ClipScore:
    """SSIM on BT.601 Y (Wang et al. 2004: 11x11 Gaussian sigma 1.5, valid region), per frame; identical = 1."""
    ya, yb = _pair_y(a, b, crop_border)
    if min(ya.shape[1:]) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 after cropping, got {ya.shape[1:]}")
    x = torch.from_numpy(ya)[:, None]
    y = torch.from_numpy(yb)[:, None]
    g = _gauss_window()

    def filt(z: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        return F.conv2d(z, g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return ClipScore.of(m.reshape(len(m), -1).mean(dim=1).numpy())


def _cv2():
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - exercised only where OpenCV is absent
        raise OpenCVUnavailable(
            "warping_error needs OpenCV's DIS optical flow: pip install opencv-python-headless "
            "(no fallback flow is used, so the metric is never silently different)"
        ) from e
    return cv2


def _gray(frame: np.ndarray) -> np.ndarray:
    y = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def _dis_flow(cv2, dis, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Flow f with src(x) ~ dst(x + f(x)), float32 (H, W, 2) in pixels (x, y)."""
    return dis.calc(_gray(src), _gray(dst), None)


def _sample(cv2, img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """img(x + flow(x)) with bilinear interpolation (values outside are replicated, masked by the caller)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warping_error(
    frames: np.ndarray | torch.Tensor,
    flow_frames: np.ndarray | torch.Tensor | None = None,
    *,
    occlusion_check: bool = True,
    preset: str = "medium",
) -> ClipScore:
    """Temporal warping error of `frames`: mean |O_t - warp(O_{t+1})| over valid pixels, per pair.

    Exactly: for each t, DIS optical flow F_t (OpenCV, `preset`) is computed from frame t to frame
    t+1 of `flow_frames` (pass the ground truth; default: `frames` itself), on BT.601 luma as uint8.
    O_{t+1} is warped back to t by bilinear sampling O_{t+1}(x + F_t(x)). The error is the mean
    absolute difference over RGB on the 0..255 scale, over pixels whose target x + F_t(x) is inside
    the frame and, if `occlusion_check`, that pass the forward-backward check
    |F_t(x) + B_t(x + F_t(x))|^2 <= 0.01 (|F_t|^2 + |B_t|^2) + 0.5 with B_t the flow t+1 -> t
    (Sundaram et al. 2010). Lower is steadier; compare a method with the ground truth's own value,
    which is the floor set by flow errors and real changes (lighting, motion blur).
    """
    cv2 = _cv2()
    o = to_uint8_clip(frames)
    r = o if flow_frames is None else to_uint8_clip(flow_frames)
    if r.shape != o.shape:
        raise ValueError(f"flow_frames {r.shape} and frames {o.shape} differ in shape")
    if len(o) < 2:
        raise ValueError("warping error needs at least two frames")
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    dis = cv2.DISOpticalFlow_create(presets[preset])
    h, w = o.shape[1:3]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    vals = []
    for t in range(len(o) - 1):
        fwd = _dis_flow(cv2, dis, r[t], r[t + 1])
        tx, ty = gx + fwd[..., 0], gy + fwd[..., 1]
        valid = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        if occlusion_check:
            bwd = _dis_flow(cv2, dis, r[t + 1], r[t])
            bw = _sample(cv2, bwd, fwd)
            lhs = ((fwd + bw) ** 2).sum(-1)
            rhs = 0.01 * ((fwd**2).sum(-1) + (bw**2).sum(-1)) + 0.5
            valid &= lhs <= rhs
        warped = _sample(cv2, o[t + 1].astype(np.float32), fwd)
        err = np.abs(o[t].astype(np.float32) - warped).mean(-1)
        vals.append(float(err[valid].mean()) if valid.any() else float("nan"))
    return ClipScore.of(vals)
