#!/usr/bin/env python
"""The warp-specialized Gluon int8 GEMM (`vsrq.kernels.qgemm_ws`) checked and timed on an H100.

    PYTHONPATH=. python3 scripts/bench_gemm_ws.py [--out DIR] [--budget-s 420] [--configs A,B] [--tag T]
        [--no-baselines] [--skip-checks | --ragged-only]

A kernel fault (a CUDA launch failure) poisons the whole process, so configs under test are best run in
separate invocations (`--configs`, `--tag` names each log; `--no-baselines` skips cuBLAS/persistent timing).

Why: the Triton `persistent` GEMM sits at ~1170 int8 TOPS (59 % of peak, 1.50-1.60x cuBLAS bf16)
while cuBLAS fp8 shows ~1.88x; the Gluon kernel schedules TMA producer / wgmma consumers by hand
(docs/PERF.md, GPU run 9). This script

1. checks every Gluon config against `qgemm_ref` and the `persistent` kernel on random int4-valued
   int8 operands: ragged M and N (1000 x 3000), K = 3072 / 2560 / 10240, bias, GELU, a row-broadcast
   gate (stride 0 along M) and a residual, bf16 / fp16 / fp32 outputs; the output is poisoned with
   NaN first, so an unwritten element fails;
2. times cuBLAS bf16 (`torch.mm`), cuBLAS fp8 with scalar scales (a ceiling), `persistent` (tuned
   through `qgemm(impl="persistent")`) and each Gluon config (bias epilogue, bf16 out) at
   M=16384 (K,N) = (3072,3072), (3072,12288) and the DiT shapes M=34560 (K,N) = (2560,7680),
   (2560,2560), (2560,10240), (10240,2560).

One failing config never stops the rest (the exception is printed whole); the timing part stops
taking new shapes once --budget-s seconds have passed (the large checks, run last, get 90 s more).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

from vsrq.kernels import _triton as kt  # noqa: E402
from vsrq.kernels import qgemm as qg  # noqa: E402
from vsrq.kernels import qgemm_ws as W  # noqa: E402
from vsrq.kernels.reference import qgemm_ref  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_run import RunLog, kernel_ms  # noqa: E402

CHECKS = [  # (M, K, N, bias, gelu, gate, residual, out dtype)
    (1000, 3072, 3000, True, False, False, False, torch.bfloat16),
    (1000, 2560, 3000, True, True, True, True, torch.bfloat16),
    (1000, 3072, 3000, False, False, False, False, torch.float32),
    (16384, 3072, 3072, True, False, False, False, torch.bfloat16),
    (16384, 3072, 12288, True, True, False, False, torch.bfloat16),
    (16384, 10240, 3072, True, False, True, True, torch.float16),
    (16384, 2560, 3072, True, False, False, True, torch.bfloat16),
]
TIMES = [(16384, 3072, 3072), (16384, 3072, 12288), (34560, 2560, 7680), (34560, 2560, 2560),
         (34560, 2560, 10240), (34560, 10240, 2560)]


def operands(m: int, k: int, n: int):
    qa = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
    qw = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    sa = torch.rand(m, 1, device="cuda") * 0.02 + 0.001
    sw = (torch.rand(n, 1, device="cuda") * 0.02 + 0.001).half()
    return qa, sa, qw, sw


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def run_checks(log: RunLog, cfgs: list[dict], cases: list[tuple], deadline: float) -> int:
    fails = 0
    for m, k, n, hb, ge, hg, hr, odt in cases:
        if time.time() > deadline:
            log(f"time budget reached: check M={m} K={k} N={n} and later ones not run")
            break
        try:
            qa, sa, qw, sw = operands(m, k, n)
            bias = torch.randn(n, device="cuda") * 0.1 if hb else None
            gate = (torch.randn(1, n, device="cuda", dtype=torch.bfloat16).expand(m, n)) if hg else None
            res = torch.randn(m, n, device="cuda", dtype=torch.bfloat16) if hr else None
            act = "gelu_tanh" if ge else None
            kw = dict(bias=bias, activation=act, gate=gate, residual=res, out_dtype=odt)
            ref = qgemm_ref(qa, sa, qw, sw, **kw).float()
            per = qg.qgemm(qa, sa, qw, sw, impl="persistent", config=qg.gemm_configs("sm90", False)[5], **kw)
            e_per = rel(per, ref)
        except Exception:
            log(f"check M={m} K={k} N={n}: reference/persistent FAILED\n{traceback.format_exc()}")
            fails += 1
            continue
        case = (f"M={m} K={k} N={n} bias={hb} gelu={ge} gate(stride0)={hg} res={hr} out={str(odt)[6:]}; "
                f"persistent vs ref {e_per:.2e}")
        log(f"check {case}")
        for cfg in cfgs:
            try:
                out = torch.full((m, n), float("nan"), device="cuda", dtype=odt)
                W.qgemm_ws(qa, sa, qw, sw, out=out, config=cfg, **kw)
                torch.cuda.synchronize()
                written = bool(torch.isfinite(out).all())
                e = rel(out, ref)
                d = float((out.float() - per.float()).abs().max())
                same = float((out == per).float().mean())
                ok = written and e <= 1.5 * e_per + 1e-6
                fails += not ok
                log(f"  {cfg['name']:20s} {'PASS' if ok else 'FAIL'}: vs ref {e:.2e}, max|diff| vs persistent {d:.3g}, "
                    f"equal {same * 100:.2f} %, all written {written}")
            except Exception:
                fails += 1
                log(f"  {cfg['name']:20s} FAILED\n{traceback.format_exc()}")
        qa = qw = ref = per = res = gate = None  # noqa: F841
        torch.cuda.empty_cache()
    return fails


def tuned_persistent(n: int, k: int, m: int) -> object:
    for key, val in kt._TUNED.items():
        if key[:2] == ("qgemm", ("persistent",)) and key[2:5] == (qg._m_bucket(m), n, k):
            return val
    return None


def run_times(log: RunLog, cfgs: list[dict], deadline: float, baselines: bool = True) -> list[tuple]:
    table = []
    for m, k, n in TIMES:
        if time.time() > deadline:
            log(f"time budget reached: M={m} K={k} N={n} and later shapes not timed")
            break
        try:
            ops = 2.0 * m * n * k
            nan = float("nan")
            if not baselines:  # only a reference output for the difference column (one fixed config)
                qa, sa, qw, sw = operands(m, k, n)
                bias = torch.randn(n, device="cuda") * 0.1
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                per = qg.qgemm(qa, sa, qw, sw, bias=bias, impl="persistent", out=out,
                               config=qg.gemm_configs("sm90", False)[5]).clone()
                t_bf16 = t_fp8 = t_per = nan
                raise StopIteration
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = kernel_ms(lambda: torch.mm(x, w.t()))
            a8, b8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            one = torch.ones((), device="cuda")
            t_fp8 = kernel_ms(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
            x = w = a8 = b8 = None
            qa, sa, qw, sw = operands(m, k, n)
            bias = torch.randn(n, device="cuda") * 0.1
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            per = qg.qgemm(qa, sa, qw, sw, bias=bias, impl="persistent", out=out).clone()  # tunes once
            t_per = kernel_ms(lambda: qg.qgemm(qa, sa, qw, sw, bias=bias, impl="persistent", out=out))
        except StopIteration:
            pass
        except Exception:
            log(f"M={m} K={k} N={n}: baseline FAILED\n{traceback.format_exc()}")
            continue
        pc = tuned_persistent(n, k, m)
        log(f"M={m} K={k} N={n}: cuBLAS bf16 {t_bf16:.4f} ms ({ops / t_bf16 / 1e9:.0f} TFLOP/s); cuBLAS fp8 scalar "
            f"{t_fp8:.4f} ms ({t_bf16 / t_fp8:.2f}x); persistent {t_per:.4f} ms = {t_bf16 / t_per:.2f}x bf16, "
            f"{ops / t_per / 1e9:.0f} TOPS [{pc}]")
        best = None
        for cfg in cfgs:
            try:
                W.qgemm_ws(qa, sa, qw, sw, bias=bias, out=out, config=cfg)
                torch.cuda.synchronize()
                d = float((out.float() - per.float()).abs().max())
                t = kernel_ms(lambda: W.qgemm_ws(qa, sa, qw, sw, bias=bias, out=out, config=cfg))
                log(f"  gluon {cfg['name']:20s} {t:.4f} ms = {t_bf16 / t:.2f}x bf16, {ops / t / 1e9:.0f} TOPS, "
                    f"{t_per / t:.3f}x persistent (max|diff| {d:.3g})")
                log.rows.append({"M": m, "K": k, "N": n, "cfg": cfg["name"], "ms": t, "bf16_ms": t_bf16,
                                 "persistent_ms": t_per, "fp8_ms": t_fp8, "maxdiff": d})
                if best is None or t < best[0]:
                    best = (t, cfg["name"])
            except Exception:
                log(f"  gluon {cfg['name']:20s} FAILED\n{traceback.format_exc()}")
        table.append((m, k, n, t_bf16, t_fp8, t_per, best, ops))
        qa = qw = out = per = None  # noqa: F841
        torch.cuda.empty_cache()
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all that fit)")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--ragged-only", action="store_true", help="only the two M=1000 checks")
    ap.add_argument("--tag", default="", help="log name suffix (letters, digits, - and _)")
    ap.add_argument("--no-baselines", action="store_true", help="time the Gluon configs only")
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    log = RunLog("gemm_ws" + ("-" + a.tag if a.tag else ""))
    log.header(f"triton {triton.__version__}; gluon error: {W.GLUON_ERROR}; ws_available {W.ws_available(0)}")
    cfgs = W.ws_configs(0)
    if a.configs:
        cfgs = [c for c in W.WS_CONFIGS if c["name"] in a.configs.split(",")]
    log(f"configs: {[c['name'] for c in cfgs]}")
    # the two ragged cases (every epilogue option) first, then the timings, then the large checks
    fails = 0 if a.skip_checks else run_checks(log, cfgs, CHECKS[:2], t0 + a.budget_s)
    log(f"ragged checks: {fails} failing ({time.time() - t0:.0f} s so far)")
    table = run_times(log, cfgs, t0 + a.budget_s, not a.no_baselines)
    if not a.skip_checks and not a.ragged_only:
        fails += run_checks(log, cfgs, CHECKS[2:], t0 + a.budget_s + 90)
    log(f"checks: {fails} failing ({time.time() - t0:.0f} s so far)")
    log("")
    log("| shape (M, K, N) | cuBLAS bf16 ms | fp8 scalar x bf16 | persistent ms | x bf16 | TOPS "
        "| Gluon best ms | x bf16 | TOPS | vs persistent |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, k, n, tb, tf, tp, best, ops in table:
        g = "- | - | - | -"
        if best:
            g = f"{best[0]:.4f} ({best[1]}) | {tb / best[0]:.2f}x | {ops / best[0] / 1e9:.0f} | {tp / best[0]:.3f}x"
        log(f"| {m}, {k}, {n} | {tb:.4f} | {tb / tf:.2f}x | {tp:.4f} | {tb / tp:.2f}x | {ops / tp / 1e9:.0f} | {g} |")
    log(f"total {time.time() - t0:.0f} s; check failures {fails}")
    log.write(a.out)
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
