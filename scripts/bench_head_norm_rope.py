"""The per-head RMSNorm + RoPE kernel against the model's torch ops at SeedVR2's 1080p shapes (H100 run).

Checks `vsrq.kernels.head_norm_rope` against its reference, rms_norm then apply_rope, on the strided q view of
a qkv tensor, and times both.
Usage: PYTHONPATH=. python3 scripts/bench_head_norm_rope.py
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from vsrq.kernels.head_norm_rope import head_norm_rope
from vsrq.models.seedvr2.dit import apply_rope, rms_norm


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}")
    g = torch.Generator(device="cuda").manual_seed(0)
    for n, h, d, f in ((48960, 20, 128, 60), (48960, 24, 128, 64), (58, 20, 128, 60)):
        qkv = (torch.randn(1, n, 3 * h * d, device="cuda", generator=g) * 2).bfloat16().unflatten(-1, (3, h, d))
        q = qkv.unbind(-3)[0]  # strided, as the model's
        w = (torch.rand(d, device="cuda", generator=g) + 0.5).bfloat16()
        ang = torch.randn(n, f, device="cuda", generator=g) * 3
        c, s = ang.cos(), ang.sin()
        got = head_norm_rope(q, w, 1e-6, c, s)
        diff = (got.float() - apply_rope(rms_norm(q, 1e-6, w), c, s).float()).abs()
        print(f"N={n} heads={h} F={f} vs rms_norm + apply_rope: {(diff > 0).float().mean().item() * 100:.4f} % "
              f"of values differ, max abs {diff.max().item():.4g}")
        t_kernel = do_bench(lambda: head_norm_rope(q, w, 1e-6, c, s))
        t_ops = do_bench(lambda: apply_rope(rms_norm(q, 1e-6, w), c, s))
        tb = 2 * q.numel() * q.element_size() / 1e9 / t_kernel
        print(f"  kernel {t_kernel:.3f} ms ({tb:.2f} TB/s read + write), torch ops {t_ops:.3f} ms ({t_ops / t_kernel:.1f}x)")


if __name__ == "__main__":
    main()
