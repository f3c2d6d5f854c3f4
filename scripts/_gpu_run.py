"""What the GPU benchmark scripts share: a log that prints and keeps its lines, rows for a JSON file,
and do_bench medians. Imported by the scripts beside it (run as `python3 scripts/NAME.py`)."""

from __future__ import annotations

import json
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
