#!/usr/bin/env python
"""Where a first GPU upscale's pause goes, per tuner candidate set (GPU only).

    PYTHONPATH=. python3 scripts/first_run_tuning.py VIDEO [--variant NAME ...]

Why: the first `vsrq upscale` on a GPU waited ~53 s before its first frame (docs/PERF.md, GPU run 12):
every new kernel shape compiles and times its launch candidates. This runs the same upscale with
empty vsrq and Triton caches, once per variant of the GEMM tuner's candidate set (patched in a fresh
process in front of the CLI), with the tuner's debug lines on, and prints the wall time, the
seconds each tuned key took and what it chose. Variants:
    full        the shipped set
    no-ptr      the pointer kernel left out on Hopper (TMA kernels only)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = """
import logging, sys
variant = sys.argv[1]
from vsrq.kernels import qgemm as qg
if variant == "no-ptr":
    qg.SM90_AUTO_IMPLS = ("tma", "persistent")
elif variant != "full":
    raise SystemExit(f"unknown variant {variant}")
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("TUNE %(message)s"))
tl = logging.getLogger("vsrq.kernels")
tl.addHandler(handler)
tl.setLevel(logging.DEBUG)
from vsrq.cli import main
sys.argv = ["vsrq", "upscale", *sys.argv[2:]]
main()
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--variant", action="append", default=None)
    a = ap.parse_args()
    for variant in a.variant or ["full", "no-ptr"]:
        tmp = tempfile.mkdtemp(prefix="vsrq-firstrun-")
        env = dict(os.environ, VSRQ_CACHE=os.path.join(tmp, "vsrq"), TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, variant, a.video, os.path.join(tmp, "out.mp4"),
                              "--device", "cuda"], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        tuned = [line for line in out.stdout.splitlines() if line.startswith("TUNE tuned")]
        secs = [float(m.group(1)) for line in tuned if (m := re.search(r" in ([0-9.]+) s:", line))]
        print(f"== {variant}: exit {out.returncode}, {wall:.1f} s wall, {len(tuned)} keys tuned in {sum(secs):.1f} s")
        for line in tuned:
            print("  " + line[5:][:260])
        if out.returncode:
            print(out.stderr[-2000:])
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
