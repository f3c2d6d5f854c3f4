"""The pipelines' one frame resize: plain bicubic when enlarging, antialiased when shrinking."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsrq.pipeline.resize import resize_images
from vsrq.pipeline.seedvr2 import resize_frames


def test_enlarging_is_the_plain_bicubic_and_shrinking_is_antialiased() -> None:
    x = torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    big = resize_images(x, (37, 61))
    assert torch.equal(big, F.interpolate(x, size=(37, 61), mode="bicubic", align_corners=False))
    small = resize_images(x, (9, 14))
    assert torch.equal(small, F.interpolate(x, size=(9, 14), mode="bicubic", align_corners=False, antialias=True))
    assert resize_images(x, (20, 30)) is x


def test_any_leading_dims_and_the_seedvr2_layout_agree() -> None:
    """(B, T, C, H, W), (T, C, H, W) and SeedVR2's (B, C, T, H, W) resize every frame the same way."""
    v = torch.rand(2, 5, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    per_frame = torch.stack([resize_images(v[b], (40, 50)) for b in range(2)])
    assert torch.equal(resize_images(v, (40, 50)), per_frame)
    assert torch.equal(resize_frames(v.transpose(1, 2), (40, 50)), per_frame.transpose(1, 2))
