"""Where SeedVR2's VAE spends its GPU time at 1080p (random weights of the real shapes; H100 run).

Times encode (21 frames) and decode (6 latents) of the released s8 c16 t4 VAE in bf16, sums the
CUDA kernels of one call by kind (convolutions, GroupNorm, copies, other) from torch.profiler, and
repeats with `--variants`: `cl` = channels-last activations (the default on CUDA), `cf` = channel-first
(the layout before 2026-11-24's change), `bench` = cl with cudnn.benchmark on, `fp8` = cl with conv_format "fp8" (vae_convs.py's convs in e4m3),
`-band` suffix = row bands at the official 0.5 GiB. Before timing: bf16 (cf, cl) and fp8 encodes and
decodes against fp32 ones of the same weights at 480x272. The first variant's
decode is the reference the others' relative error is printed against. Usage: python scripts/profile_vae.py [--size 1920x1080] [--frames 21]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _gpu_run import RunLog, profile_kinds  # noqa: E402

from vsrq.bench import median_ms, parse_size  # noqa: E402
from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig  # noqa: E402

KINDS = (
    ("layout", ("nchwtonhwc", "nhwctonchw")),
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("conv", ("conv", "xmma", "implicit", "cudnn", "sm90", "sm80", "gemm", "cutlass", "wgrad", "dgrad", "fprop")),
    ("groupnorm", ("_gn_", "reduce_kernel", "welford", "moments", "var_mean")),
    ("bias/residual", ("_bias_kernel",)),
    ("add", ("functor_add",)),
    ("copy/cat", ("copy", "cat", "elementwise_kernel_with_index", "unrolled_elementwise", "fill")),
)


def accuracy(vae: SeedVR2VAE, log: RunLog) -> None:
    """Relative error of bf16 (both layouts) and fp8 encodes/decodes against fp32, at 480x272."""
    import copy

    ref_vae = copy.deepcopy(vae).float()
    g = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randn(1, 3, 34, 60, 16, device="cuda", generator=g)
    video = torch.rand(1, 3, 9, 272, 480, device="cuda", generator=g) * 2 - 1
    ref_vae.channels_last = False
    ref = ref_vae.decode(z).float()
    ref_enc = ref_vae.encode_moments(video)[0].float()
    del ref_vae
    rel = lambda a, b: float((a.float() - b).norm() / b.norm())  # noqa: E731
    for name, cl, fmt in (("bf16 channel-first", False, "bf16"), ("bf16 channels-last", True, "bf16"), ("fp8", True, "fp8")):
        vae.channels_last, vae.conv_format = cl, fmt
        e_dec = rel(vae.decode(z.bfloat16()), ref)
        e_enc = rel(vae.encode_moments(video.bfloat16())[0], ref_enc)
        log(f"accuracy vs fp32 (random weights, 480x272): {name}: encode mean rel err {e_enc:.2e}, decode {e_dec:.2e}")
        log.rows.append(dict(accuracy=name, encode_rel_err=e_enc, decode_rel_err=e_dec))
    vae.conv_format = "bf16"
    torch.cuda.empty_cache()


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--variants", default="cf,cl,fp8")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/profile-vae"))
    args = ap.parse_args()
    w, h = parse_size(args.size)
    dev = torch.device("cuda")
    log = RunLog("profile-vae")
    log.header(f"size {w}x{h}, {args.frames} frames")
    torch.manual_seed(0)
    vae = SeedVR2VAE(SeedVR2VAEConfig.preset("seedvr2")).to(dev, torch.bfloat16).eval()
    video = torch.rand(1, 3, args.frames, h, w, device=dev, dtype=torch.bfloat16) * 2 - 1
    accuracy(vae, log)
    latent = vae.encode(video, sample=False)
    log(f"video {tuple(video.shape)} latent {tuple(latent.shape)}")
    ref = None
    for variant in args.variants.split(","):
        torch.backends.cudnn.benchmark = variant == "bench"
        vae.channels_last = not variant.startswith("cf")
        vae.conv_max_bytes = 0.5 * 2**30 if variant.endswith("-band") else None
        vae.conv_format = "fp8" if variant.startswith("fp8") else "bf16"
        enc = lambda: vae.encode(video, sample=False)  # noqa: E731
        dec = lambda: vae.decode(latent)  # noqa: E731
        te = median_ms(enc, dev, warmup=1, repeat=3)
        td = median_ms(dec, dev, warmup=1, repeat=3)
        torch.cuda.reset_peak_memory_stats()
        out = dec().float()
        peak = torch.cuda.max_memory_allocated() / 2**30
        ref = out if ref is None else ref
        err = float((out - ref).norm() / ref.norm())
        del out
        log(f"[{variant}] encode {te:.0f} ms, decode {td:.0f} ms (decode peak {peak:.1f} GiB; decode rel err vs first {err:.2e})")
        log.rows.append(dict(variant=variant, encode_ms=te, decode_ms=td, decode_peak_gib=peak))
        if args.no_profile:
            continue
        profile_kinds(enc, log, f"[{variant}] encode", KINDS)
        profile_kinds(dec, log, f"[{variant}] decode", KINDS)
    log.write(args.out)


if __name__ == "__main__":
    main()
