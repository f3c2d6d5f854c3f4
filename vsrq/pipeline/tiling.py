"""Spatial tiles with overlap, blended with feathered weights, for frames that don't fit at once.

Tile origins are placed on the model's window grid where possible, so a tile's attention windows
line up with those of the untiled frame; the overlap is then blended with weights that fall
linearly to the tile's border, which hides what differs at tile edges.
"""

from __future__ import annotations

from collections.abc import Callable

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
    scale: int,
    tile: int,
    overlap: int,
    align: int = 1,
    batch: int = 1,
) -> torch.Tensor:
    """Apply an upscaler `fn` ((B, C, T, h, w) -> (B, C, T, sh, sw)) over tiles of x (1, C, T, H, W).

    `tile <= 0` or a frame within one tile runs `fn` once. Tiles are batched `batch` at a time.
    The result is accumulated in float32 on x's device.
    """
    _, c, t, h, w = x.shape
    if tile <= 0 or (tile >= h and tile >= w):
        return fn(x)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, align), tile_starts(w, tw, overlap, align)
    out = torch.zeros(1, c, t, h * scale, w * scale, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, 1, h * scale, w * scale, dtype=torch.float32, device=x.device)
    boxes = [(y, xx) for y in ys for xx in xs]

    def ramp(starts: list[int], i: int, size: int) -> tuple[int, int]:
        before = starts[i - 1] + size - starts[i] if i > 0 else 0
        after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return before * scale, after * scale

    for i in range(0, len(boxes), batch):
        group = boxes[i:i + batch]
        crops = torch.cat([x[..., y:y + th, xx:xx + tw] for y, xx in group])
        results = fn(crops).float()
        for j, (y, xx) in enumerate(group):
            wy = feather(th * scale, *ramp(ys, ys.index(y), th)).to(x.device)
            wx = feather(tw * scale, *ramp(xs, xs.index(xx), tw)).to(x.device)
            wmap = (wy[:, None] * wx[None, :])[None, None, None]
            ys0, xs0 = y * scale, xx * scale
            out[..., ys0:ys0 + th * scale, xs0:xs0 + tw * scale] += results[j:j + 1] * wmap
            weight[..., ys0:ys0 + th * scale, xs0:xs0 + tw * scale] += wmap
    return out / weight
