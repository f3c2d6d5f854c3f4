"""The camera clips' exact flow: it carries frame t+1 back onto frame t, through every crop and flip
of training, and the warped temporal loss built on it scores only error that does not move along."""

import numpy as np
import pytest
import torch

from vsrq.train.data import CameraMotion, crop_pair, draw_crop_plan, render_camera_clip
from vsrq.train.flow import camera_flows, plan_flow, warp_next, warped_temporal_l1

MOTION = CameraMotion(0.6, (3.0, -2.0), (0.05, 0.02), 0.8, (0.1, 0.2), (0.3, 1.0), 0.01, 0.02, 0.005)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 60, 60, generator=g), size=(500, 500), mode="bicubic", align_corners=False)
    return render_camera_clip(img[0].clamp(0, 1) * 255, MOTION, (250.0, 250.0), 8, (48, 48))


def _residual(hr: torch.Tensor, flow: torch.Tensor) -> float:
    """Mean |frame t - warped frame t+1| in code values over valid pixels."""
    w, v = warp_next(hr[None], flow[None])
    return float(((hr[None][:, :, :-1] - w).abs() * v).sum() / v.sum() / 3 * 255)


def to_clip(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2).float() / 255


def test_flow_carries_the_next_frame_back_forward_and_backward(clip):
    fwd, bwd = camera_flows(MOTION, range(8), (48, 48))
    assert fwd.shape == bwd.shape == (7, 48, 48, 2)
    hr = to_clip(clip)
    still = _residual(hr, torch.zeros(2, 7, 48, 48))
    moved = _residual(hr, torch.from_numpy(fwd).permute(3, 0, 1, 2))
    back = _residual(hr.flip(1), torch.from_numpy(np.ascontiguousarray(bwd[::-1])).permute(3, 0, 1, 2))
    assert still > 20 and moved < 0.05 * still and back < 0.05 * still  # measured ~0.027: bilinear resampling
    # a window of the frame has the flow of the whole frame there
    fw, _ = camera_flows(MOTION, range(2, 5), (48, 48), window=(8, 4, 20, 24))
    np.testing.assert_allclose(fw, fwd[2:4, 8:28, 4:28], atol=1e-5)


def test_flow_follows_every_crop_flip_transpose_and_reversal(clip):
    lr = clip[:, ::4, ::4]
    seen = set()
    for seed in range(24):
        plan = draw_crop_plan(8, 12, 12, 8, 5, np.random.default_rng(seed))
        seen.add(plan.flips)
        _, hr = crop_pair(lr, clip, 4, 8, 5, None, plan=plan)
        flow = plan_flow(plan, 4, (48, 48), MOTION.to_dict())
        assert flow.shape == (2, 4, 32, 32)
        assert _residual(hr, flow) < 0.05 * _residual(hr, torch.zeros_like(flow))
        np.testing.assert_allclose(flow.numpy(), _numpy_plan_flow(plan), atol=1e-5)
    assert len(seen) >= 10  # the seeds exercised most flip combinations
    # no motion known: zero flow of the crop's size
    assert not plan_flow(plan, 4, (48, 48), None).any()


def _numpy_plan_flow(plan, scale=4, size=(48, 48)):
    """plan_flow written another way: the whole clip's flows, then crop / flips / reversal in (T, H, W, 2)."""
    fwd, bwd = camera_flows(MOTION, range(8), size)
    fwd, bwd = fwd[plan.t0:plan.t0 + plan.n - 1], bwd[plan.t0:plan.t0 + plan.n - 1]
    if plan.c is not None:
        ys, xs = slice(plan.y * scale, (plan.y + plan.c) * scale), slice(plan.x * scale, (plan.x + plan.c) * scale)
        fwd, bwd = fwd[:, ys, xs], bwd[:, ys, xs]
    if plan.flips[0]:
        fwd, bwd = [np.stack([-a[:, :, ::-1, 0], a[:, :, ::-1, 1]], -1) for a in (fwd, bwd)]
    if plan.flips[1]:
        fwd, bwd = [np.stack([a[:, ::-1, :, 0], -a[:, ::-1, :, 1]], -1) for a in (fwd, bwd)]
    if plan.flips[2] and fwd.shape[1] == fwd.shape[2]:
        fwd, bwd = [np.stack([a[..., 1].transpose(0, 2, 1), a[..., 0].transpose(0, 2, 1)], -1) for a in (fwd, bwd)]
    if plan.flips[3]:
        fwd = bwd[::-1]
    return np.ascontiguousarray(fwd.transpose(3, 0, 1, 2))


