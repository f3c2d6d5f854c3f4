"""`vsrq bench --model seedvr2-3b`: SeedVR2 stage by stage (VAE encode / DiT / VAE decode), bf16 vs low-bit.

All variants run in one process on the same inputs, so the ratios hold; absolute numbers are for
that machine. With `random_weights` the networks get random weights of the real shapes (speed and
memory do not depend on the values), which is how it runs where the Hub files cannot be fetched.
Low-bit DiTs are made by round-to-nearest in the form `vsrq quantize` writes (kernels cost the same
whatever the values); the VAE stays bf16. Peak memory is `torch.cuda.max_memory_allocated` from a
reset before each measurement, weights included.
"""

from __future__ import annotations

import gc
import time
from dataclasses import replace

import torch
from torch import nn

from vsrq.bench import PRECISIONS, median_ms, parse_size
from vsrq.pipeline.device import pick_device, pick_dtype
from vsrq.pipeline.seedvr2 import SeedVR2Restorer, SeedVR2Settings, pad_frames_4n1, vae_tile_overlap
from vsrq.pipeline.vram import tensor_bytes
from vsrq.quant.calibrate import target_layers
from vsrq.quant.checkpoint import set_module
from vsrq.quant.qlinear import QuantLinear



def random_restorer(preset: str, device: torch.device, dtype: torch.dtype, settings: SeedVR2Settings,
                    vae_preset: str = "seedvr2") -> SeedVR2Restorer:
    """A SeedVR2 restorer with random weights of the real shapes, built directly on `device`."""
    from vsrq.models.seedvr2.dit import SeedVR2DiT, SeedVR2DiTConfig
    from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig

    torch.manual_seed(0)
    with torch.device(device):
        dit = SeedVR2DiT(SeedVR2DiTConfig.preset(preset)).to(dtype)
        vae = SeedVR2VAE(SeedVR2VAEConfig.preset(vae_preset)).to(dtype)
        text = torch.randn(58, dit.cfg.txt_in_dim or dit.cfg.dim, dtype=dtype)
    return SeedVR2Restorer(dit, vae, text, settings).eval()


def quantize_dit_rtn(restorer: SeedVR2Restorer, bits: int, act_bits: int) -> int:
    """Swap the DiT's target linears for RTN QuantLinears in place, layer by layer (no float copy
    of the whole model); returns how many were swapped."""
    dit = restorer.dit
    keep = tuple(k for k in restorer.quant_keep if k != "vae")
    names = target_layers(dit, keep)
    with torch.inference_mode(False), torch.no_grad():  # QuantLinear keeps version-tracked caches
        _swap(dit, names, bits, act_bits)
    return len(names)


def _swap(dit: nn.Module, names: list[str], bits: int, act_bits: int) -> None:
    for name in names:
        lin = dit.get_submodule(name)
        q = QuantLinear.from_linear(lin.float(), bits=bits, act_bits=act_bits, rank=0)
        set_module(dit, name, q.to(lin.weight.device, torch.bfloat16 if lin.weight.is_cuda else torch.float32))
        del lin


def weight_bytes(module: nn.Module) -> int:
    return tensor_bytes(list(module.parameters()) + list(module.buffers()))


def _peak(dev: torch.device, fn) -> tuple[object, int]:
    if dev.type != "cuda":
        return fn(), 0
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = fn()
    torch.cuda.synchronize(dev)
    return out, torch.cuda.max_memory_allocated(dev)


