"""Where SeedVR2's time and GPU memory go, at real shapes with random weights (H100 run, docs/PERF.md).

VAE: peak memory of each top-level part of the encoder and decoder, time and peak of encode/decode
at 1080p for conv band limits and VAE tiles (its kernel-time split: scripts/profile_vae.py); DiT: the
top CUDA ops (torch.profiler) of one bf16 and one W4A4 forward at 1080p. Usage: python scripts/profile_seedvr2.py [--size 1920x1080] [--frames 21]
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace

import torch

from vsrq.bench import median_ms, parse_size
from vsrq.bench_seedvr2 import quantize_dit_rtn, random_restorer
from vsrq.pipeline.seedvr2 import SeedVR2Settings, pad_frames_4n1

GIB = 2**30


def peak_of(fn) -> tuple[object, float]:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - base) / GIB


def part_peaks(module: torch.nn.Module, fn) -> list[tuple[str, float]]:
    """Peak GiB above the start while each direct child of encoder/decoder runs (hooks)."""
    rows: dict[str, float] = {}
    hooks = []
    for top in ("encoder", "decoder"):
        for name, child in getattr(module, top).named_children():
            def pre(_m, _a, key=f"{top}.{name}"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                rows.setdefault(key, 0.0)
                rows[key + "@start"] = torch.cuda.memory_allocated() / GIB

            def post(_m, _a, _o, key=f"{top}.{name}"):
                torch.cuda.synchronize()
                rows[key] = max(rows[key], torch.cuda.max_memory_allocated() / GIB - rows[key + "@start"])
            hooks += [child.register_forward_pre_hook(pre), child.register_forward_hook(post)]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return [(k, v) for k, v in rows.items() if not k.endswith("@start")]


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--skip-dit", action="store_true")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time the DiT with each block torch.compile'd")
    ap.add_argument("--variants", default="bf16,w4a4")
    args = ap.parse_args()
    w, h = parse_size(args.size)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    with torch.inference_mode(False):  # normal tensors: the W4A4 swap reads them outside inference mode
        r = random_restorer("3b", dev, dtype, SeedVR2Settings(scale=2.0))
    video = pad_frames_4n1(torch.rand(1, 3, args.frames, h + (-h) % 16, w + (-w) % 16, device=dev, dtype=dtype) * 2 - 1)
    latent = r.encode(video)
    print(f"video {tuple(video.shape)} latent {tuple(latent.shape)}")

    if args.skip_vae:
        return dit_profile(r, latent, dev, args.compile, args.variants.split(','))
    print("== VAE parts (default settings): peak GiB above the part's start")
    for name, gib in part_peaks(r.vae, lambda: (r.encode(video), r.decode(latent))):
        print(f"  {name:<28}{gib:8.2f}")

    print("== VAE encode / decode: ms, peak GiB above weights+inputs")
    for band in (0.5, 0.125):
        for tile in (0, 512):
            r.vae.conv_max_bytes = band * GIB
            r.settings = replace(r.settings, vae_tile=tile, vae_tile_overlap=64)
            _, pe = peak_of(lambda: r.encode(video))
            _, pd = peak_of(lambda: r.decode(latent))
            te = median_ms(lambda: r.encode(video), dev, warmup=1, repeat=2)
            td = median_ms(lambda: r.decode(latent), dev, warmup=1, repeat=2)
            print(f"  band {band:5.3f} GiB tile {tile:4d}: encode {te:7.0f} ms {pe:6.2f} GiB | decode {td:7.0f} ms {pd:6.2f} GiB")
    r.vae.conv_max_bytes = None  # the default (no row bands)
    r.settings = replace(r.settings, vae_tile=0)
    torch.backends.cudnn.benchmark = True
    te = median_ms(lambda: r.encode(video), dev, warmup=1, repeat=2)
    td = median_ms(lambda: r.decode(latent), dev, warmup=1, repeat=2)
    print(f"  cudnn.benchmark: encode {te:7.0f} ms | decode {td:7.0f} ms")
    torch.backends.cudnn.benchmark = False

    if not args.skip_dit:
        dit_profile(r, latent, dev, args.compile, args.variants.split(','))


def dit_profile(r, latent, dev, compile_blocks: bool, variants: list[str]) -> None:
    from torch.profiler import ProfilerActivity, profile

    for variant in variants:
        if variant == "w4a4":
            quantize_dit_rtn(r, 4, 4)
            gc.collect()
            torch.cuda.empty_cache()
        r.denoise(latent)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            r.denoise(latent)
            torch.cuda.synchronize()
        print(f"== DiT {variant}: {median_ms(lambda: r.denoise(latent), dev, warmup=1, repeat=3):.0f} ms; top CUDA ops")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))
        if compile_blocks:
            import time

            torch._dynamo.config.cache_size_limit = 64
            eager = [b.forward for b in r.dit.blocks]
            for b in r.dit.blocks:
                b.forward = torch.compile(b.forward, dynamic=False)
            t0 = time.perf_counter()
            r.denoise(latent)
            torch.cuda.synchronize()
            print(f"== DiT {variant} compiled blocks: first call {time.perf_counter() - t0:.0f} s, then "
                  f"{median_ms(lambda: r.denoise(latent), dev, warmup=1, repeat=3):.0f} ms")
            for b, f in zip(r.dit.blocks, eager):
                b.forward = f


if __name__ == "__main__":
    main()
