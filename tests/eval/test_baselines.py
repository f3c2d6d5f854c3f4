"""Bicubic and Lanczos-3 baselines: shapes, conventions and basic resampling properties."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.eval.baselines import bicubic_upscale, lanczos_matrix, lanczos_upscale
from vsrq.eval.metrics import psnr_y


def test_shapes_and_types_follow_the_input() -> None:
    lr = np.random.default_rng(0).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    for fn in (bicubic_upscale, lanczos_upscale):
        out = fn(lr)
        assert out.dtype == np.uint8 and out.shape == (3, 40, 48, 3)
        t = fn(torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 255)
        assert t.shape == (3, 3, 40, 48) and 0 <= t.min() and t.max() <= 1
        b = fn(torch.rand(2, 3, 4, 8, 8))  # batched (B, 3, T, H, W)-like layouts keep leading dims
        assert b.shape[-2:] == (32, 32)


def test_bicubic_is_torch_bicubic() -> None:
    x = torch.rand(2, 3, 9, 7)
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False, antialias=False).clamp(0, 1)
    assert torch.allclose(bicubic_upscale(x), ref)


def test_lanczos_kernel_properties() -> None:
    m = lanczos_matrix(12, 48)
    assert torch.allclose(m.sum(1), torch.ones(48, dtype=m.dtype))
    assert torch.allclose(lanczos_matrix(9, 9), torch.eye(9, dtype=torch.float64), atol=1e-12)
    flat = np.full((1, 6, 6, 3), 77, np.uint8)
    assert (lanczos_upscale(flat) == 77).all()
    # Pixel-centre alignment: the LR pixel i sits at HR 4i + 1.5, exactly as for bicubic.
    imp = torch.zeros(1, 1, 1, 12, dtype=torch.float64)
    imp[..., 6] = 1
    up = lanczos_upscale(imp.expand(1, 3, 1, 12).contiguous())[0, 0, 0]
    assert int(up.argmax()) in (25, 26) and torch.isclose(up[25], up[26])


def test_lanczos_beats_bicubic_a_little_on_a_smooth_signal() -> None:
    # A band-limited image: Lanczos-3 is the sharper interpolator and should not lose to bicubic.
    yy, xx = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    hr = (127.5 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.float64)
    hr = np.repeat(hr[None, :, :, None], 3, axis=3)
    hr_u8 = np.round(hr).astype(np.uint8)
    lr = torch.from_numpy(hr).permute(0, 3, 1, 2)
    lr = F.interpolate(lr, scale_factor=0.25, mode="area").round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    p_bic = psnr_y(bicubic_upscale(lr), hr_u8, crop_border=8).mean
    p_lan = psnr_y(lanczos_upscale(lr), hr_u8, crop_border=8).mean
    assert p_lan > p_bic - 0.2 and p_bic > 20
