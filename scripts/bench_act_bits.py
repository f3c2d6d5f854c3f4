"""What 8-bit instead of 4-bit activations cost in speed, with the same 4-bit weights (issue 4).

The anti-flicker recipes (`combo-joint-mpq-steady`, `-a8`) raise activations to 8 bits. The
kernels hold 4-bit values in int8 containers and run int8 MMAs either way (vsrq/kernels/qgemm.py),
so the GEMM should cost the same; this measures it instead of assuming: per linear shape, a
QuantLinear W4A4 against W4A8 built from the same weights, and whole models' DiT forwards on one
8-frame clip. Run on a GPU (the CPU reference runs the same float32 GEMMs for both):

    PYTHONPATH=. python3 scripts/bench_act_bits.py --models vsrq-tiny runs/flicker/cjm-a8.safetensors
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from vsrq.bench import median_ms
from vsrq.models.loader import load_model
from vsrq.pipeline.device import pick_dtype
from vsrq.quant.qlinear import QuantLinear

# (name, tokens M, K, N): vsrq-tiny's layers on an 8 x 90 x 160 clip, and a SeedVR2-3B-sized block's
SHAPES = [
    ("tiny qkv", 28800, 96, 288), ("tiny fc2", 28800, 192, 96),
    ("3B qkv", 32768, 2560, 7680), ("3B proj", 32768, 2560, 2560), ("3B fc1", 32768, 2560, 10240), ("3B fc2", 32768, 10240, 2560),
]


def layer_rows(device: torch.device, dtype: torch.dtype, repeat: int) -> list[str]:
    """Median ms of one W4A4 and one W4A8 layer of each shape (same weights, same input)."""
    rows = []
    for name, m, k, n in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(k, n)
        x = torch.randn(m, k, device=device, dtype=dtype)
        ms = {}
        for a_bits in (4, 8):
            q = QuantLinear.from_linear(lin, bits=4, act_bits=a_bits, cache_int8=True).to(device)
            with torch.no_grad():
                ms[a_bits] = median_ms(lambda: q(x), device, warmup=3, repeat=repeat)
        rows.append(f"| {name} | {m} x {k} -> {n} | {ms[4]:.3f} | {ms[8]:.3f} | {ms[8] / ms[4]:.2f} |")
    return rows


def model_rows(specs: list[str], device: torch.device, dtype: torch.dtype, repeat: int) -> list[str]:
    """Median ms of each model's forward on one (1, 3, 8, 90, 160) clip."""
    x = torch.rand(1, 3, 8, 90, 160, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    rows = []
    for spec in specs:
        loaded = load_model(spec)
        net = loaded.module.to(device, dtype).eval()
        with torch.no_grad():
            ms = median_ms(lambda: net(x), device, warmup=3, repeat=repeat)
        share = loaded.quant.get("act_bits_8_share", float("nan"))
        rows.append(f"| {loaded.name} | {share:.2f} | {ms:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="*", default=[], help="checkpoints to time whole (registry names or files)")
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = pick_dtype(device)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {dtype}, median of {a.repeat}")
    print("\n| layer | M x K -> N | W4A4 ms | W4A8 ms | A8 / A4 |\n|---|---|---|---|---|")
    print("\n".join(layer_rows(device, dtype, a.repeat)), flush=True)
    if a.models:
        print("\n| model | share of activations at 8 bits | DiT forward ms |\n|---|---|---|")
        print("\n".join(model_rows(a.models, device, dtype, a.repeat)))


if __name__ == "__main__":
    main()
