#!/usr/bin/env python
"""Every int8 GEMM implementation x launch config of `vsrq.kernels.qgemm` at the DiT shapes (H100).

    PYTHONPATH=. python3 scripts/bench_gemm_impls.py [--out DIR]

Why: with the activation pass at its memory floor (GPU run 5) the W4A4 layer and whole-DiT goals
hang on the GEMM main loop (1.5-1.6x cuBLAS bf16 where ~1.8x is needed). This times the pointer,
TMA and persistent kernels on the same operands (GPU run 7 also timed Triton's automatic warp
specialization, since removed: docs/PERF.md), each output checked equal to the plain TMA kernel's
(integer accumulation and the same fp32 epilogue: bit-identical whatever the tiling), next to
cuBLAS bf16 and cuBLAS fp8 with scalar scales (a ceiling for a tensor-core GEMM on this chip).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.kernels import qgemm as qg  # noqa: E402
from vsrq.quant.pack import quantize_weight  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_run import RunLog, kernel_ms  # noqa: E402

IMPLS = ("ptr", "tma", "persistent")


def ms(fn) -> float:
    return kernel_ms(fn, 10, 50)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    torch.manual_seed(0)
    log = RunLog("gemm_impls")
    rows = log.rows

    import triton.backends.nvidia.compiler as nvc

    src = Path(nvc.__file__).read_text()
    log.header(f"triton {triton.__version__}; hopper warp-spec pass in the compiler: {'hopper_warpspec' in src}")
    m = 16384
    fails = 0
    for k, n in ((3072, 3072), (3072, 12288), (12288, 3072)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) * 0.01
        qa = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
        sa = torch.rand(m, 1, device="cuda") * 0.1
        w4, s4, _ = quantize_weight(w.float(), 4, None, True, torch.float16)
        biasf = bias.float()
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ops = 2.0 * m * n * k
        t_bf16 = ms(lambda: F.linear(x, w, bias))
        a8, b8 = qa.to(torch.float8_e4m3fn), w4.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        t_fp8 = ms(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        shape = f"M={m} K={k} N={n}"
        log(f"{shape}: cuBLAS bf16 {t_bf16:.4f} ms ({ops / t_bf16 / 1e9:.0f} TFLOP/s); cuBLAS fp8 scalar scales "
            f"{t_fp8:.4f} ms ({t_bf16 / t_fp8:.2f}x bf16)")
        ref = qg.qgemm(qa, sa, w4, s4, bias=biasf, impl="tma", config=qg.gemm_configs("sm90", False)[0]).clone()
        best: dict[str, tuple[float, dict]] = {}
        for impl in IMPLS:
            for cfg in qg.gemm_configs("sm90", False):
                try:
                    got = qg.qgemm(qa, sa, w4, s4, bias=biasf, impl=impl, config=cfg, out=out)
                    torch.cuda.synchronize()
                except Exception as e:  # a config that does not compile: reported, not fatal
                    log(f"  {impl:13s} {cfg}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                    continue
                same = torch.equal(got, ref)
                fails += not same
                t = ms(lambda: qg.qgemm(qa, sa, w4, s4, bias=biasf, impl=impl, config=cfg, out=out))
                log(f"  {impl:13s} {cfg}: {t:.4f} ms = {t_bf16 / t:.2f}x bf16, {ops / t / 1e9:.0f} TOPS"
                    + ("" if same else "  OUTPUT DIFFERS"))
                rows.append({"shape": shape, "impl": impl, "cfg": cfg, "ms": t, "bf16_ms": t_bf16, "equal": same})
                if same and (impl not in best or t < best[impl][0]):
                    best[impl] = (t, cfg)
        for impl, (t, cfg) in best.items():
            log(f"  best {impl:13s} {t:.4f} ms = {t_bf16 / t:.2f}x bf16 {cfg}")
        x = w = out = qa = None  # noqa: F841
        torch.cuda.empty_cache()
    log(f"outputs differing from the TMA kernel's: {fails}")
    log.write(a.out)
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
