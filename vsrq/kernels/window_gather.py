"""Window-ordered q/k/v with the text appended per window, gathered in one Triton pass (SeedVR2 attention).

Why: eagerly, `vsrq.models.seedvr2.dit.window_tokens` (the reference) builds its (B*nwin, heads, S + L, d)
buffer with torch's strided copies (plus a zero-padded copy of the grid for shifted windows), ~0.6 TB/s on an
H100: three calls a block, ~1.1-1.5 ms each at 1080p (docs/PERF.md, eleventh session). Here each output row
(one head of one token slot of one window) reads its source row of d contiguous values (or writes zeros where
the window lies outside the grid), so the copy runs at the memory's pace. Bit-identical to the reference (a copy).
torch.compile fuses the reference's ops itself, so the model uses this eagerly only.
"""

from __future__ import annotations

import torch

from vsrq.kernels._triton import can_run_triton

__all__ = ["window_gather", "window_gather_supported"]


def window_gather_supported(x: torch.Tensor, txt: torch.Tensor | None) -> bool:
    """x (B, N, heads, d) and txt (B or 1, L, heads, d) with unit channel stride, d a power of two >= 16, one
    dtype; and Triton can run on x."""
    if x.dim() != 4 or not can_run_triton(x) or x.stride(3) != 1:
        return False
    d = x.shape[3]
    if d < 16 or d & (d - 1):
        return False
    return txt is None or (txt.dim() == 4 and txt.stride(3) == 1 and txt.dtype == x.dtype and txt.device == x.device
                           and txt.shape[2:] == x.shape[2:] and txt.shape[0] in (1, x.shape[0]))


def window_gather(x: torch.Tensor, txt: torch.Tensor | None, grid: tuple[int, int, int],
                  windows: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """The reference's result for operands `window_gather_supported` accepts (ValueError otherwise).
    ``windows`` = (count, size, front) for the t, h and w axes (`AxisWindows`' fields)."""
    if not window_gather_supported(x, txt):
        raise ValueError("window_gather: operands the kernel does not take (see window_gather_supported)")
    from vsrq.kernels.window_gather_triton import launch

    b, _, heads, d = x.shape
    nwin = windows[0][0] * windows[1][0] * windows[2][0]
    s = windows[0][1] * windows[1][1] * windows[2][1]
    n_txt = 0 if txt is None else txt.shape[1]
    out = torch.empty(b * nwin, heads, s + n_txt, d, dtype=x.dtype, device=x.device)
    if out.numel():
        launch(x, txt, out, grid, windows)
    return out
