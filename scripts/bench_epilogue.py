"""What the GEMM epilogue's gate and residual cost, and where a layer call's host time goes (GPU only).

Why: in GPU run 10 the fused gate + residual made the 8-block DiT ~2 % slower, not faster, and a
W4A4 layer call took ~270 us of host time against ~25 us for nn.Linear. Part 1 times `qgemm`
alone at a DiT shape with no epilogue extras, a residual, a residual with a stride-0 (per-channel)
gate, and a residual with a full (M, N) gate. Part 2 runs cProfile over back-to-back calls of a
small QuantLinear (the kernels take microseconds there) and prints the functions the host time
goes to. Usage (H100):
    PYTHONPATH=. python3 scripts/bench_epilogue.py [--m 34560 --k 2560 --n 2560]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch

from scripts._gpu_run import kernel_ms
from vsrq.kernels.qgemm import qgemm
from vsrq.quant.qlinear import QuantLinear


def epilogue_rows(m: int, k: int, n: int) -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    qa = torch.randint(-7, 8, (m, k), device=dev, dtype=torch.int8, generator=g)
    qw = torch.randint(-7, 8, (n, k), device=dev, dtype=torch.int8, generator=g)
    sa = torch.rand(m, 1, device=dev) * 0.01
    sw = (torch.rand(n, 1, device=dev) * 0.01).half()
    bias = torch.randn(n, device=dev)
    res = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    gvec = torch.randn(n, device=dev, dtype=torch.bfloat16)
    gfull = gvec.expand(m, n).contiguous()
    variants = {
        "bias": dict(),
        "bias + residual": dict(residual=res),
        "bias + stride-0 gate + residual": dict(gate=gvec.view(1, n).expand(m, n), residual=res),
        "bias + full (M, N) gate + residual": dict(gate=gfull, residual=res),
    }
    xb = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    wb = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    print(f"qgemm M={m} K={k} N={n}; cuBLAS bf16 of the same shape {kernel_ms(lambda: torch.nn.functional.linear(xb, wb)):.4f} ms")
    base = None
    outs = {}
    for name, kw in variants.items():
        fn = lambda kw=kw: qgemm(qa, sa, qw, sw, bias=bias, out_dtype=torch.bfloat16, **kw)  # noqa: E731
        outs[name] = fn()
        ms = kernel_ms(fn)
        base = base or ms
        print(f"  {name:<36} {ms:8.4f} ms  (+{(ms - base) * 1e3:6.1f} us)", flush=True)
    a, b = outs["bias + stride-0 gate + residual"], outs["bias + full (M, N) gate + residual"]
    print(f"  stride-0 and full gate outputs equal: {torch.equal(a, b)}")
    y = outs["bias"]
    print(f"  the unfused model's torch pass residual + gate * y: {kernel_ms(lambda: res + gvec * y):8.4f} ms")


def host_profile(k: int, n: int, calls: int) -> None:
    dev = torch.device("cuda")
    q = QuantLinear.from_linear(torch.nn.Linear(k, n).to(dev), bits=4, act_bits=4).to(dev)
    x = torch.randn(16, k, device=dev, dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(20):
            q(x)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            q(x)
        torch.cuda.synchronize()
        prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(25)
    total = st.total_tt / calls * 1e6
    print(f"host profile, QuantLinear W4A4 K={k} N={n} M=16: {total:.1f} us per call under cProfile")
    print("\n".join(s.getvalue().splitlines()[:60]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=34560)
    ap.add_argument("--k", type=int, default=2560)
    ap.add_argument("--n", type=int, default=2560)
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    epilogue_rows(a.m, a.k, a.n)
    host_profile(a.k, a.n, a.calls)


if __name__ == "__main__":
    main()
