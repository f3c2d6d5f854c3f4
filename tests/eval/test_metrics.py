"""PSNR/SSIM on Y against hand-computed cases, and the DIS warping error on constructed motion."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrq.eval.metrics import OpenCVUnavailable, psnr_y, rgb_to_y, ssim_y, to_uint8_clip, warping_error


def texture(t: int, h: int, w: int, seed: int = 0, shift: int = 0) -> np.ndarray:
    """Smooth random texture; frame i is shifted left by i*shift pixels (pure translation)."""
    rng = np.random.default_rng(seed)
    ww = w + shift * t + 16
    base = torch.from_numpy(rng.random((1, 3, (h + 16) // 4, ww // 4))).float()
    big = F.interpolate(base, size=(h + 16, ww), mode="bicubic", align_corners=False).clamp(0, 1)
    big = (big[0] * 255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.stack([big[8 : 8 + h, 8 + i * shift : 8 + i * shift + w] for i in range(t)]))


def test_psnr_identical_is_inf_and_ssim_is_one() -> None:
    a = texture(3, 32, 40)
    p = psnr_y(a, a)
    assert np.isinf(p.mean) and np.isinf(p.per_frame).all() and p.per_frame.shape == (3,)
    s = ssim_y(a, a)
    assert s.per_frame.shape == (3,) and np.allclose(s.per_frame, 1.0)


def test_psnr_known_value() -> None:
    # Grey frames differing by 10 code values in every channel differ by 10 * (65.481+128.553+24.966)/255
    # = 8.588 in Y, so PSNR = 20 log10(255 / 8.588...).
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    expected = 20 * np.log10(255 / dy)
    assert psnr_y(a, b).mean == pytest.approx(expected, abs=1e-9)
    # One frame identical, one off by dy: per-frame values and their mean.
    c = b.copy()
    c[0] = a[0]
    pf = psnr_y(a, c).per_frame
    assert np.isinf(pf[0]) and pf[1] == pytest.approx(expected)


def test_border_crop_ignores_the_edges() -> None:
    a = texture(1, 32, 32)
    b = a.copy()
    b[:, :4] = 0
    b[:, :, -4:] = 255
    assert np.isinf(psnr_y(a, b, crop_border=4).mean)
    assert psnr_y(a, b).mean < 30
    assert ssim_y(a, b, crop_border=4).mean == pytest.approx(1.0)


def test_luma_matches_bt601_studio_range() -> None:
    px = np.array([[[[0, 0, 0], [255, 255, 255], [255, 0, 0]]]], np.uint8)
    assert np.allclose(rgb_to_y(px)[0, 0], [16.0, 235.0, 16 + 65.481])


def test_ssim_decreases_with_noise() -> None:
    a = texture(2, 48, 48)
    rng = np.random.default_rng(1)
    scores = []
    for sigma in (2, 8, 25):
        n = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
        scores.append(ssim_y(a, n).mean)
        assert psnr_y(a, n).mean < 50
    assert 1 > scores[0] > scores[1] > scores[2] > 0


def test_torch_float_input_is_quantised_like_uint8() -> None:
    a = texture(2, 24, 24)
    t = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    assert np.array_equal(to_uint8_clip(t), a)
    assert np.isinf(psnr_y(t, a).mean) and ssim_y(a, t + 0.4 / 255).mean == pytest.approx(1.0)
    with pytest.raises(TypeError):
        psnr_y(a.astype(np.float32), a)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        psnr_y(a, a[:, :20])


def test_warping_error_is_small_for_translation_and_large_for_flicker() -> None:
    pytest.importorskip("cv2")
    clip = texture(5, 64, 96, shift=2)
    still = warping_error(clip)
    assert still.per_frame.shape == (4,) and still.mean < 0.5
    flicker = clip.astype(np.int16)
    flicker[1::2] += 25
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    assert warping_error(flicker, flow_frames=clip).mean > 15
    noisy = np.clip(clip + np.random.default_rng(0).normal(0, 6, clip.shape), 0, 255).astype(np.uint8)
    assert warping_error(noisy, flow_frames=clip).mean > 10 * still.mean


def test_warping_error_without_opencv_raises_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(OpenCVUnavailable, match="opencv-python-headless"):
        warping_error(texture(2, 16, 16))
