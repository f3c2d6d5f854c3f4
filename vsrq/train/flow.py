"""Exact optical flow of the synthetic camera clips, and the motion-compensated temporal loss it allows.

Why: the held-out measure of temporal stability is a warping error (output frame t against frame
t+1 warped back along the true motion). The plain temporal term (`losses.temporal_l1`) compares
frame differences *in place*, which on a moving clip asks the model's error to stand still while
the picture moves. The photo clips of the training set are rendered through a known camera
(`data.CameraMotion`), so their flow is known exactly and the loss can compare the error of frame
t with the error of frame t+1 carried along the motion. Clips without a known motion (cuts of real
video) get zero flow, where the warped term is the plain one.

Flow layout: numpy (T-1, H, W, 2) float32, (dx, dy) in HR pixels; forward flow F_t maps a pixel of
frame t to where it is seen in frame t+1; backward flow B_t maps a pixel of frame t+1 back to t.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.train.data import CameraMotion, CropPlan, camera_path, view_to_source


def camera_flows(motion: CameraMotion | dict, frames: range, hr_hw: tuple[int, int],
                 window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward flow between consecutive frames of `frames` of a camera clip.

    hr_hw: the rendered clip's size (the view centre is its middle, as in `render_camera_clip`);
    window: (y0, x0, h, w) HR pixels of it to compute (default: all). Exact for the rendering
    model (a rigid move, zoom and roll of a plane: no occlusion), up to its resampling.
    """
    m = motion if isinstance(motion, CameraMotion) else CameraMotion(**motion)
    path = camera_path(m, frames.stop)[frames.start:frames.stop]
    h, w = hr_hw
    y0, x0, wh, ww = window if window is not None else (0, 0, h, w)
    yy, xx = np.meshgrid(np.arange(y0, y0 + wh, dtype=np.float64) - (h - 1) / 2,
                         np.arange(x0, x0 + ww, dtype=np.float64) - (w - 1) / 2, indexing="ij")

    def to_source(k: int) -> tuple[np.ndarray, np.ndarray]:
        dx, dy, sc, ang = path[k]
        return view_to_source(dx, dy, sc, ang, xx, yy)

    def to_view(k: int, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inverse of view_to_source: rotate back by -angle, scale up."""
        dx, dy, sc, ang = path[k]
        c, s = math.cos(ang), math.sin(ang)
        qx, qy = sx - dx, sy - dy
        return (c * qx + s * qy) * sc, (-s * qx + c * qy) * sc

    fwd, bwd = [], []
    for k in range(len(path) - 1):
        px, py = to_view(k + 1, *to_source(k))
        fwd.append(np.stack([px - xx, py - yy], axis=-1))
        px, py = to_view(k, *to_source(k + 1))
        bwd.append(np.stack([px - xx, py - yy], axis=-1))
    shape = (0, wh, ww, 2)
    return (np.stack(fwd).astype(np.float32) if fwd else np.zeros(shape, np.float32),
            np.stack(bwd).astype(np.float32) if bwd else np.zeros(shape, np.float32))


def plan_flow(plan: CropPlan, scale: int, hr_hw: tuple[int, int], motion: CameraMotion | dict | None) -> torch.Tensor:
    """The forward flow (2, n-1, H, W) of the training crop `plan` made of a clip: the camera's
    exact flow, cropped, flipped and time-reversed as `crop_pair` did to the frames; zeros when the
    motion is unknown (`motion` None)."""
    h, w = hr_hw
    if plan.c is None:
        window = (0, 0, h, w)
    else:  # exactly the HR crop crop_pair takes
        window = (plan.y * scale, plan.x * scale, plan.c * scale, plan.c * scale)
        if window[0] + window[2] > h or window[1] + window[3] > w:
            raise ValueError(f"crop {plan} at x{scale} does not fit the {h}x{w} clip")
    if motion is None:
        return torch.zeros(2, max(0, plan.n - 1), window[2], window[3])
    fwd, bwd = (torch.from_numpy(f).permute(3, 0, 1, 2) for f in camera_flows(motion, range(plan.t0, plan.t0 + plan.n), hr_hw, window))
    fx, fy, tr, rev = plan.flips
    if fx:  # (2, T-1, H, W): flip W and negate dx
        fwd, bwd = (f.flip(3) * torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1) for f in (fwd, bwd))
    if fy:
        fwd, bwd = (f.flip(2) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1) for f in (fwd, bwd))
    if tr and fwd.shape[2] == fwd.shape[3]:  # swap the axes and the components
        fwd, bwd = (f.transpose(2, 3).flip(0) for f in (fwd, bwd))
    if rev:  # frame k of the reversed clip is frame n-1-k: its forward flow is a backward one
        fwd = bwd.flip(1)
    return fwd.contiguous()


def warp_next(frames: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 1..T-1 of `frames` (B, C, T, H, W) carried back to frames 0..T-2 along `flow`
    (B, 2, T-1, H, W): bilinear samples of frame t+1 at x + F_t(x). Returns (warped (B, C, T-1, H, W),
    valid (B, 1, T-1, H, W): where x + F_t(x) lies inside the frame)."""
    b, ch, t, h, w = frames.shape
    nxt = frames[:, :, 1:].transpose(1, 2).reshape(b * (t - 1), ch, h, w)
    fl = flow.transpose(1, 2).reshape(b * (t - 1), 2, h, w).to(frames.dtype)
    gy, gx = torch.meshgrid(torch.arange(h, device=frames.device, dtype=frames.dtype),
                            torch.arange(w, device=frames.device, dtype=frames.dtype), indexing="ij")
    tx, ty = gx + fl[:, 0], gy + fl[:, 1]
    valid = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    grid = torch.stack([tx / max(1, w - 1) * 2 - 1, ty / max(1, h - 1) * 2 - 1], dim=-1)
    warped = F.grid_sample(nxt, grid, mode="bilinear", padding_mode="border", align_corners=True)
    warped = warped.reshape(b, t - 1, ch, h, w).transpose(1, 2)
    valid = valid.reshape(b, t - 1, 1, h, w).transpose(1, 2)
    return warped, valid


def warped_temporal_l1(pred: torch.Tensor, target: torch.Tensor, flow: torch.Tensor,
                       clip_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |e_t - warp(e_{t+1})| over pixels whose motion stays in frame, e = pred - target: the
    output's error must move with the picture, not stand still (with zero flow: `temporal_l1`).
    `clip_weight` (B,) weighs each clip's pixels (0 leaves a clip out)."""
    if pred.shape[2] < 2:
        return pred.new_zeros(())
    err = pred.float() - target.float()
    warped, valid = warp_next(err, flow.float())
    valid = valid.float()
    if clip_weight is not None:
        valid = valid * clip_weight.float().view(-1, 1, 1, 1, 1)
    diff = (err[:, :, :-1] - warped).abs() * valid
    return diff.sum() / (valid.sum() * err.shape[1]).clamp_min(1)
