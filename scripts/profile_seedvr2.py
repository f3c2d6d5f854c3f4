"""Where SeedVR2's time and GPU memory go, at real shapes with random weights (H100 run, docs/PERF.md).

VAE: peak memory of each top-level part of the encoder and decoder, time and peak of encode/decode
at 1080p for conv band limits and VAE tiles (its kernel-time split: scripts/profile_vae.py); DiT: the
time of bf16 and W4A4 forwards, eager and (``--compile``) with compiled blocks, and their CUDA kernel
time by kind (torch.profiler). Usage: python scripts/profile_seedvr2.py [--size 1920x1080] [--frames 21];
``--skip-vae --size 1280x720,1920x1080`` profiles only the DiT, on random latents of each size (log and
JSON to $OUT or --out).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_run import RunLog, profile_kinds  # noqa: E402

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
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/profile-seedvr2"))
    args = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    with torch.inference_mode(False):  # normal tensors: the W4A4 swap reads them outside inference mode
        r = random_restorer("3b", dev, dtype, SeedVR2Settings(scale=2.0))
    if args.skip_vae:  # the DiT alone: random latents of the shape each size encodes to
        log = RunLog("profile-seedvr2-dit")
        log.header(f"SeedVR2-3B DiT, random weights, {args.frames} frames, sizes {args.size}")
        latents = {}
        for size in args.size.split(","):
            w, h = parse_size(size)
            t = (args.frames + 2) // 4 + 1  # the latent frames of pad_frames_4n1(frames)
            latents[size] = torch.randn(1, t, (h + (-h) % 16) // 8, (w + (-w) % 16) // 8, 16, device=dev, dtype=dtype)
        dit_profile(r, latents, dev, args.compile, args.variants.split(","), log)
        log.write(args.out)
        return
    w, h = parse_size(args.size)
    video = pad_frames_4n1(torch.rand(1, 3, args.frames, h + (-h) % 16, w + (-w) % 16, device=dev, dtype=dtype) * 2 - 1)
    latent = r.encode(video)
    print(f"video {tuple(video.shape)} latent {tuple(latent.shape)}")
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
        log = RunLog("profile-seedvr2-dit")
        dit_profile(r, {args.size: latent}, dev, args.compile, args.variants.split(","), log)
        log.write(args.out)


DIT_KINDS = (
    ("int GEMM (ours)", ("_qgemm",)),
    ("act-quant", ("_tile_kernel", "_act_quant_kernel")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("bf16 GEMM", ("gemm", "nvjet", "xmma", "cutlass", "sm90_")),
    ("inductor fused", ("triton_",)),
    ("copy/elementwise", ("copy", "cat", "elementwise", "fill")),
)


def dit_profile(r, latents: dict, dev, compile_blocks_: bool, variants: list[str], log: RunLog) -> None:
    """Per variant and latent: eager DiT time and its kernel time by kind; with ``compile_blocks_``
    the same with each block torch.compile'd (what `vsrq bench --compile` and `upscale --compile` run).
    "w4a4" swaps the DiT's linears in place: list it after "bf16"."""
    import time

    from vsrq.pipeline.seedvr2 import compile_blocks, uncompile_blocks

    torch._dynamo.config.cache_size_limit = 64
    for variant in variants:
        if variant == "w4a4":
            quantize_dit_rtn(r, 4, 4)
            gc.collect()
            torch.cuda.empty_cache()
        for size, latent in latents.items():
            for mode in ("eager", "compiled") if compile_blocks_ else ("eager",):
                what = f"DiT {variant} {size} {mode} (latent {tuple(latent.shape)})"
                if mode == "compiled":
                    compile_blocks(r.dit)
                    t0 = time.perf_counter()
                    r.denoise(latent)
                    torch.cuda.synchronize()
                    log(f"== {what}: first call {time.perf_counter() - t0:.0f} s")
                times = [median_ms(lambda: r.denoise(latent), dev, warmup=1, repeat=5) for _ in range(2)]
                log(f"== {what}: {times[0]:.0f} / {times[1]:.0f} ms (two medians of 5)")
                log.rows.append(dict(variant=variant, size=size, mode=mode, ms=times,
                                     kinds=profile_kinds(lambda: r.denoise(latent), log, what, DIT_KINDS, top=14)))
                if mode == "compiled":
                    uncompile_blocks(r.dit)


if __name__ == "__main__":
    main()
