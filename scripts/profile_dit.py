"""Where the time of one DiT forward goes, per CUDA kernel, bf16 vs RTN W4A4 (GPU only).

Why: the whole-DiT ratio (1.05x in GPU run 2) is far below the per-layer GEMM ratios, so we
need the share of GEMMs, activation quantization, attention and the elementwise glue before
choosing the next kernel change. Usage (H100):
    python3 scripts/profile_dit.py --depth 4 --size 240x136 --chunk 4
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from vsrq.bench import median_ms, rtn_variant
from vsrq.models.loader import ARCHITECTURES

CATEGORIES = [
    ("act-quant", r"act_quant|_tile_kernel"),  # _tile_kernel: whole-row act-quant, with or without the LayerNorm
    ("w4a4-gemm", r"qgemm"),
    ("unpack", r"unpack"),
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("gemm-bf16", r"gemm|cutlass|sm90_xmma|nvjet|ampere_|cublas"),
    ("norm", r"layer_norm|LayerNorm|norm"),
    ("copy/permute", r"copy|cat|index|gather|roll|elementwise_kernel_with_index|transpose"),
    ("elementwise", r"elementwise|vectorized|reduce|silu|gelu|mul|add"),
]


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "other"


def profile_forward(net: torch.nn.Module, x: torch.Tensor, iters: int) -> tuple[dict, list]:
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                net(x)
            torch.cuda.synchronize()
    per_cat: dict[str, float] = defaultdict(float)
    kernels = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if ev.device_type == torch.autograd.DeviceType.CUDA and t > 0:
            per_cat[category(ev.key)] += t / iters / 1e3
            kernels.append((t / iters / 1e3, ev.count // iters, ev.key[:110]))
    kernels.sort(reverse=True)
    return dict(per_cat), kernels


def wall_ms(net: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return median_ms(lambda: net(x), x.device, warmup=1, repeat=5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--size", default="240x136")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32, help="low-rank branch of the W4A4 variant (0: none)")
    ap.add_argument("--mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile", action="store_true", help="also torch.compile both models (same glue fusion for both)")
    a = ap.parse_args()
    cfg = {"dim": a.dim, "depth": a.depth, "heads": a.heads, "mlp_ratio": 4.0, "patch": [1, 2, 2], "window": [4, 8, 8], "scale": 2}
    w, h = map(int, a.size.split("x"))
    dev = torch.device("cuda")
    fp = ARCHITECTURES["vsrq-dit"].build(cfg).eval()
    w4 = rtn_variant(fp, 4, 4, rank=a.rank).to(dev, torch.bfloat16)
    fp = fp.to(dev, torch.bfloat16)
    x = torch.rand(1, 3, a.chunk, h, w, device=dev, dtype=torch.bfloat16)
    out = {"config": cfg, "input": [a.chunk, h, w], "device": torch.cuda.get_device_name(dev)}
    nets = [("bf16", fp), ("w4a4", w4)]
    if a.compile:
        nets += [("bf16+compile", torch.compile(fp, mode=a.mode)), ("w4a4+compile", torch.compile(w4, mode=a.mode))]
    for name, net in nets:
        try:
            cats, kernels = profile_forward(net, x, a.iters)
        except Exception as err:  # a compile failure is a result to report, not a reason to lose the others
            print(f"== {name}: failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            continue
        ms = wall_ms(net, x)
        gpu = sum(cats.values())
        out[name] = {"wall_ms": ms, "gpu_ms": gpu, "categories": cats, "top": kernels[:25]}
        print(f"== {name}: wall {ms:.2f} ms, summed kernel time {gpu:.2f} ms (gap = host/launch bound)")
        for cat, t in sorted(cats.items(), key=lambda kv: -kv[1]):
            print(f"   {cat:<14} {t:8.2f} ms  {100 * t / gpu:5.1f} %")
        for t, n, k in kernels[:25 if "compile" not in name else 40]:
            print(f"   {t:8.3f} ms x{n:<4} {k}")
    base = out.get("bf16", {}).get("wall_ms")
    for name, _ in nets:
        if name in out and base:
            print(f"{name:<14} wall {out[name]['wall_ms']:8.2f} ms   speed vs bf16 (eager) {base / out[name]['wall_ms']:.2f}x")
    if "bf16+compile" in out and "w4a4+compile" in out:
        print(f"w4a4+compile vs bf16+compile: {out['bf16+compile']['wall_ms'] / out['w4a4+compile']['wall_ms']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
