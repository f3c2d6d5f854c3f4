"""`vsrq bench`: speed and memory of full-precision and low-bit paths, measured in one run.

Everything in one report comes from the same process, inputs and device, so the ratios
(W8A8 / W4A4 against the float path) are meaningful; absolute numbers are for that machine only.
Timings: warm-up first, then the median of repeats (CUDA events on the GPU, a monotonic clock on
the CPU). Low-bit variants for speed are made by round-to-nearest (no calibration needed: the
kernels cost the same whatever the values), in the form `vsrq quantize` writes: adaLN modulation
folded. Checkpoint bytes compare each variant's file with the bf16 file of the model as trained
(unfolded).
"""

from __future__ import annotations

import copy
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsrq.io import VideoReader, VideoWriter, probe
from vsrq.models.loader import ARCHITECTURES, LoadedModel, load_model, save_checkpoint
from vsrq.pipeline.device import pick_device, pick_dtype
from vsrq.pipeline.upscale import UpscaleOptions, upscale_file
from vsrq.quant.calibrate import target_layers
from vsrq.quant.checkpoint import save_quantized, set_module
from vsrq.quant.engine import fold_constants
from vsrq.quant.qlinear import QuantLinear
from vsrq.quant.recipe import DEFAULT_KEEP

PRECISIONS = {"fp": None, "w8a8": (8, 8), "w4a4": (4, 4)}


NAMED_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (positive integers) or a name of NAMED_SIZES -> (w, h); ValueError says what is accepted."""
    if text in NAMED_SIZES:
        return NAMED_SIZES[text]
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if w <= 0 or h <= 0:
        raise ValueError(f"a size is WxH (e.g. 160x90) or one of {', '.join(NAMED_SIZES)}, got {text!r}")
    return w, h


def synthetic_clip(path: Path, size: tuple[int, int], frames: int, fps: int = 25) -> None:
    """A moving, textured test clip (never zeros: flat input can run faster than real data)."""
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(h + frames, w + frames, 3), dtype=np.uint8)
    with VideoWriter(path, width=w, height=h, fps=Fraction(fps), time_base=Fraction(1, fps), source=None, crf=18, preset="veryfast") as writer:
        for t in range(frames):
            writer.write(np.ascontiguousarray(base[t:t + h, t:t + w]), t)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeat: int = 5) -> float:
    """Median wall time of fn() in milliseconds, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rtn_variant(model: nn.Module, bits: int, act_bits: int, rank: int) -> nn.Module:
    """A copy of `model`, folded as `vsrq quantize` does, whose target linears are RTN QuantLinears
    (for timing and size)."""
    q = fold_constants(copy.deepcopy(model).float())
    for name in target_layers(q, DEFAULT_KEEP):
        lin = q.get_submodule(name)
        set_module(q, name, QuantLinear.from_linear(lin, bits=bits, act_bits=act_bits, rank=min(rank, lin.in_features, lin.out_features)))
    return q.eval()


def time_transcode(src: Path, dst: Path) -> tuple[int, float]:
    """Decode every frame and re-encode it at the same size: the floor the model adds to."""
    info = probe(src)
    w, h = info.width - info.width % 2, info.height - info.height % 2
    start = time.perf_counter()
    n = 0
    with VideoReader(src) as reader, VideoWriter(dst, width=w, height=h, fps=info.fps, time_base=info.time_base, source=info, overwrite=True) as writer:
        for frame in reader.frames():
            writer.write(np.ascontiguousarray(frame.image[:h, :w]), frame.pts)
            n += 1
    return n, time.perf_counter() - start


def checkpoint_bytes(loaded: LoadedModel, variant: nn.Module, precision: str, tmp: Path) -> int:
    """Size of the file the variant is shipped as: bf16 for the float model, packed otherwise."""
    arch = loaded.module.arch
    cfg = ARCHITECTURES[arch].config_of(loaded.module)
    path = tmp / f"{precision}.safetensors"
    if precision == "fp":
        save_checkpoint(variant, path, arch=arch, precision="bf16")
    else:
        save_quantized(variant, path, arch=arch, config=cfg, precision=precision, report={})
    return path.stat().st_size


