"""What the GPU benchmark scripts share: a log that prints and keeps its lines, rows for a JSON file,
and do_bench medians. Imported by the scripts beside it (run as `python3 scripts/NAME.py`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from triton.testing import do_bench


def kernel_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of a kernel call (triton's do_bench: L2 cleared, many repeats), as
    bench_kernels.py times; whole forwards use vsrq.bench.median_ms (a few CUDA-event repeats)."""
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


class RunLog:
    """Lines printed as they come and written to OUT/NAME.log at the end, with rows to OUT/NAME.json."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.rows: list[dict] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def header(self, extra: str = "") -> None:
        """The device and versions first, so a log says where it was measured."""
        self(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}" + (f"; {extra}" if extra else ""))

    def write(self, out: str) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{self.name}.log").write_text("\n".join(self.lines) + "\n")
        (Path(out) / f"{self.name}.json").write_text(json.dumps(self.rows, indent=1))


def kind_of(name: str, kinds: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """The first kind whose keys occur in a kernel's (lower-cased) name, else "other"."""
    low = name.lower()
    for kind, keys in kinds:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_kinds(fn, log: RunLog, what: str, kinds: tuple[tuple[str, tuple[str, ...]], ...], top: int = 12) -> dict[str, float]:
    """One call of ``fn`` (after one unprofiled call) under torch.profiler: CUDA kernel time summed by
    kind (``kinds``: (name, substrings of kernel names), first match wins), and the ``top`` kernels.
    Returns ms per kind."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    rows = []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if hasattr(ev, "self_device_time_total") else ev.self_cuda_time_total
        if us <= 0:
            continue
        by_kind[kind_of(ev.key, kinds)] += us
        rows.append((us, ev.count, ev.key))
    total = sum(by_kind.values())
    log(f"== {what}: kernel time {total / 1e3:.0f} ms; " + ", ".join(
        f"{k} {v / 1e3:.0f} ms ({100 * v / total:.0f} %)" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    for us, n, key in sorted(rows, reverse=True)[:top]:
        log(f"   {us / 1e3:8.1f} ms {n:6d}x  [{kind_of(key, kinds)}] {key[:110]}")
    return {k: v / 1e3 for k, v in by_kind.items()}
