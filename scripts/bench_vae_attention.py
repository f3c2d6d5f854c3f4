"""The VAE mid-block's single-head attention at head dim 512 (one 1080p frame: 135x240 = 32400 tokens):
torch's SDPA backends against an exact chunked form (bf16 QK^T into fp32 logits, fp32 softmax, bf16
P @ V), on an H100. Prints ms (triton do_bench median) and the relative error of each against an fp32
reference on the first 1024 queries. Usage: python scripts/bench_vae_attention.py [--tokens 32400]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_run import RunLog, kernel_ms  # noqa: E402


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    out = torch.empty_like(q3)
    kt = k3.transpose(-1, -2)
    for s in range(0, q3.shape[-2], chunk):
        logits = torch.bmm(q3[:, s : s + chunk], kt, out_dtype=torch.float32)
        p = torch.softmax(logits.mul_(scale), dim=-1).to(v.dtype)
        out[:, s : s + chunk] = torch.bmm(p, v3)
    return out.view_as(q)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32400)
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/bench-vae-attention"))
    args = ap.parse_args()
    log = RunLog("vae-attention")
    log.header(f"tokens {args.tokens}, head dim 512, one head")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1, args.tokens, 512, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(q[..., :1024, :].float(), k.float(), v.float())
    variants = {"sdpa default": lambda: F.scaled_dot_product_attention(q, k, v)}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        variants[name] = run
    for c in (2048, 4096, 8192):
        variants[f"chunked {c}"] = lambda c=c: chunked(q, k, v, c)
    for name, fn in variants.items():
        try:
            out = fn()
            err = float((out[..., :1024, :].float() - ref).norm() / ref.norm())
            ms = kernel_ms(fn, warmup=3, rep=20)
            log(f"{name:<16} {ms:8.2f} ms  rel err {err:.2e}")
        except Exception as exc:  # a backend that does not take d=512 says so
            log(f"{name:<16} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    log.write(args.out)


if __name__ == "__main__":
    main()
