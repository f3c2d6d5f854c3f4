"""Interpreter cases for SeedVR2's DiT kernels: the per-head RMSNorm + RoPE pass
(vsrq/kernels/head_norm_rope_triton.py) against the model's own ops, on the strided q view of a qkv tensor.

Collected into ``_interp_cases.CASES`` and run there under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from typing import Callable

CASES: dict[str, Callable[[], str]] = {}  # filled at the end of the file


def _head_norm_rope() -> str:
    """Ragged row counts, batch 2, partial and full rotation, bf16 and fp16: at most one rounding step
    apart from rms_norm then apply_rope, on a small share of the values; norm_rope takes the kernel."""
    import torch

    from vsrq.kernels.head_norm_rope import head_norm_rope, head_norm_rope_supported
    from vsrq.models.seedvr2.dit import RMSNorm, apply_rope, norm_rope, rms_norm

    torch.manual_seed(0)
    worst = 0.0
    for b, n, h, d, f, dt in ((2, 37, 3, 32, 6, torch.bfloat16), (1, 21, 2, 16, 8, torch.float16)):
        qkv = (torch.randn(b, n, 3 * h * d) * 2).to(dt).unflatten(-1, (3, h, d))
        q = qkv.unbind(-3)[0]  # strided, as the model's
        w = (torch.rand(d) + 0.5).to(dt)
        ang = torch.randn(n, f)
        cos, sin = ang.cos(), ang.sin()
        assert head_norm_rope_supported(q, w, cos)
        got = head_norm_rope(q, w, 1e-6, cos, sin)
        want = apply_rope(rms_norm(q, 1e-6, w), cos, sin)
        assert got.dtype == dt and got.shape == q.shape and got.is_contiguous()
        diff = (got.float() - want.float()).abs()
        step = want.float().abs().clamp_min(1e-3) * (2.0 ** -7 if dt == torch.bfloat16 else 2.0 ** -10)
        assert bool((diff <= step * 1.01).all()), float((diff / step).max())
        share = float((diff > 0).float().mean())
        assert share < 0.05, share
        worst = max(worst, share)
        norm = RMSNorm(d, 1e-6).to(dt)
        with torch.no_grad():
            norm.weight.copy_(w)
        assert torch.equal(norm_rope(q, norm, cos, sin), got)
    assert not head_norm_rope_supported(torch.randn(1, 4, 2, 16).to(torch.bfloat16)[..., :12],
                                        torch.ones(12, dtype=torch.bfloat16), torch.ones(4, 3))
    return f"within one rounding step, {100 * worst:.2f} % of values differ"


CASES.update({"dit_head_norm_rope": _head_norm_rope})


def _window_gather() -> str:
    """The gather kernel equals the torch assembly exactly: batch 2, regular and shifted (padded) windows,
    text per video, text shared (batch 1), no text, a strided v view of a qkv tensor."""
    import torch

    from vsrq.kernels.window_gather import window_gather
    from vsrq.models.seedvr2.dit import WIN_REGULAR, WIN_SHIFTED, make_windows, window_tokens, window_tokens_torch

    torch.manual_seed(0)
    n_cases = 0
    for grid in ((2, 9, 14), (5, 21, 23)):
        for method in (WIN_REGULAR, WIN_SHIFTED):
            axes = make_windows(grid, (4, 3, 3), method)
            spec = tuple((a.count, a.size, a.front) for a in axes)
            n = grid[0] * grid[1] * grid[2]
            v = torch.randn(2, n, 3 * 2 * 16).bfloat16().unflatten(-1, (3, 2, 16)).unbind(-3)[2]
            for txt in (torch.randn(2, 5, 2, 16).bfloat16(), torch.randn(1, 5, 2, 16).bfloat16(), None):
                want = window_tokens_torch(v, txt, grid, axes)
                got = window_gather(v, txt, grid, spec)
                assert torch.equal(got, want), (grid, method, None if txt is None else txt.shape)
                assert torch.equal(window_tokens(v, txt, grid, axes), want)
                n_cases += 1
    return f"{n_cases} cases equal"


CASES.update({"dit_window_gather": _window_gather})
