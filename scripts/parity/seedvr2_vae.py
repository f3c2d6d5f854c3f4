"""Numerical parity of vsrq's SeedVR2 VAE against the official video_vae_v3 code (CPU, fp32).

Run with an env that imports the official code (torch, einops, diffusers 0.29.x, omegaconf):

    /work/venv-parity/bin/python scripts/parity/seedvr2_vae.py --official /work/official/SeedVR
    ... --write-golden tests/models/seedvr2/golden     # also (re)write our golden files

Both models get the same seeded random weights (rounded to fp16 values so goldens can store them
in half the space without changing a bit of the fp32 run). The official model runs under the
official inference settings: set_causal_slicing(split_size=4, memory_device="same") and
set_memory_limit(conv_max_mem=0.5, norm_max_mem=0.5). One extra case forces the official
memory-limit splitting (tiny limits) against our row-banded convs. Exit code 1 if any relative
error ||ours - official|| / ||official|| exceeds --tol (default 1e-3).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig  # noqa: E402
from vsrq.models.seedvr2.vae_keys import check_vae_state, vae_state_from_official  # noqa: E402

SCALE = 0.9152


def build_official(root: Path, cfg: SeedVR2VAEConfig):
    sys.path.insert(0, str(root))
    if "flash_attn" not in sys.modules:  # some official imports reference it; the VAE never calls it
        sys.modules["flash_attn"] = types.ModuleType("flash_attn")
    warnings.filterwarnings("ignore")
    import tempfile

    import torch.distributed as dist

    if not dist.is_initialized():  # the official slicing path asks for ranks; one CPU process
        init = Path(tempfile.mkdtemp()) / "pg"
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    from models.video_vae_v3.modules.attn_video_vae import VideoAutoencoderKLWrapper

    n = len(cfg.block_out_channels)
    m = VideoAutoencoderKLWrapper(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=["DownEncoderBlock3D"] * n,
        up_block_types=["UpDecoderBlock3D"] * n,
        block_out_channels=list(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        act_fn="silu",
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        slicing_sample_min_size=4,
        temporal_scale_num=cfg.temporal_down_num,
        inflation_mode="pad",
        spatial_downsample_factor=cfg.spatial_factor,
        temporal_downsample_factor=cfg.temporal_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        freeze_encoder=False,
    )
    return m.eval()


def randomize(m: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (norm affines too), fan-in scaled, fp16-representable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1 and ("norm" in name):
                v = (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g)
            elif p.ndim == 1:
                v = 0.05 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=g) * (1.3 / fan_in**0.5)
            p.copy_(v.half().float())


def rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return (a - b).abs().max().item(), ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_case(off, ours, cfg, t: int, h: int, w: int, seed: int, tiny_limits: bool = False):
    """Returns (rows, golden tensors)."""
    from models.video_vae_v3.modules import global_config

    g = torch.Generator().manual_seed(1000 + seed)
    video = (torch.rand(1, 3, t, h, w, generator=g) * 2 - 1).half().float()

    off.set_causal_slicing(split_size=4, memory_device="same")
    if tiny_limits:  # force the official spatial conv / norm splits
        off.set_memory_limit(conv_max_mem=3e-4, norm_max_mem=1e-6)
        ours.conv_max_bytes = 3e-4 * 1024**3
    else:
        off.set_memory_limit(conv_max_mem=0.5, norm_max_mem=0.5)
        ours.conv_max_bytes = 0.5 * 1024**3

    with torch.no_grad():
        torch.manual_seed(seed)
        enc = off.encode(video)  # wrapper: posterior.sample() with the global RNG
        post = enc.posterior
        off_mean, off_logvar = post.mean, post.logvar
        z_off = enc.latent if enc.latent.ndim == 5 else enc.latent.unsqueeze(2)
        off_latent = z_off.permute(0, 2, 3, 4, 1) * SCALE  # infer.py vae_encode: (z - 0) * scale
        # infer.py vae_decode: latent / scale + shift -> channel-first -> squeeze(2) -> decode
        zin = (off_latent / SCALE).permute(0, 4, 1, 2, 3).squeeze(2)
        off_dec = off.decode(zin).sample
        off_dec = off_dec if off_dec.ndim == 5 else off_dec.unsqueeze(2)

        mean, logvar = ours.encode_moments(video)
        lat = ours.encode(video, sample=True, generator=torch.Generator().manual_seed(seed))
        lat_mean = ours.encode(video, sample=False)
        dec = ours.decode(off_latent)
        dec_own = ours.decode(lat)
    global_config.set_norm_limit(None)

    tag = f"T={t} {h}x{w}" + (" tiny-mem-limits" if tiny_limits else "")
    rows = [
        (tag, "encode mean", *rel(mean, off_mean)),
        (tag, "encode logvar", *rel(logvar, off_logvar)),
        (tag, "encode mean (scaled, ch-last)", *rel(lat_mean, off_mean.permute(0, 2, 3, 4, 1) * SCALE)),
        (tag, "encode sample (same noise)", *rel(lat, off_latent)),
        (tag, "decode", *rel(dec, off_dec)),
    ]
    golden = {"video": video.half(), "mean": mean, "logvar": logvar, "latent": lat, "decoded": dec_own}
    return rows, golden


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of ByteDance-Seed/SeedVR")
    ap.add_argument("--write-golden", type=Path, default=None, help="write vae_*.safetensors here")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    worst = 0.0
    print(f"{'case':<28} {'what':<32} {'max-abs':>10} {'rel':>10}")
    for preset, seed in (("small", 0), ("tiny", 1)):
        cfg = SeedVR2VAEConfig.preset(preset)
        off = build_official(args.official, cfg)
        randomize(off, seed)
        ours = SeedVR2VAE(cfg).eval()
        off_keys = {k: tuple(v.shape) for k, v in off.state_dict().items()}
        our_keys = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        if off_keys != our_keys:
            diff = sorted(set(off_keys.items()) ^ set(our_keys.items()))
            print(f"[{preset}] state-dict keys/shapes differ, first: {diff[:3]}")
            return 1
        print(f"[{preset}] {cfg.block_out_channels} layers={cfg.layers_per_block} groups={cfg.norm_groups}: "
              f"{len(our_keys)} keys, names and shapes identical to the official model")
        sd = vae_state_from_official(off.state_dict())
        check_vae_state(ours, sd)
        ours.load_state_dict(sd, strict=True)

        cases = [(1, 24, 40), (5, 24, 40), (9, 24, 40)]
        if preset == "small":
            cases.append((13, 24, 40))
        for t, h, w in cases:
            rows, golden = run_case(off, ours, cfg, t, h, w, seed=10 * t + seed)
            for r in rows:
                print(f"{r[0]:<28} {r[1]:<32} {r[2]:10.3e} {r[3]:10.3e}")
                worst = max(worst, r[3])
            if args.write_golden is not None and preset == "tiny" and max(r[3] for r in rows) <= args.tol:  # only passing cases
                from safetensors.torch import save_file

                args.write_golden.mkdir(parents=True, exist_ok=True)
                tensors = {f"weight.{k}": v.half().contiguous() for k, v in ours.state_dict().items()}
                tensors.update({k: v.contiguous() for k, v in golden.items()})
                path = args.write_golden / f"vae_tiny_t{t}.safetensors"
                meta = {"config": json.dumps(cfg.to_dict()), "seed": str(10 * t + seed),
                        "source": "scripts/parity/seedvr2_vae.py (our outputs, checked against official)"}
                save_file(tensors, str(path), metadata=meta)
                print(f"  wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
        if preset == "small":
            rows, _ = run_case(off, ours, cfg, 9, 24, 40, seed=7, tiny_limits=True)
            for r in rows:
                print(f"{r[0]:<28} {r[1]:<32} {r[2]:10.3e} {r[3]:10.3e}")
                worst = max(worst, r[3])
    ok = worst <= args.tol
    print(f"worst relative error {worst:.3e} -> {'PASS' if ok else 'FAIL'} (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
