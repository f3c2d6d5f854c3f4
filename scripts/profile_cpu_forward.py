#!/usr/bin/env python
"""CPU time of one DiT forward per model: torch.profiler self-CPU totals, three forwards each.

    PYTHONPATH=. python scripts/profile_cpu_forward.py vsrq-tiny-fp16 vsrq-tiny other.safetensors
        [--size 160x90] [--frames 8] [--threads 2]

Why a profiler total and not wall time: on the shared 2-core machine wall times of the same forward
spread by +-15 % between repeats; the operator totals spread less and show where the time goes
(`--table` prints the top operators of the last forward).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.bench import parse_size  # noqa: E402
from vsrq.models.loader import load_model  # noqa: E402
from vsrq.pipeline.allocator import keep_freed_memory  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", default="160x90", help="input WxH")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as the CLI does
    w, h = parse_size(a.size)
    x = torch.rand(1, 3, a.frames, h, w, generator=torch.Generator().manual_seed(0))
    for name in a.models:
        model = load_model(name).module.float().eval()
        totals = []
        with torch.inference_mode():
            model(x)  # warm-up
            for _ in range(3):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model(x)
                totals.append(sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000)
        print(f"{name}: self-CPU ms per forward {[round(t) for t in totals]}")
        if a.table:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