def run_bench(*, model: str | None, config: dict | None, input: Path | None, size: tuple[int, int], frames: int, device: str,
              chunk: int, precisions: list[str], rank: int, repeat: int, layers: bool, pipeline: bool,
              compile: bool = False, cuda_graphs: bool = False) -> dict:
    dev = pick_device(device)
    dtype = pick_dtype(dev)
    if config is not None:
        module = ARCHITECTURES["vsrq-dit"].build(config).eval()
        loaded = LoadedModel(name="random-" + "x".join(str(config.get(k, "")) for k in ("dim", "depth")), module=module, precision="fp32", weights_path=Path("-"))
    else:
        loaded = load_model(model)
    if loaded.precision not in ("fp32", "fp16", "bf16"):
        raise ValueError("bench a full-precision model; it makes the low-bit variants itself")
    w, h = size
    x = torch.rand(1, 3, chunk, h, w, device=dev, dtype=dtype)
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": loaded.name,
        "input": f"{w}x{h} x {chunk} frames per forward",
        "rank": rank,
        "compiled": compile,
        "cuda_graphs": bool(compile and cuda_graphs and dev.type == "cuda"),
        "forward": {}, "layers": [], "size": {}, "size_vs_bf16": {}, "pipeline": {},
    }
    variants: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="vsrq-bench-") as tmp:
        for p in precisions:
            variants[p] = loaded.module if p == "fp" else rtn_variant(loaded.module, *PRECISIONS[p], rank=rank)
            res["size"][p] = checkpoint_bytes(loaded, variants[p], p, Path(tmp))
            res["size_vs_bf16"][p] = res["size"]["fp"] / res["size"][p] if "fp" in res["size"] else None
            net = variants[p].to(dev, dtype)
            if compile:  # warm-up below includes compilation (and graph recording); the timed repeats do not
                net = torch.compile(net, mode="reduce-overhead" if res["cuda_graphs"] else None)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            with torch.inference_mode():
                ms = median_ms(lambda: net(x), dev, warmup=3 if res["cuda_graphs"] else 2, repeat=repeat)
            peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            res["forward"][p] = {"ms": ms, "frames_per_s": chunk / ms * 1e3, "peak_bytes": peak}
            if dev.type == "cuda":  # the next variant's peak must not include this one's weights
                del net
                variants[p].to("cpu")
                torch.cuda.empty_cache()
        if layers:
            res["layers"] = layer_table(variants, precisions, dev, dtype, x, repeat)
        if pipeline:
            res["pipeline"] = pipeline_rows(loaded, variants, precisions, input, size, frames, device, chunk, Path(tmp))
    return res


def layer_table(variants: dict[str, nn.Module], precisions: list[str], dev: torch.device, dtype: torch.dtype, x: torch.Tensor, repeat: int) -> list[dict]:
    """Per distinct linear shape: the layer's own time at the real token count of one forward."""
    captured: dict[str, torch.Tensor] = {}
    fp = variants["fp"] if "fp" in variants else next(iter(variants.values()))
    names = target_layers(fp, DEFAULT_KEEP)
    hooks = [fp.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: captured.setdefault(n, a[0].detach())) for n in names]
    with torch.inference_mode():
        fp.to(dev, dtype)(x)
    for hk in hooks:
        hk.remove()
    for v in variants.values():
        v.to(dev, dtype)
    rows, seen = [], set()
    for n in names:
        inp = captured[n].reshape(-1, captured[n].shape[-1])
        mods = {p: variants[p].get_submodule(n) for p in precisions}
        key = (inp.shape[0], next(iter(mods.values())).in_features, next(iter(mods.values())).out_features)
        if key in seen:
            continue
        seen.add(key)
        row = {"layer": n, "M": key[0], "K": key[1], "N": key[2]}
        for p, mod in mods.items():
            with torch.inference_mode():
                row[p] = median_ms(lambda: mod(inp), dev, repeat=repeat)
        rows.append(row)
    return rows


