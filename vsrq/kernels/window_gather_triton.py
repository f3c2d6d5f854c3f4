"""The Triton kernel behind `vsrq.kernels.window_gather` (reference: SeedVR2's `window_tokens`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 32  # output rows (of d values) per program (untuned)


@triton.jit
def _window_gather_kernel(x_ptr, t_ptr, out_ptr, n_rows, heads, S, L,
                          sxb, sxn, sxh, stb, stl, sth, T, H, W,
                          CT, CH, CW, ST, SH, SW, FT, FH, FW,
                          D: tl.constexpr, ROWS: tl.constexpr, HAS_TXT: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    slot = rows % (S + L)  # token slot in the window: S video tokens, then L text tokens
    rest = rows // (S + L)
    head = rest % heads
    bw = rest // heads
    nwin = CT * CH * CW
    b = bw // nwin
    w = bw % nwin
    # padded-grid coordinates of the slot, then back to the real grid
    pt = (w // (CH * CW)) * ST + slot // (SH * SW) - FT
    ph = ((w // CW) % CH) * SH + (slot // SW) % SH - FH
    pw = (w % CW) * SW + slot % SW - FW
    is_vid = slot < S
    inside = is_vid & (pt >= 0) & (pt < T) & (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
    n = (pt * H + ph) * W + pw
    cols = tl.arange(0, D)
    src = x_ptr + b * sxb + n * sxn + head * sxh
    val = tl.load(src[:, None] + cols[None, :], mask=(rmask & inside)[:, None], other=0.0)
    if HAS_TXT:
        tsrc = t_ptr + b * stb + (slot - S) * stl + head * sth
        tval = tl.load(tsrc[:, None] + cols[None, :], mask=(rmask & (slot >= S))[:, None], other=0.0)
        val = tl.where(is_vid[:, None], val, tval)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], val, mask=rmask[:, None])


def launch(x: torch.Tensor, txt: torch.Tensor | None, out: torch.Tensor, grid: tuple[int, int, int],
           windows: tuple[tuple[int, int, int], ...]) -> None:
    heads, d = x.shape[2], x.shape[3]
    (ct, st, ft), (ch, sh, fh), (cw, sw, fw) = windows
    s = st * sh * sw
    n_txt = 0 if txt is None else txt.shape[1]
    n_rows = out.shape[0] * heads * (s + n_txt)
    t = x if txt is None else txt
    stb = 0 if txt is None or txt.shape[0] == 1 else txt.stride(0)
    _window_gather_kernel[(triton.cdiv(n_rows, ROWS),)](
        x, t, out, n_rows, heads, s, n_txt,
        x.stride(0), x.stride(1), x.stride(2), stb, t.stride(1), t.stride(2), *grid,
        ct, ch, cw, st, sh, sw, ft, fh, fw,
        D=d, ROWS=ROWS, HAS_TXT=txt is not None, num_warps=4)
