#!/usr/bin/env python
"""The W4A4 GEMM's GELU epilogue (tanh.approx.f32 on the GPU) against the reference, fp32 output (GPU only).

    PYTHONPATH=. python3 scripts/check_gelu_epilogue.py

The code of GPU run 8 (c)'s check (docs/perf_logs/gelu-epilogue-check-2026-11-24-h100.log), kept as run.
"""

import torch

from vsrq.kernels.qgemm import qgemm
from vsrq.kernels.reference import qgemm_ref

torch.manual_seed(0)
for m, k, n in ((4096, 3072, 3072), (1000, 2560, 10240)):
    qa = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
    sa = torch.rand(m, 1, device="cuda") * 0.05
    qw = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    sw = (torch.rand(n, 1, device="cuda") * 0.05).half()
    b = torch.randn(n, device="cuda")
    got = qgemm(qa, sa, qw, sw, bias=b, activation="gelu_tanh", out_dtype=torch.float32)
    ref = qgemm_ref(qa.cpu(), sa.cpu(), qw.cpu(), sw.cpu(), bias=b.cpu(), activation="gelu_tanh",
                    out_dtype=torch.float32).cuda()
    rel = float((got - ref).norm() / ref.norm())
    mx = float((got - ref).abs().max())
    print(f"M={m} K={k} N={n}: GELU epilogue vs reference (fp32 out) rel {rel:.2e}, max abs {mx:.2e}",
          "ok" if rel < 1e-2 else "FAILED")