@torch.inference_mode()
def bench_size(restorer: SeedVR2Restorer, label: str, frames: int, repeat: int, dev: torch.device) -> dict:
    """One output size: ms and peak bytes of each stage and of the whole chunk (resize .. colour fix)."""
    dtype = next(restorer.dit.parameters()).dtype
    w, h = parse_size(label)
    scale = restorer.settings.scale
    lr = torch.rand(1, 3, frames, round(h / scale), round(w / scale), device=dev)
    video = pad_frames_4n1(torch.rand(1, 3, frames, h + (-h) % 16, w + (-w) % 16, device=dev, dtype=dtype) * 2 - 1)
    latent, enc_peak = _peak(dev, lambda: restorer.encode(video))
    clean, dit_peak = _peak(dev, lambda: restorer.denoise(latent))
    _, dec_peak = _peak(dev, lambda: restorer.decode(clean))
    _, all_peak = _peak(dev, lambda: restorer(lr))
    row = {
        "encode_ms": median_ms(lambda: restorer.encode(video), dev, warmup=1, repeat=repeat),
        "dit_ms": median_ms(lambda: restorer.denoise(latent), dev, warmup=1, repeat=repeat),
        "decode_ms": median_ms(lambda: restorer.decode(clean), dev, warmup=1, repeat=repeat),
        "total_ms": median_ms(lambda: restorer(lr), dev, warmup=1, repeat=repeat),
        "encode_peak": enc_peak, "dit_peak": dit_peak, "decode_peak": dec_peak, "peak": all_peak,
        "tokens": int(latent.shape[1] * (latent.shape[2] // 2) * (latent.shape[3] // 2)),
    }
    row["frames_per_s"] = frames / row["total_ms"] * 1e3
    return row


def bench_sizes(restorer: SeedVR2Restorer, sizes: list[str], frames: int, repeat: int, dev: torch.device) -> dict:
    rows = {}
    for label in sizes:
        rows[label] = bench_size(restorer, label, frames, repeat, dev)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def run_seedvr2_bench(*, preset: str, sizes: list[str], frames: int, precisions: list[str], device: str, repeat: int,
                      vae_tile: int = 0, scale: float = 2.0, vae_preset: str = "seedvr2", model: str | None = None,
                      compile: bool = False) -> dict:
    """Bench SeedVR2 variants; `model` (a registry name or DiT path) loads real weights, None makes random ones."""
    dev = pick_device(device)
    dtype = pick_dtype(dev)
    settings = SeedVR2Settings(scale=scale, vae_tile=vae_tile,
                               **({"vae_tile_overlap": vae_tile_overlap(vae_tile)} if vae_tile else {}))
    compile = compile and dev.type == "cuda"

    def make() -> SeedVR2Restorer:
        if model is None:
            return random_restorer(preset, dev, dtype, replace(settings), vae_preset)
        from vsrq.models.loader import load_model

        restorer = load_model(model).module
        restorer.settings = replace(settings)
        return restorer.place(dev, dtype)

    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": model or f"seedvr2-{preset} (random weights of the real shapes)",
        "frames": frames, "scale": scale, "vae_tile": vae_tile, "compiled": compile,
        "variants": {},
    }
    for p in precisions:
        restorer = make()
        base_p = p.removesuffix("+fp8vae")
        restorer.settings = replace(restorer.settings, vae_precision="fp8" if p != base_p else "bf16")
        swapped = 0
        if PRECISIONS[base_p] is not None:
            swapped = quantize_dit_rtn(restorer, *PRECISIONS[base_p])
        if compile:  # after the swap, so the compiled blocks hold the low-bit layers
            from vsrq.pipeline.seedvr2 import compile_blocks

            compile_blocks(restorer.dit)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        res["variants"][p] = {
            "dit_weight_bytes": weight_bytes(restorer.dit), "vae_weight_bytes": weight_bytes(restorer.vae),
            "quantized_layers": swapped, "sizes": bench_sizes(restorer, sizes, frames, repeat, dev),
        }
        del restorer
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    base = res["variants"].get("fp")
    if base:
        for p, v in res["variants"].items():
            for label, row in v["sizes"].items():
                b = base["sizes"][label]
                row["speedup_vs_bf16"] = {k: b[k] / row[k] for k in ("encode_ms", "dit_ms", "decode_ms", "total_ms")}
    return res


def format_seedvr2_report(r: dict) -> list[str]:
    gib = 1024 ** 3
    lines = [f"vsrq bench {r['model']} on {r['device']} ({r['date']}, torch {r['torch']}); {r['frames']} frames per chunk, "
             f"x{r['scale']:g}, VAE tile {r['vae_tile'] or 'none'}, DiT blocks {'compiled' if r.get('compiled') else 'eager'}"]
    w = max([7] + [len(p) + 1 for p in r["variants"]])
    lines.append(f"{'variant':<{w}}{'output':<7}{'enc ms':>9}{'DiT ms':>9}{'dec ms':>9}{'total ms':>10}{'frames/s':>10}"
                 f"{'x bf16':>8}{'DiT x':>7}{'peak GiB':>10}{'enc/DiT/dec GiB':>18}")
    for p, v in r["variants"].items():
        for label, row in v["sizes"].items():
            sp = row.get("speedup_vs_bf16", {})
            lines.append(f"{p:<{w}}{label:<7}{row['encode_ms']:>9.0f}{row['dit_ms']:>9.0f}{row['decode_ms']:>9.0f}{row['total_ms']:>10.0f}"
                         f"{row['frames_per_s']:>10.2f}{sp.get('total_ms', float('nan')):>8.2f}{sp.get('dit_ms', float('nan')):>7.2f}"
                         f"{row['peak'] / gib:>10.2f}{row['encode_peak'] / gib:>8.2f}/{row['dit_peak'] / gib:.2f}/{row['decode_peak'] / gib:.2f}")
        lines.append(f"        weights: DiT {v['dit_weight_bytes'] / gib:.2f} GiB ({v['quantized_layers']} low-bit layers), VAE {v['vae_weight_bytes'] / gib:.2f} GiB")
    return lines