def pipeline_rows(loaded: LoadedModel, variants: dict[str, nn.Module], precisions: list[str], input: Path | None, size: tuple[int, int],
                  frames: int, device: str, chunk: int, tmp: Path) -> dict:
    src = input
    if src is None:
        src = tmp / "input.mp4"
        synthetic_clip(src, size, frames)
    n, secs = time_transcode(src, tmp / "transcode.mp4")
    out = {"frames": n, "decode_encode_fps": n / secs}
    for p in precisions:
        lm = LoadedModel(name=p, module=variants[p], precision=p, weights_path=loaded.weights_path)
        rep = upscale_file(src, tmp / f"up-{p}.mp4", lm, UpscaleOptions(chunk=chunk, overlap=min(2, chunk // 2), device=device), progress=False)
        out[f"upscale_fps_{p}"] = rep.fps
        out["output"] = f"{rep.width}x{rep.height}"
    return out


def format_report(r: dict) -> list[str]:
    ps = list(r["forward"])
    base = ps[0]
    lines = [f"vsrq bench {r['date']}  device: {r['device']}  torch {r['torch']}",
             f"model {r['model']}; {r['input']}; low-bit variants RTN, low-rank rank {r['rank']}"
             + ("; every forward torch.compile'd" if r.get("compiled") else "")
             + (", replayed as CUDA graphs" if r.get("cuda_graphs") else ""),
             f"checkpoints: {base} = bf16 as trained; low-bit = packed, adaLN modulation folded", "",
             f"{'DiT forward':<22}" + "".join(f"{p:>14}" for p in ps)]
    lines.append(f"{'  median ms':<22}" + "".join(f"{r['forward'][p]['ms']:>14.2f}" for p in ps))
    lines.append(f"{'  speed vs ' + base:<22}" + "".join(f"{r['forward'][base]['ms'] / r['forward'][p]['ms']:>13.2f}x" for p in ps))
    mem_label = "  peak GPU MiB" if not r["device"].startswith("cpu") else "  peak RSS MiB (proc)"
    lines.append(f"{mem_label:<22}" + "".join(f"{r['forward'][p]['peak_bytes'] / 2**20:>14.1f}" for p in ps))
    lines.append(f"{'checkpoint MiB':<22}" + "".join(f"{r['size'][p] / 2**20:>14.3f}" for p in ps))
    lines.append(f"{'  bf16 bytes / these':<22}" + "".join(f"{r['size'][base] / r['size'][p]:>13.2f}x" for p in ps))
    if r["layers"]:
        lines += ["", f"{'layer (M x K -> N)':<40}" + "".join(f"{p + ' ms':>12}" for p in ps) + "".join(f"{p + ' x':>10}" for p in ps[1:])]
        for row in r["layers"]:
            name = f"{row['layer']} ({row['M']}x{row['K']}->{row['N']})"
            lines.append(f"{name:<40}" + "".join(f"{row[p]:>12.3f}" for p in ps) + "".join(f"{row[base] / row[p]:>9.2f}x" for p in ps[1:]))
    if r["pipeline"]:
        pl = r["pipeline"]
        lines += ["", f"pipeline on {pl['frames']} frames -> {pl.get('output', '?')}: decode+encode alone {pl['decode_encode_fps']:.2f} frames/s"]
        for p in ps:
            lines.append(f"  full upscale {p:<6} {pl[f'upscale_fps_{p}']:>8.2f} frames/s")
    if r["device"].startswith("cpu"):
        lines += ["", "note: on the CPU the low-bit layers run the exact reference (integer values in float arithmetic);",
                  "      they show the numerics, not a speed-up: the fused kernels are for CUDA GPUs."]
    return lines
