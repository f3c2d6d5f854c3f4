"""How SeedVR2's window attention should assemble its windowed q/k/v (+ text) on the GPU (H100 run).

Why: the compiled 3B DiT at 1080p spent 113-122 ms of 551-655 ms kernel time in 95 `torch.cat` calls
(aten's CatArrayBatchedCopy, ~1.2 ms each: docs/perf_logs/profile-seedvr2-dit-720p-1080p-2026-11-24-h100.log),
each joining a window-ordered copy of q/k/v with the text tokens repeated per window. This times ways
of building the same (B*nwin, heads, S + L, d) tensor at the real 720p/1080p shapes, eager and
compiled, and checks they are bit-identical to the model's own ``torch.cat``:

* ``cat``: as WindowAttention did (windowed copy, then cat with the expanded text view);
* ``cat-contig``: the expanded text made contiguous first (the cat's inputs all dense);
* ``buffer``: one empty buffer, the windowed view and the text copied into its two slices;
* ``model``: whatever `vsrq.models.seedvr2.dit.window_tokens` does now.

Usage: PYTHONPATH=. python3 scripts/bench_window_kv.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_run import RunLog, kernel_ms  # noqa: E402

from vsrq.models.seedvr2.dit import (  # noqa: E402
    WIN_REGULAR, WIN_SHIFTED, SeedVR2DiTConfig, make_windows, pad_grid, to_windows, window_tokens,
)


def per_win(x: torch.Tensor, nwin: int) -> torch.Tensor:
    b, L, h, d = x.shape
    return x.transpose(1, 2)[:, None].expand(b, nwin, h, L, d).reshape(b * nwin, h, L, d)


def variants(axes, grid):
    def win(x):
        b = x.shape[0]
        return to_windows(pad_grid(x.reshape(b, *grid, *x.shape[2:]), axes), axes)

    nwin = 1
    for a in axes:
        nwin *= a.count

    def cat(v, t):
        return torch.cat([win(v), per_win(t, nwin)], dim=2)

    def cat_contig(v, t):
        return torch.cat([win(v), per_win(t, nwin).contiguous()], dim=2)

    def buffer(v, t):
        w = win(v)
        out = w.new_empty(w.shape[0], w.shape[1], w.shape[2] + t.shape[1], w.shape[3])
        out[:, :, : w.shape[2]] = w
        out[:, :, w.shape[2]:] = per_win(t, nwin)
        return out

    def model(v, t):
        return window_tokens(v, t, grid, axes)

    return {"cat": cat, "cat-contig": cat_contig, "buffer": buffer, "model": model}


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/window-kv"))
    args = ap.parse_args()
    log = RunLog("window-kv")
    log.header()
    cfg = SeedVR2DiTConfig.preset("3b")
    dev = torch.device("cuda")
    L = 58
    for label, grid in (("720p", (6, 45, 80)), ("1080p", (6, 68, 120))):
        for method in (WIN_REGULAR, WIN_SHIFTED):
            axes = make_windows(grid, cfg.window, method)
            n = grid[0] * grid[1] * grid[2]
            v = torch.randn(1, n, cfg.heads, cfg.head_dim, device=dev, dtype=torch.bfloat16)
            t = torch.randn(1, L, cfg.heads, cfg.head_dim, device=dev, dtype=torch.bfloat16)
            fns = variants(axes, grid)
            ref = fns["cat"](v, t)
            mb = ref.numel() * ref.element_size() / 2**20
            for mode in ("eager", "compiled"):
                for name, fn in fns.items():
                    f = torch.compile(fn, dynamic=False) if mode == "compiled" else fn
                    out = f(v, t)
                    same = torch.equal(out, ref)
                    ms = kernel_ms(lambda: f(v, t))
                    log(f"{label} {method:<8} {mode:<8} {name:<10} {ms:7.3f} ms  ({mb:.0f} MiB out, "
                        f"{2 * mb * 2**20 / 1e9 / ms:.2f} TB/s counting the output's bytes twice)  equal={same}")
                    log.rows.append(dict(size=label, method=method, mode=mode, variant=name, ms=ms, equal=same))
    log.write(args.out)


if __name__ == "__main__":
    main()
