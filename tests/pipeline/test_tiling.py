from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from tests.support import random_model
from vsrq.pipeline.tiling import tile_starts, tiled_apply


@pytest.mark.parametrize("length, tile, overlap, align", [(100, 32, 8, 1), (100, 32, 8, 16), (33, 32, 4, 8), (16, 32, 8, 1), (64, 16, 0, 16)])
def test_tiles_cover_with_overlap(length, tile, overlap, align):
    starts = tile_starts(length, tile, overlap, align)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all() and starts[0] == 0 and starts == sorted(starts)
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


def nearest_x2(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    return F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2, mode="nearest").view(b, t, c, 2 * h, 2 * w).transpose(1, 2)


def test_tiling_is_exact_for_a_pointwise_upscaler():
    x = torch.rand(1, 3, 2, 37, 53)
    torch.testing.assert_close(tiled_apply(nearest_x2, x, scale=2, tile=16, overlap=4, batch=3), nearest_x2(x))


def test_tiled_model_output_matches_untiled():
    """A windowed DiT sees less context at tile borders; overlap and feathering keep the difference small."""
    model = random_model()
    x = torch.rand(1, 3, 2, 40, 56)
    with torch.no_grad():
        full = model(x)
        tiled = tiled_apply(model, x, scale=4, tile=24, overlap=8, align=8, batch=2)
    err = (tiled - full).abs()
    assert err.mean() < 0.02 * full.abs().mean()
    assert err.max() < 0.25


def test_tiling_handles_fractional_scale_and_new_channel_and_time_shapes():
    """A VAE-encoder-like fn: 8x8 average pooling (scale 1/8), 3 -> 4 channels, T -> (T-1)/4+1 frames."""
    def encode_like(v: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = v.shape
        pooled = F.avg_pool3d(v, kernel_size=(1, 8, 8))[:, :, ::4]
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)

    x = torch.rand(1, 3, 5, 48, 72)
    torch.testing.assert_close(tiled_apply(encode_like, x, scale=Fraction(1, 8), tile=24, overlap=8, align=8), encode_like(x))
    with pytest.raises(ValueError, match="whole pixels"):
        tiled_apply(encode_like, x, scale=Fraction(1, 8), tile=20, overlap=4, align=2)