def test_flow_of_whole_non_square_frames_and_an_unknown_motion():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 60, 60, generator=g), size=(500, 500), mode="bicubic", align_corners=False)
    clip = render_camera_clip(img[0].clamp(0, 1) * 255, MOTION, (250.0, 250.0), 8, (48, 64))
    lr = clip[:, ::4, ::4]
    for seed in range(6):
        plan = draw_crop_plan(8, 12, 16, None, 6, np.random.default_rng(seed))
        assert plan.c is None
        _, hr = crop_pair(lr, clip, 4, None, 6, None, plan=plan)
        flow = plan_flow(plan, 4, (48, 64), MOTION)
        assert flow.shape == (2, 5, 48, 64)
        assert _residual(hr, flow) < 0.05 * _residual(hr, torch.zeros_like(flow))
    with pytest.raises(ValueError, match="does not fit"):
        plan_flow(draw_crop_plan(8, 12, 16, 12, 6, None), 4, (40, 64), MOTION)  # an HR clip smaller than 4x the LR


def test_warp_loss_needs_the_flow_and_can_leave_out_clips_of_unknown_motion():
    from vsrq.train.losses import LossWeights, vsr_loss

    x = torch.rand(1, 3, 3, 8, 8)
    with pytest.raises(ValueError, match="flow"):
        vsr_loss(x, x, LossWeights(warp=1.0))
    target = torch.rand(2, 3, 3, 8, 8)
    pred = target.clone()
    pred[1] += torch.rand(3, 3, 8, 8) * 0.2  # only the second clip flickers
    flow, known = torch.zeros(2, 2, 2, 8, 8), torch.tensor([1.0, 0.0])
    _, both = vsr_loss(pred, target, LossWeights(warp=1.0), flow=flow, flow_known=known)
    _, left_out = vsr_loss(pred, target, LossWeights(warp=1.0, warp_unknown=0.0), flow=flow, flow_known=known)
    assert both["warp"] > 0.02 and left_out["warp"] == 0


def test_plan_draws_are_the_ones_crop_pair_always_made(clip):
    lr = clip[:, ::4, ::4]
    a = crop_pair(lr, clip, 4, 8, 5, np.random.default_rng(7))
    plan = draw_crop_plan(8, 12, 12, 8, 5, np.random.default_rng(7))
    b = crop_pair(lr, clip, 4, 8, 5, None, plan=plan)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_crop_pair_gives_the_crops_it_gave_before_the_plan_existed():
    """Golden digest of crop_pair's outputs made with the code of 00ca68b (before CropPlan): training
    runs of earlier sessions draw the same crops, flips and frames today."""
    import hashlib

    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (12, 16, 20, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (12, 64, 80, 3), dtype=np.uint8)
    lr2 = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    hr2 = rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    h = hashlib.sha256()
    for seed in range(40):
        for low, high in ((lr, hr), (lr2, hr2)):
            for crop, frames in ((8, 6), (None, 5), (16, 12), (12, None)):
                for x in crop_pair(low, high, 4, crop, frames, np.random.default_rng(seed)):
                    h.update(x.numpy().tobytes())
    assert h.hexdigest() == "49b6ebe10a8f240aa8792d87b2b4a28e288626d76a3c0234135475081287777b"


def test_warped_temporal_loss_ignores_error_that_moves_with_the_picture():
    x = torch.rand(1, 3, 4, 16, 16)
    flow = torch.zeros(1, 2, 3, 16, 16)
    flow[:, 0] = -1.0  # content moves 1 px left per frame: frame t+1 at x-1 is frame t at x
    target = torch.stack([torch.roll(x[:, :, 0], -k, dims=-1) for k in range(4)], dim=2)
    err = torch.rand(1, 3, 1, 16, 16) * 0.1
    moving = target + torch.cat([torch.roll(err, -k, dims=-1) for k in range(4)], dim=2)
    flicker = target + torch.rand(1, 3, 4, 16, 16) * 0.1
    assert warped_temporal_l1(moving, target, flow) < 1e-6
    assert warped_temporal_l1(flicker, target, flow) > 0.02
    # with zero flow it is the plain temporal term
    from vsrq.train.losses import temporal_l1

    zero = torch.zeros_like(flow)
    assert torch.allclose(warped_temporal_l1(flicker, target, zero), temporal_l1(flicker, target))


def test_training_items_carry_the_flow_of_their_own_crop(clip):
    """CropDataset draws one plan per item for frames and flow: the HR crop warps onto itself."""
    from vsrq.train.trainer import CropDataset

    class RenderedStore:
        def __len__(self):
            return 1

        def pair(self, i):
            return clip[:, ::4, ::4], clip

        def motion(self, i):
            return MOTION.to_dict(), (48, 48)

    ds = CropDataset(RenderedStore(), 8, 5, 4, flow=True)
    for seed in range(8):
        _, hr, flow, known = ds[(0, seed)]
        assert known == 1 and flow.shape == (2, 4, 32, 32)
        assert _residual(hr, flow) < 0.05 * _residual(hr, torch.zeros_like(flow))
