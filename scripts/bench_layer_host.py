"""Host time of one quantized linear-layer call on the GPU: microseconds of Python and launches
per call when the kernels themselves take almost nothing (GPU only).

Why: the whole-DiT forward ran 1.17x on a host-bound machine against 1.37x with CUDA graphs
(docs/PERF.md, GPU run 8): each W4A4 layer launches an activation kernel, the int4 -> int8
unpack and the GEMM, and builds launch arguments in Python, where nn.Linear makes one cuBLAS
call. This times calls at M=16 (kernels of a few microseconds), back to back, synchronizing
only at the end, so the figure is the host's cost per call; plus the same at a DiT-sized M, where
the GPU time should hide it. Usage (H100):
    PYTHONPATH=. python3 scripts/bench_layer_host.py [--k 2560 --n 2560]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from vsrq.quant.qlinear import QuantLinear


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Mean wall microseconds per call of `calls` back-to-back calls (after warm-up)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=2560)
    ap.add_argument("--n", type=int, default=2560)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    fp32 = torch.nn.Linear(a.k, a.n).to(dev)
    q = QuantLinear.from_linear(fp32, bits=4, act_bits=4).to(dev)
    lin = fp32.to(torch.bfloat16)  # in place: fp32 is not used again
    shift = torch.randn(a.k, device=dev) * 0.1
    scale = torch.randn(a.k, device=dev) * 0.1
    gate = torch.randn(a.n, device=dev, dtype=torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  K={a.k} N={a.n}")
    for m in (16, 34560):
        x = torch.randn(m, a.k, device=dev, dtype=torch.bfloat16)
        res = torch.randn(m, a.n, device=dev, dtype=torch.bfloat16)
        calls = a.calls if m <= 1024 else 30
        with torch.inference_mode():
            rows = {
                "nn.Linear bf16": lambda: lin(x),
                "QuantLinear W4A4": lambda: q(x),
                "QuantLinear forward_normed": lambda: q.forward_normed(x, 1e-6, shift, scale),
                "QuantLinear forward_residual": lambda: q.forward_residual(x, gate, res),
            }
            for name, fn in rows.items():
                print(f"M={m:<6} {name:<30} {per_call_us(fn, calls):9.1f} us/call", flush=True)


if __name__ == "__main__":
    main()
