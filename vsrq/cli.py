"""`vsrq` command line: thin over vsrq.io, vsrq.models and vsrq.pipeline.

Every user-facing failure is one line on stderr and a non-zero exit code; a traceback is shown
only with VSRQ_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import typer

from vsrq.errors import VsrqError
from vsrq.pipeline.allocator import keep_freed_memory

app = typer.Typer(
    name="vsrq",
    help="Video super-resolution with low-bit (W4A4) one-step diffusion transformers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"vsrq: error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """A one-line warning on stderr; the job goes on."""
    typer.echo(f"vsrq: warning: {message}", err=True)


class _WarningLines(logging.Handler):
    """vsrq's log records as one stderr line each, every distinct message once per run: warnings as
    `vsrq: warning:`, info records (rare: things that explain a pause, such as first-run kernel
    tuning) as `vsrq: note:`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0] if record.getMessage() else ""
        if message and message not in self.seen:
            self.seen.add(message)
            if record.levelno >= logging.WARNING:
                warn(message)
            else:
                typer.echo(f"vsrq: note: {message}", err=True)


def _install_warning_lines() -> None:
    logger = logging.getLogger("vsrq")
    for handler in list(logger.handlers):
        if isinstance(handler, _WarningLines):
            logger.removeHandler(handler)
    logger.addHandler(_WarningLines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors, Ctrl-C and unexpected crashes into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _install_warning_lines()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except VsrqError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; no output was written", 130)
        except MemoryError:
            fail("out of memory; try a smaller --tile or --chunk")
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("VSRQ_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(f"internal error: {type(exc).__name__}: {first} (run with VSRQ_DEBUG=1 for details)", 70)

    return wrapper


@app.command()
@friendly_errors
def upscale(
    input: Path = typer.Argument(..., help="Input video file, or a folder of videos (batch)."),
    output: Path = typer.Argument(..., help="Output video file (written atomically), or a folder for a batch."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registry name or path to a .safetensors checkpoint. Default: the registry's default."),
    scale: Optional[float] = typer.Option(None, "--scale", "-s", help="Output scale; default: the model's native scale. Other values resize the model's output."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda or cuda:N."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Frames per temporal chunk; default: the model's (8; SeedVR2 21)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Frames shared by consecutive chunks (cross-faded); at most chunk/2; default: the model's (2; SeedVR2 4)."),
    tile: int = typer.Option(0, "--tile", "-t", help="Tile size in input pixels; 0 = whole frames (halved automatically on out-of-memory)."),
    tile_overlap: int = typer.Option(16, "--tile-overlap", help="Input pixels shared by neighbouring tiles."),
    batch: int = typer.Option(1, "--batch", help="Tiles per forward pass."),
    codec: str = typer.Option("libx264", "--codec", "-c", help="Video encoder: libx264, libx265, libsvtav1, ffv1, h264_nvenc, hevc_nvenc."),
    crf: Optional[int] = typer.Option(18, "--crf", help="Constant rate factor (quality; lower is better)."),
    preset: Optional[str] = typer.Option("medium", "--preset", help="Encoder speed preset."),
    pix_fmt: Optional[str] = typer.Option(None, "--pix-fmt", help="Output pixel format; default yuv420p, or 10-bit for 10-bit input."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", help="Replace an existing output file (and discard an unfinished job)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted job after its last complete segment."),
    space_check: bool = typer.Option(True, "--space-check/--no-space-check", help="Refuse to start when the output would not fit on the disk."),
    segment_frames: int = typer.Option(240, "--segment-frames", hidden=True, help="Output frames per resumable segment."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    on_error: Literal["stop", "skip"] = typer.Option("stop", "--on-error", help="Damaged input (corrupt packets, truncated file): stop with an error naming the frame, or skip the damage, upscale what is readable and warn what was lost."),
    colour_fix: Optional[str] = typer.Option(None, "--colour-fix", help="SeedVR2: colour correction against the input: wavelet (default), adain or none."),
    vae_tile: Optional[int] = typer.Option(None, "--vae-tile", help="SeedVR2: VAE tile side in output pixels (multiple of 16; 0 = whole frames), seams blended."),
    offload: bool = typer.Option(False, "--offload", help="SeedVR2: keep the DiT's blocks in host memory and stream them to the GPU one at a time (small cards)."),
    max_vram: Optional[float] = typer.Option(None, "--max-vram", help="SeedVR2 on CUDA: GiB of torch's GPU allocations to stay within (the CUDA context and allocator cache come on top); picks --chunk, --vae-tile and --offload from a measured estimate, overriding those options except --chunk."),
    seed: Optional[int] = typer.Option(None, "--seed", help="SeedVR2: seed of the diffusion noise (default 0; the same seed gives the same video)."),
    compile: bool = typer.Option(False, "--compile", help="SeedVR2 on CUDA: torch.compile the DiT blocks (about 2x faster DiT; 20-40 s once per frame size)."),
    vae_precision: Optional[str] = typer.Option(None, "--vae-precision", help="SeedVR2: bf16 (default) or fp8: the VAE's main convolutions in e4m3 (GPUs from Ada/Hopper; faster, measurably less exact: docs/PERF.md)."),
) -> None:
    """Upscale a video (or every video in a folder) with a one-step DiT VSR model; audio and subtitles are copied unchanged."""
    from vsrq.models.loader import is_seedvr2_model, load_model
    from vsrq.pipeline.upscale import EncodeOptions, UpscaleOptions

    if chunk is not None and chunk < 1:
        fail(f"--chunk must be at least 1, got {chunk}", 2)
    if overlap is not None and chunk is not None and not 0 <= overlap <= chunk // 2:
        fail(f"--overlap must be between 0 and half of --chunk ({chunk // 2}); got --chunk {chunk} --overlap {overlap}", 2)
    if vae_tile is not None:
        _check_vae_tile(vae_tile)
    if max_vram is not None and not (math.isfinite(max_vram) and max_vram > 0):
        fail(f"--max-vram must be a positive number of GiB, got {max_vram}", 2)
    if max_vram is not None and (device == "cpu" or (device == "auto" and not _cuda_available())):
        fail("--max-vram plans GPU memory; it needs a CUDA device", 2)
    if colour_fix is not None and colour_fix not in ("wavelet", "adain", "none"):
        fail(f"--colour-fix must be wavelet, adain or none, got {colour_fix!r}", 2)
    from vsrq.pipeline.seedvr2 import VAE_PRECISIONS

    if vae_precision is not None and vae_precision not in VAE_PRECISIONS:
        fail(f"--vae-precision must be {' or '.join(VAE_PRECISIONS)}, got {vae_precision!r}", 2)
    if vae_precision == "fp8" and not _fp8_gpu(device):
        fail("--vae-precision fp8 needs a CUDA GPU with fp8 tensor cores (Ada, Hopper or newer); "
             "elsewhere it would only be slower", 2)
    if tile < 0 or tile_overlap < 0 or (tile and tile_overlap >= tile):
        fail("--tile must be 0 or larger than --tile-overlap", 2)
    if batch < 1:
        fail("--batch must be at least 1", 2)
    if segment_frames < 1:
        fail("--segment-frames must be at least 1", 2)
    if scale is not None and not 0 < scale <= 16:
        fail(f"--scale must be in (0, 16], got {scale}", 2)
    enc = EncodeOptions(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt, overwrite=overwrite)
    jobs = _batch_jobs(input, output, overwrite) if input.is_dir() else None
    if jobs is None:
        _check_paths(input, output, overwrite)
    # SeedVR2's options: the settings field each sets and its value (None: not given); --max-vram is
    # applied per file, once the file's size is known (pipeline/vram.py), so it sets no field here
    restorer = {"--colour-fix": ("colour_fix", colour_fix), "--vae-tile": ("vae_tile", vae_tile),
                "--offload": ("offload_blocks", offload or None), "--max-vram": (None, max_vram),
                "--seed": ("seed", seed), "--compile": ("compile", compile or None),
                "--vae-precision": ("vae_precision", vae_precision)}
    given_options = [name for name, (_, value) in restorer.items() if value is not None]
    if given_options and is_seedvr2_model(model) is False:  # known before loading: fail at once
        fail(f"{', '.join(given_options)} apply to SeedVR2 models only; {model or 'the default model'} is not one", 2)
    loaded = load_model(model)
    auto_chunk = chunk is None
    chunk, overlap = _configure_model(loaded, scale, chunk, overlap, restorer)
    opts = UpscaleOptions(chunk=chunk, overlap=overlap, tile=tile, tile_overlap=tile_overlap, outscale=scale,
                          device=device, batch=batch, segment_frames=segment_frames, on_error=on_error,
                          max_vram=max_vram, auto_chunk=auto_chunk)
    if jobs is not None:
        _run_batch(jobs, loaded, opts, enc, resume, space_check, quiet)
        return
    _upscale_one(input, output, loaded, opts, enc, resume, space_check, quiet)


def _check_vae_tile(vae_tile: int) -> None:
    """One rule for upscale and bench: smaller tiles would blend with no overlap (hard seams)."""
    from vsrq.pipeline.seedvr2 import MIN_VAE_TILE

    if vae_tile < 0 or vae_tile % 16 or 0 < vae_tile < MIN_VAE_TILE:
        fail(f"--vae-tile must be 0 or a multiple of 16 from {MIN_VAE_TILE} up, got {vae_tile}", 2)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fp8_gpu(device: str) -> bool:
    """Whether `device` (auto, cpu, cuda, cuda:N, any case) is a CUDA GPU with fp8 tensor cores."""
    from vsrq.kernels.conv3d import FP8_MIN_CAPABILITY

    device = device.strip().lower()
    if not device.startswith(("auto", "cuda")) or not _cuda_available():
        return False
    import torch

    try:
        index = torch.device(device).index if device.startswith("cuda") else None
        return torch.cuda.get_device_capability(index) >= FP8_MIN_CAPABILITY
    except (AssertionError, RuntimeError, ValueError):  # no such GPU: the device check says so later
        return False


def _configure_model(loaded: Any, scale: Optional[float], chunk: Optional[int], overlap: Optional[int],
                     restorer: dict[str, tuple[Optional[str], Any]]) -> tuple[int, int]:
    """Apply the model-specific options (SeedVR2's) and fill chunk/overlap from the model's defaults."""
    from dataclasses import replace

    from vsrq.models.interfaces import ManagedRestorer, VSRModel, preferred_chunk
    from vsrq.pipeline.seedvr2 import vae_tile_overlap

    given_options = [name for name, (_, value) in restorer.items() if value is not None]
    module = loaded.module
    managed = isinstance(module, ManagedRestorer)
    if given_options and not managed:
        fail(f"{', '.join(given_options)} apply to SeedVR2 models only; {loaded.name} is a "
             f"{module.arch if isinstance(module, VSRModel) else 'vsrq'} model", 2)
    given = {field: value for field, value in restorer.values() if field is not None and value is not None}
    pref_chunk, pref_overlap = preferred_chunk(module)
    if managed:
        settings = module.settings
        if given.get("vae_tile"):
            given["vae_tile_overlap"] = vae_tile_overlap(given["vae_tile"], settings.vae_tile_overlap)
        try:
            module.settings = replace(settings, **given, **({"scale": scale} if scale is not None else {}))
        except ValueError as exc:
            fail(str(exc), 2)
    chunk = pref_chunk if chunk is None else chunk
    overlap = min(pref_overlap, chunk // 2) if overlap is None else overlap
    if not 0 <= overlap <= chunk // 2:
        fail(f"--overlap must be between 0 and half of --chunk ({chunk // 2}); got --chunk {chunk} --overlap {overlap}", 2)
    return chunk, overlap


def _upscale_one(input: Path, output: Path, loaded: Any, opts: Any, enc: Any, resume: bool, space_check: bool,
                 quiet: bool) -> None:
    from vsrq.pipeline.upscale import upscale_file

    with _sigterm_as_interrupt():
        report = upscale_file(input, output, loaded, opts, enc, progress=not quiet, resume=resume,
                              check_space=space_check, on_warning=warn)
    if not quiet:
        typer.echo(
            f"wrote {output} ({report.width}x{report.height}, {report.frames} frames, "
            f"{report.fps:.2f} frames/s on {report.device}"
            + (f", peak GPU memory {report.peak_gpu_bytes / 2**30:.1f} GiB" if report.peak_gpu_bytes else "")
            + f", model {loaded.name} [{loaded.precision}])",
            err=True,
        )


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                  ".mpg", ".mpeg", ".3gp", ".y4m", ".ogv")
BATCH_OUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")  # the others become .mkv (any codec fits)


def _batch_jobs(folder: Path, out_dir: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs for every video in `folder` (not recursive, sorted by name)."""
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"output {out_dir} is a file; a folder input needs an output folder")
    if out_dir.resolve() == folder.resolve():
        fail("the output folder is the input folder; choose another one")
    inputs = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in VIDEO_SUFFIXES)
    if not inputs:
        fail(f"{folder} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot create the output folder {out_dir} ({err.strerror or err})")
    suffix = lambda p: p.suffix if p.suffix.lower() in BATCH_OUT_SUFFIXES else ".mkv"  # noqa: E731
    return [(p, out_dir / (p.stem + suffix(p))) for p in inputs]


def _run_batch(jobs: list[tuple[Path, Path]], loaded: Any, opts: Any, enc: Any, resume: bool, space_check: bool,
               quiet: bool) -> None:
    """Every file in turn; a bad file is reported and skipped; the exit code says if any failed."""
    from vsrq.pipeline.journal import work_dir_for

    done, skipped, failed = 0, 0, []
    for src, dst in jobs:
        unfinished = Path(work_dir_for(str(dst.resolve()))).is_dir()
        if dst.exists() and not enc.overwrite and not unfinished:
            skipped += 1
            if not quiet:
                typer.echo(f"vsrq: skip {src.name}: {dst} exists", err=True)
            continue
        try:
            _upscale_one(src, dst, loaded, opts, enc, resume, space_check, quiet)
            done += 1
        except VsrqError as exc:
            if exc.exit_code == 130:
                raise
            failed.append(src.name)
            typer.echo(f"vsrq: error: {exc}", err=True)
        except Exception as exc:  # noqa: BLE001 - one file's crash must not end the batch
            if os.environ.get("VSRQ_DEBUG"):
                raise
            failed.append(src.name)
            first = str(exc).splitlines()[0] if str(exc) else ""
            typer.echo(f"vsrq: error: {src.name}: internal error: {type(exc).__name__}: {first}", err=True)
    summary = f"batch: {done} upscaled, {skipped} skipped (output exists), {len(failed)} failed"
    if failed:
        fail(f"{summary}: {', '.join(failed)}")
    typer.echo(f"vsrq: {summary}", err=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (shutdown, `kill`) takes the same clean path as Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_paths(input: Path, output: Path, overwrite: bool) -> None:
    """Cheap checks before a model is loaded, so a typo costs no time."""
    if not input.exists():
        fail(f"input {input} does not exist")
    if not input.is_file():
        fail(f"input {input} is not a file")
    if output.exists() and input.resolve() == output.resolve():
        fail("output path is the input file; choose another output path")
    if output.exists() and not overwrite:
        fail(f"output {output} exists; pass --overwrite to replace it")


@app.command()
@friendly_errors
def models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the registered models and whether their weights are here."""
    from vsrq.models.registry import load_registry, model_availability

    entries, default = load_registry()
    rows = []
    for name, spec in entries.items():
        rows.append({
            "name": name,
            "default": name == default,
            "arch": spec.arch,
            "precision": spec.precision,
            "scale": spec.config.get("scale"),
            "weights": spec.weights,
            "status": model_availability(spec),
            "description": spec.description,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) + 2
    for r in rows:
        mark = "*" if r["default"] else " "
        typer.echo(f"{mark} {r['name']:<{width}}{r['precision']:<6} x{r['scale'] or '?':<3} {r['status']:<12} {r['description']}")
    typer.echo("(* = default; status: packaged/local/cached = ready, remote = downloaded on first use, missing = not available)")


@app.command()
@friendly_errors
def quantize(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to quantize (registry name or checkpoint); default: the default model."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Weight bits (2-8; default: the recipe's, 4 except rtn-w8a8)."),
    act_bits: Optional[int] = typer.Option(None, "--act-bits", help="Activation bits (2-8; default: --bits if given, else the recipe's)."),
    method: str = typer.Option("rtn", "--method", help="Preset name (vsrq quantize --list) or a recipe .toml file."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration video or folder of videos; default: the built-in set."),
    out: Path = typer.Option(..., "--out", "-o", help="Output checkpoint (.safetensors), written atomically."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the full JSON report here."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Weight group size along K (default: the recipe's)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Low-rank branch rank (default: the recipe's)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Post-training quantization to a packed low-bit checkpoint (see docs/QUANT.md for the methods)."""
    from tqdm import tqdm

    from vsrq.models.interfaces import PartlyQuantized
    from vsrq.models.loader import ARCHITECTURES, load_model
    from vsrq.models.registry import is_quantized
    from vsrq.quant.calibrate import clips_from_videos, default_calibration_clips, find_videos
    from vsrq.quant.checkpoint import save_quantized
    from vsrq.quant.engine import quantize_model
    from vsrq.quant.recipe import load_recipe

    if bits is not None and not 2 <= bits <= 8:
        fail(f"--bits must be between 2 and 8, got {bits}", 2)
    if act_bits is not None and not 2 <= act_bits <= 8:
        fail(f"--act-bits must be between 2 and 8, got {act_bits}", 2)
    if out.exists() and not overwrite:
        fail(f"output {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        fail(f"output directory {out.parent} does not exist")
    # --bits overrides the recipe (and sets the activation bits unless --act-bits does); without it
    # the recipe's own bits hold, so `--method rtn-w8a8` gives W8A8.
    recipe = load_recipe(method, w_bits=bits, a_bits=act_bits if act_bits is not None else bits, group_size=group_size, rank=rank)
    loaded = load_model(model)
    if is_quantized(loaded.precision):
        fail(f"{loaded.name} is already quantized ({loaded.precision}); quantize its full-precision model")
    # a model of several networks (SeedVR2: DiT + VAE) names the one to quantize and what stays 16-bit;
    # calibration still runs the whole model, so the DiT sees the latents the VAE really makes
    partial = isinstance(loaded.module, PartlyQuantized)
    if partial:
        from dataclasses import replace as dc_replace

        recipe = dc_replace(recipe, keep=tuple(recipe.keep) + tuple(loaded.module.quant_keep))
        if recipe.refine or recipe.bias_align == "learn":
            fail(f"--method {method}: gradient refinement is not available for {loaded.name} "
                 "(its VAE runs without gradients); use a method without refinement (e.g. combo, svdquant)", 2)
    clips = clips_from_videos(find_videos(calib)) if calib is not None else default_calibration_clips()
    bar = tqdm(total=None, desc="quantize", unit="layer", disable=quiet)
    result = quantize_model(loaded.module, recipe, clips, progress=lambda line: (bar.update(1), bar.set_postfix_str(line.split(": ", 1)[-1])))
    bar.close()
    rep = {"source_model": loaded.name, **result.report(recipe)}
    precision = result.precision()
    if partial:  # the model says what its quantized part is written as
        net, arch, config = result.model.quantized_checkpoint()
    else:
        net, arch, config = result.model, loaded.module.arch, ARCHITECTURES[loaded.module.arch].config_of(loaded.module)
    save_quantized(net, out, arch=arch, config=config, precision=precision, report=rep)
    if report is not None:
        tmp = report.with_name(f".{report.name}.tmp")
        tmp.write_text(json.dumps(rep, indent=2))
        tmp.replace(report)
    if not quiet:
        typer.echo(f"{'layer':<24}{'group':>7}{'rank':>6}{'alpha':>7}{'had':>5}{'clip':>6}{'SQNR dB':>9}{'bits/w':>8}")
        for c in result.choices:
            alpha = f"{c.smooth_alpha:.1f}" if c.smooth_alpha is not None else "-"
            typer.echo(f"{c.name:<24}{c.group_size or 'ch':>7}{c.rank:>6}{alpha:>7}{c.hadamard_block:>5}{c.act_clip:>6.2f}{c.sqnr_db:>9.2f}{c.bits_per_weight:>8.2f}")
        typer.echo(f"{recipe.name} {precision}: {rep['bits_per_weight']:.2f} bits/weight over quantized layers; "
                   f"calibration {rep['calib_seconds']:.1f} s, quantization {rep['quant_seconds']:.1f} s -> {out}")


@app.command()
@friendly_errors
def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Full-precision model to benchmark (default: the default model)."),
    config: Optional[str] = typer.Option(None, "--config", help="Instead of a model: a DiT config as JSON, random weights (speed only)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="A video for the pipeline part; default: a generated clip."),
    size: str = typer.Option("160x90", "--size", help="Input (LR) size WxH for the forward and the generated clip."),
    frames: int = typer.Option(24, "--frames", help="Frames of the generated clip."),
    device: str = typer.Option("auto", "--device", "-d"),
    chunk: int = typer.Option(8, "--chunk", help="Frames per forward."),
    precisions: str = typer.Option("fp,w8a8,w4a4", "--precisions", help="Comma-separated: fp, w8a8, w4a4; SeedVR2 also takes a +fp8vae suffix (that variant's VAE convs in e4m3), e.g. w4a4+fp8vae."),
    rank: int = typer.Option(0, "--rank", help="Low-rank branch rank of the low-bit variants."),
    repeat: int = typer.Option(5, "--repeat", help="Timed repeats (median)."),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Per-layer GEMM timings."),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Decode/encode and full-upscale frames/s."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile every variant's forward (CUDA): the same glue fusion for all."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="With --compile: replay each forward as CUDA graphs (mode reduce-overhead), so host time drops out of the figures."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    random_weights: bool = typer.Option(False, "--random-weights", help="SeedVR2: random weights of the real shapes instead of the files (speed and memory only)."),
    sizes: str = typer.Option("720p,1080p", "--sizes", help="SeedVR2: output sizes, comma-separated (720p, 1080p or WxH)."),
    vae_tile: int = typer.Option(0, "--vae-tile", help="SeedVR2: VAE tile side in output pixels (0 = whole frames)."),
) -> None:
    """Speed and memory of fp vs W8A8 vs W4A4 on the same inputs, in one run."""
    from vsrq.bench import PRECISIONS, format_report, parse_size, run_bench

    seedvr2 = _seedvr2_preset(model)
    if seedvr2 is not None:
        from vsrq.bench_seedvr2 import format_seedvr2_report, run_seedvr2_bench

        plist = [p.strip() for p in precisions.split(",") if p.strip()]
        if not plist or any(p.removesuffix("+fp8vae") not in PRECISIONS for p in plist):
            fail(f"--precisions must use {', '.join(PRECISIONS)} (each optionally +fp8vae); got {precisions!r}", 2)
        if any(p.endswith("+fp8vae") for p in plist) and not _fp8_gpu(device):
            fail("+fp8vae variants need a CUDA GPU with fp8 tensor cores (Ada, Hopper or newer)", 2)
        _check_vae_tile(vae_tile)
        try:
            [parse_size(s.strip()) for s in sizes.split(",") if s.strip()]
        except ValueError as exc:
            fail(f"--sizes: {exc}", 2)
        if not random_weights and _quantized_entry(model):
            fail(f"{model} is already quantized; bench its full-precision model (the low-bit variants are made here)", 2)
        result = run_seedvr2_bench(preset=seedvr2, sizes=[s.strip() for s in sizes.split(",") if s.strip()],
                                   frames=frames, precisions=plist, device=device, repeat=repeat, vae_tile=vae_tile,
                                   model=None if random_weights else model, compile=compile)
        typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(format_seedvr2_report(result)))
        return

    try:
        w, h = parse_size(size)
    except ValueError as exc:
        fail(f"--size: {exc}", 2)
    plist = [p.strip() for p in precisions.split(",") if p.strip()]
    if not plist or any(p not in PRECISIONS for p in plist) or plist[0] != "fp":
        fail(f"--precisions must start with fp and use {', '.join(PRECISIONS)}; got {precisions!r}", 2)
    cfg = None
    if config is not None:
        try:
            cfg = json.loads(config)
        except ValueError:
            fail("--config must be JSON", 2)
    if cuda_graphs and not compile:
        fail("--cuda-graphs needs --compile", 2)
    if cuda_graphs:
        from vsrq.pipeline.device import pick_device

        if pick_device(device).type != "cuda":
            fail("--cuda-graphs needs a CUDA device", 2)
    result = run_bench(model=model, config=cfg, input=input, size=(w, h), frames=frames, device=device, chunk=chunk,
                       precisions=plist, rank=rank, repeat=repeat, layers=layers, pipeline=pipeline, compile=compile,
                       cuda_graphs=cuda_graphs)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for line in format_report(result):
            typer.echo(line)


def _quantized_entry(model: str) -> bool:
    from vsrq.models.registry import is_quantized, load_registry

    spec = load_registry()[0].get(model)
    return spec is not None and is_quantized(spec.precision)


def _seedvr2_preset(model: Optional[str]) -> Optional[str]:
    """The DiT preset ("3b", "7b") when `model` names a registered SeedVR2 model, else None."""
    if model is None:
        return None
    from vsrq.models.registry import load_registry

    spec = load_registry()[0].get(model)
    return str(spec.config.get("dit", "3b")) if spec is not None and spec.arch == "seedvr2" else None


TINY_CONFIG = {"dim": 96, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "patch": [1, 2, 2], "window": [4, 8, 8], "scale": 4}


@app.command()
@friendly_errors
def train(
    data: Path = typer.Option(..., "--data", help="Packed training set (python -m vsrq.train.data build)."),
    run: Path = typer.Option(..., "--run", help="Run directory: state, log; resumed if it exists."),
    config: str = typer.Option(json.dumps(TINY_CONFIG), "--config", help="DiT config as JSON."),
    steps: int = typer.Option(8000, "--steps", help="Total optimizer steps of the whole run."),
    minutes: float = typer.Option(9.0, "--minutes", help="Stop this slice after so many minutes (resume later)."),
    batch: int = typer.Option(32, "--batch"),
    crop: int = typer.Option(32, "--crop", help="LR crop size (HR is scale times larger)."),
    frames: int = typer.Option(8, "--frames"),
    lr: float = typer.Option(5e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(4, "--workers"),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the EMA weights here (fp16) when the slice ends."),
    loss: str = typer.Option("{}", "--loss", help='Loss weights as JSON, e.g. {"temporal": 1.0} (pixel, frequency, temporal, static, warp).'),
    init: Optional[Path] = typer.Option(None, "--init", help="Start a new run from this float checkpoint's weights (fine-tuning)."),
    degradations: str = typer.Option("all", "--degradations", help="all | light: train only on the light-family LR variants."),
    qat: str = typer.Option("", "--qat", help="Quantization-aware training through this recipe's numerics (rtn, quarot, a .toml); then `vsrq quantize --method` the same recipe."),
) -> None:
    """Train (a slice of) the VSR DiT; bf16 autocast on CUDA; resumable."""
    from vsrq.train.trainer import PackedPairs, TrainOptions, export_weights, train as run_training

    try:
        cfg = json.loads(config)
        weights = json.loads(loss)
    except ValueError:
        fail("--config and --loss must be JSON", 2)
    from vsrq.train.losses import LossWeights

    unknown = set(weights) - set(LossWeights.__dataclass_fields__) if isinstance(weights, dict) else {"(not an object)"}
    if unknown:
        fail(f"--loss: unknown weight(s) {sorted(unknown)}; known: {', '.join(LossWeights.__dataclass_fields__)}", 2)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in weights.values()):
        fail("--loss: weights must be non-negative numbers", 2)
    if init is not None and not init.is_file():
        fail(f"--init {init}: no such file", 2)
    if qat:
        from vsrq.quant.qat import check_qat_recipe
        from vsrq.quant.recipe import load_recipe

        check_qat_recipe(load_recipe(qat))
    opts = TrainOptions(run_dir=run, model=cfg, steps=steps, batch=batch, crop=crop, frames=frames, lr=lr, seed=seed,
                        minutes=minutes, workers=workers, loss=weights, init=str(init or ""), qat=qat)
    summary = run_training(PackedPairs(data, degradations), opts, log=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(summary))
    if export is not None:
        export_weights(run, export)
        typer.echo(f"exported EMA weights at step {summary['step']} to {export}", err=True)


@app.command(name="eval")
@friendly_errors
def evaluate_cmd(
    eval_dir: Path = typer.Option(..., "--eval", help="Held-out set (python -m vsrq.train.data eval)."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    device: str = typer.Option("auto", "--device", "-d"),
    chunk: int = typer.Option(8, "--chunk"),
    overlap: int = typer.Option(2, "--overlap"),
    png: Optional[Path] = typer.Option(None, "--png", help="Side-by-side crop (bicubic | model | HR) of the first clip."),
    temporal: bool = typer.Option(True, "--temporal/--no-temporal", help="Warping error (needs opencv-python-headless)."),
    max_clips: int = typer.Option(0, "--clips", help="Use only the first N clips (0 = all)."),
    max_frames: int = typer.Option(0, "--frames", help="Use only the first N frames of each clip (0 = all)."),
    per_clip: bool = typer.Option(False, "--per-clip", help="Also print PSNR-Y per clip."),
) -> None:
    """PSNR-Y / SSIM-Y / warping error of a model against bicubic and Lanczos on held-out clips."""
    import numpy as np

    from vsrq.eval.baselines import bicubic_upscale
    from vsrq.eval.report import BASELINES, evaluate, format_table
    from vsrq.models.loader import load_model
    from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions, upscale_clip
    from vsrq.train.data import load_eval_set

    clips = load_eval_set(eval_dir, max_clips, max_frames)
    loaded = load_model(model)
    upscaler = ChunkUpscaler(loaded, UpscaleOptions(chunk=chunk, overlap=overlap, device=device))
    rows = evaluate("ground truth", None, clips, temporal=temporal)
    for name, fn in BASELINES.items():
        rows += evaluate(name, fn, clips, temporal=temporal)
    rows += evaluate(f"{loaded.name} [{loaded.precision}]", lambda lr: upscale_clip(upscaler, lr), clips, temporal=temporal)
    typer.echo(format_table(rows))
    if per_clip:
        unit = "PSNR-Y dB / warping error" if temporal else "PSNR-Y dB"
        typer.echo("\n| clip | " + " | ".join(dict.fromkeys(r["method"] for r in rows)) + f" |  ({unit})")
        for c in clips:
            vals = [(f"{r['psnr_y']:.2f}" if r["method"] != "ground truth" else "-") + (f" / {r['warp_err']:.3f}" if temporal else "")
                    for r in rows if r["clip"] == c.name]
            typer.echo(f"| {c.name} | " + " | ".join(vals) + " |")
    if png is not None:
        from vsrq.io.image import write_png

        c = clips[0]
        t = len(c.hr) // 2
        h, w = c.hr.shape[1:3]
        ys, xs = slice(h // 4, h // 4 + h // 2), slice(w // 3, w // 3 + w // 3)
        ours = upscale_clip(upscaler, c.lr)[t]
        panel = np.concatenate([np.asarray(bicubic_upscale(c.lr[t:t + 1]))[0][ys, xs], ours[ys, xs], c.hr[t][ys, xs]], axis=1)
        write_png(png, panel)
        typer.echo(f"wrote {png} (bicubic | {loaded.name} | HR, clip {c.name}, frame {t})", err=True)


def main() -> None:
    """The `vsrq` command: process-wide set-up (the CPU allocator, vsrq.pipeline.allocator), then typer."""
    keep_freed_memory()
    app()


if __name__ == "__main__":
    sys.exit(main())
