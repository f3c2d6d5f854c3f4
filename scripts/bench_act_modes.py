#!/usr/bin/env python
"""Activation quantization by mode and kernel, and the W4A4 layer without a low-rank branch (H100).

    PYTHONPATH=. python3 scripts/bench_act_modes.py [--out DIR]

Why: `bench_kernels.py` times the act-quant kernels with smoothing and a r=32 low-rank
down-projection (the SVDQuant layer, two-pass kernel only). The shipped recipe `rtn-a32` (and
plain RTN) has no low-rank branch; this script times each mode with `act_quant`'s default
dispatch (the whole-row tile kernel where it applies) and with the two-pass kernel forced (q
checked equal), and the whole W4A4 layer (act-quant + int8 GEMM + bias) on each against cuBLAS
bf16, in one run. (Until 2026-11-24 it compared a single-pass kernel, since removed; its logs
are in docs/perf_logs/act-modes-*.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.kernels import qgemm as qg  # noqa: E402
from vsrq.kernels.act_quant import act_quant  # noqa: E402
from vsrq.quant.pack import quantize_weight  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_run import RunLog, kernel_ms  # noqa: E402


def ms(fn) -> float:
    return kernel_ms(fn, 25, 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    torch.manual_seed(0)
    log = RunLog("act_modes")
    rows = log.rows

    log.header()
    m = 16384
    for k, n in ((3072, 3072), (3072, 12288), (2560, 2560)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) * 0.01
        sm = torch.rand(k, device="cuda") + 0.5
        ld = (torch.randn(k, 32, device="cuda") * 0.03).to(torch.bfloat16)
        w4, s4, _ = quantize_weight(w.float(), 4, None, True, torch.float16)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        t_bf16 = ms(lambda: F.linear(x, w, bias))
        shape = f"M={m} K={k} N={n}"
        log(f"{shape}: cuBLAS bf16 {t_bf16:.4f} ms; act-quant floor at 3 TB/s {m * k * 3 / 3e12 * 1e3:.4f} ms")
        modes = {"plain": {}, "smooth": {"smooth": sm}, "smooth+r32": {"smooth": sm, "lora_down": ld}}
        if n == k:  # the layer rows below
            modes["group32"] = {"group_size": 32}
        for name, kw in modes.items():
            ref = act_quant(x, 4, two_pass=True, **kw)  # the default rows are checked against it
            for two in (True, False):
                got = act_quant(x, 4, two_pass=two, **kw)
                same = torch.equal(got.q, ref.q) and torch.equal(got.scale, ref.scale)
                t = ms(lambda: act_quant(x, 4, two_pass=two, **kw))
                tag = "two-pass" if two else "default"
                log(f"  act-quant {name:10s} {tag:11s} {t:.4f} ms" + ("" if two else f"  q/scale equal to two-pass: {same}"))
                rows.append({"shape": shape, "act": name, "kernel": tag, "ms": t, "equal": same})
        for two in (True, False):
            aq = act_quant(x, 4, two_pass=two)
            t_g = ms(lambda: qg.qgemm(aq.q, aq.scale, w4, s4, bias=bias.float(), out=out))
            t_l = ms(lambda: qg.qgemm(*(lambda r: (r.q, r.scale))(act_quant(x, 4, two_pass=two)), w4, s4,
                                      bias=bias.float(), out=out))
            tag = "two-pass" if two else "default"
            log(f"  W4A4 (per-token act, no low-rank): GEMM+bias {t_g:.4f} ms ({t_bf16 / t_g:.2f}x); "
                f"layer with {tag} act {t_l:.4f} ms = {t_bf16 / t_l:.2f}x bf16")
            rows.append({"shape": shape, "layer": f"plain W4A4, {tag} act", "ms": t_l, "gemm_ms": t_g,
                         "bf16_ms": t_bf16, "speedup": t_bf16 / t_l})
        x = w = out = None  # noqa: F841 (free before the next shape)
        torch.cuda.empty_cache()
    log.write(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
