"""A/B of the DiT's fused quantized paths on the GPU: the same `vsrq bench` command with some of
QuantLinear's fusions turned off, alternated in one call (GPU only).

Why: a fusion's gain on the whole forward (a few percent) is within the spread between machines
and calls, so it is only visible against the unfused path timed on the same machine, interleaved.
Turning a fusion off = patching the QuantLinear method that offers it (`forward_normed`,
`forward_residual`) to decline, in a fresh process in front of the CLI; the model then composes
the plain path itself. Usage (H100):
    PYTHONPATH=. python3 scripts/ab_fusions.py --rounds 2 --off forward_residual [-- BENCH ARGS]
Everything after `--` goes to `vsrq bench` (defaults: the 8-block SeedVR2-3B-sized run of PERF.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_BENCH = [
    "--config", json.dumps({"dim": 2560, "depth": 8, "heads": 20, "mlp_ratio": 4.0, "patch": [1, 2, 2],
                            "window": [4, 8, 8], "scale": 2}),
    "--device", "cuda", "--size", "240x136", "--chunk", "4", "--precisions", "fp,w4a4", "--no-pipeline",
    "--no-layers", "--rank", "0", "--compile",
]

# Runs `vsrq bench` with the named QuantLinear methods declining (argv[1] = comma-separated names).
CHILD = """
import sys
from vsrq.quant.qlinear import QuantLinear
for name in filter(None, sys.argv[1].split(",")):
    setattr(QuantLinear, name, lambda self, *a, **k: None)
from vsrq.cli import main
sys.argv = ["vsrq", "bench", *sys.argv[2:]]
main()
"""


def run_variant(off: str, bench: list[str]) -> dict:
    cmd = [sys.executable, "-c", CHILD, off, *bench, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        raise RuntimeError(f"bench with {off or 'nothing'} off failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def forward_ms(report: dict) -> dict[str, float]:
    """Median DiT-forward ms per precision from `vsrq bench --json`."""
    return {name: v["ms"] for name, v in report["forward"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--off", action="append", default=[],
                    help="comma-separated QuantLinear methods to turn off in a variant (repeatable); "
                         "the all-fused variant always runs")
    a, rest = ap.parse_known_args()
    bench = rest[1:] if rest[:1] == ["--"] else rest
    bench = bench or DEFAULT_BENCH
    variants = [""] + a.off
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in variants:
            ms = forward_ms(run_variant(v, bench))
            rows[v].append(ms)
            ratio = ms["fp"] / ms["w4a4"] if "fp" in ms and "w4a4" in ms else float("nan")
            print(f"round {r + 1}  off={v or '-':<32} " + "  ".join(f"{k} {t:.2f} ms" for k, t in ms.items())
                  + f"  fp/w4a4 {ratio:.3f}x", flush=True)


if __name__ == "__main__":
    main()
