"""Spatial tiles with overlap, blended with feathered weights, for frames that don't fit at once.

Tile origins are placed on the model's window grid where possible, so a tile's attention windows
line up with those of the untiled frame; the overlap is then blended with weights that fall
linearly to the tile's border, which hides what differs at tile edges.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Origins of tiles of size `tile` covering [0, length), consecutive tiles sharing >= `overlap`."""
    if tile >= length:
        return [0]
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    step = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def feather(length: int, ramp_before: int, ramp_after: int) -> torch.Tensor:
    """1-D weights: linear ramps over the shared borders, 1 inside; never exactly 0."""
    w = torch.ones(length)
    if ramp_before > 0:
        w[:ramp_before] = torch.arange(1, ramp_before + 1) / (ramp_before + 1)
    if ramp_after > 0:
        w[length - ramp_after:] = torch.minimum(w[length - ramp_after:], torch.arange(ramp_after, 0, -1) / (ramp_after + 1))
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    scale: int | Fraction,
    tile: int,
    overlap: int,
    align: int = 1,
    batch: int = 1,
) -> torch.Tensor:
    """Apply `fn` ((B, C, T, h, w) -> (B, C', T', h*scale, w*scale)) over tiles of x (1, C, T, H, W).

    `scale` may be a fraction (a VAE encoder is 1/8, its decoder 8); tile origins, sizes and
    overlaps are then multiples of `align`, which must make every scaled length whole. C' and T'
    are whatever `fn` returns. `tile <= 0` or a frame within one tile runs `fn` once. Tiles are
    batched `batch` at a time. The result is accumulated in float32 on x's device.
    """
    _, _, _, h, w = x.shape
    if tile <= 0 or (tile >= h and tile >= w):
        return fn(x)
    scale = Fraction(scale)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, align), tile_starts(w, tw, overlap, align)

    def px(n: int) -> int:
        v = n * scale
        if v.denominator != 1:
            raise ValueError(f"tile geometry {n} px does not scale by {scale} to whole pixels; use an align that makes it whole")
        return int(v)

    out: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    boxes = [(y, xx) for y in ys for xx in xs]

    def ramp(starts: list[int], i: int, size: int) -> tuple[int, int]:
        before = starts[i - 1] + size - starts[i] if i > 0 else 0
        after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return px(before), px(after)

    for i in range(0, len(boxes), batch):
        group = boxes[i:i + batch]
        crops = torch.cat([x[..., y:y + th, xx:xx + tw] for y, xx in group])
        results = fn(crops).float()
        if out is None:
            out = torch.zeros(1, *results.shape[1:3], px(h), px(w), dtype=torch.float32, device=x.device)
            weight = torch.zeros(1, 1, 1, px(h), px(w), dtype=torch.float32, device=x.device)
        for j, (y, xx) in enumerate(group):
            wy = feather(px(th), *ramp(ys, ys.index(y), th)).to(x.device)
            wx = feather(px(tw), *ramp(xs, xs.index(xx), tw)).to(x.device)
            wmap = (wy[:, None] * wx[None, :])[None, None, None]
            ys0, xs0 = px(y), px(xx)
            out[..., ys0:ys0 + px(th), xs0:xs0 + px(tw)] += results[j:j + 1] * wmap
            weight[..., ys0:ys0 + px(th), xs0:xs0 + px(tw)] += wmap
    assert out is not None and weight is not None
    return out / weight
