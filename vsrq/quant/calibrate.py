"""Calibration: run clips through the full-precision model and record what each linear layer sees.

For every target layer we keep a random sample of its input tokens (to fit and score quantizers
against the layer's true output) and running statistics over *all* tokens: per-channel range,
per-token range (the dynamic range video tokens are notorious for), variance, outlier ratio, and
spatial / temporal complexity of the token map (how much the features change between
neighbouring pixels and frames), which rank allocation (STCA) and layer selection (VOLTS) use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsrq.errors import VsrqError


@dataclass
class LayerStats:
    """What calibration learned about one linear layer's input."""

    name: str
    in_features: int
    samples: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0
    chan_absmax: torch.Tensor | None = None  # (K,)
    chan_absmax_clips: list[torch.Tensor] = field(default_factory=list)  # (K,) per calibration clip (forward)
    sum: torch.Tensor | None = None  # (K,) for the mean
    sumsq: torch.Tensor | None = None  # (K,) for the variance
    token_absmax: list[torch.Tensor] = field(default_factory=list)  # sampled per-token ranges
    outliers: int = 0  # entries beyond 6 standard deviations of their channel
    spatial: list[float] = field(default_factory=list)
    temporal: list[float] = field(default_factory=list)

    @property
    def x(self) -> torch.Tensor:
        """The sampled input tokens (M, K), float32."""
        return torch.cat(self.samples) if self.samples else torch.empty(0, self.in_features)

    def static_absmax(self) -> torch.Tensor | None:
        """Per channel, the median over calibration clips of each clip's range: the channel
        imbalance the clips share (ViDiT-Q's static part, here across clips); None without clips."""
        if not self.chan_absmax_clips:
            return None
        return torch.quantile(torch.stack(self.chan_absmax_clips).float(), 0.5, dim=0)

    @property
    def variance(self) -> float:
        mean = self.sum / self.tokens
        return float((self.sumsq / self.tokens - mean**2).clamp_min(0).mean())

    @property
    def outlier_ratio(self) -> float:
        return self.outliers / max(1, self.tokens * self.in_features)

    @property
    def token_range_spread(self) -> float:
        """Ratio of the 99th to the 50th percentile of per-token ranges: how far tokens disagree."""
        r = torch.cat(self.token_absmax).float()
        return float(torch.quantile(r, 0.99) / torch.quantile(r, 0.5).clamp_min(1e-8)) if len(r) else 1.0

    @property
    def spatial_complexity(self) -> float:
        return float(np.mean(self.spatial)) if self.spatial else 0.0

    @property
    def temporal_complexity(self) -> float:
        return float(np.mean(self.temporal)) if self.temporal else 0.0

    def summary(self) -> dict:
        return {
            "tokens": self.tokens,
            "absmax": float(self.chan_absmax.max()) if self.chan_absmax is not None else 0.0,
            "variance": self.variance,
            "outlier_ratio": self.outlier_ratio,
            "token_range_spread": self.token_range_spread,
            "spatial": self.spatial_complexity,
            "temporal": self.temporal_complexity,
        }


def _complexity(x: torch.Tensor, win: tuple[int, int, int]) -> tuple[float, float] | None:
    """Relative feature change between neighbouring tokens in space and in time, inside windows."""
    if x.dim() != 4 or x.shape[2] != win[0] * win[1] * win[2]:
        return None
    b, nw, _, c = x.shape
    g = x.float().reshape(b * nw, *win, c)
    scale = g.abs().mean().clamp_min(1e-8)
    sp = []
    if win[1] > 1:
        sp.append((g[:, :, 1:] - g[:, :, :-1]).abs().mean())
    if win[2] > 1:
        sp.append((g[:, :, :, 1:] - g[:, :, :, :-1]).abs().mean())
    spatial = float(torch.stack(sp).mean() / scale) if sp else 0.0
    temporal = float((g[:, 1:] - g[:, :-1]).abs().mean() / scale) if win[0] > 1 else 0.0
    return spatial, temporal


def target_layers(model: nn.Module, keep: Iterable[str]) -> list[str]:
    """Names of the nn.Linear layers to quantize: all but those whose name contains a `keep` fragment."""
    keep = tuple(keep)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(k in n.split(".") or n.startswith(k) for k in keep)]


@torch.no_grad()
def calibrate(model: nn.Module, layers: list[str], clips: Iterable[torch.Tensor], tokens_per_clip: int = 4096, seed: int = 0) -> tuple[dict[str, LayerStats], float]:
    """Run each clip (1, 3, T, H, W) through `model`; returns per-layer stats and seconds taken."""
    started = time.perf_counter()
    modules = dict(model.named_modules())
    stats = {n: LayerStats(n, modules[n].in_features) for n in layers}
    gen = torch.Generator().manual_seed(seed)
    windows: dict[str, tuple[int, int, int]] = {}
    handles = []

    def block_hook(block_name: str):
        def hook(_mod, args):
            for a in args:
                if hasattr(a, "win") and hasattr(a, "partition"):
                    windows[block_name] = tuple(a.win)
        return hook

    for name, mod in modules.items():
        if any(isinstance(c, nn.Linear) and f"{name}.{cn}" in stats for cn, c in mod.named_modules() if cn):
            handles.append(mod.register_forward_pre_hook(block_hook(name)))

    def layer_hook(name: str):
        st = stats[name]
        owners = [p for p in windows_keys(name)]

        def hook(_mod, args):
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            n = flat.shape[0]
            absmax = flat.abs().amax(0)
            st.chan_absmax = absmax if st.chan_absmax is None else torch.maximum(st.chan_absmax, absmax)
            st.chan_absmax_clips.append(absmax)
            s, sq = flat.sum(0), (flat * flat).sum(0)
            st.sum = s if st.sum is None else st.sum + s
            st.sumsq = sq if st.sumsq is None else st.sumsq + sq
            st.tokens += n
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-8)
            st.outliers += int(((flat - mean).abs() > 6 * std).sum())
            idx = torch.randperm(n, generator=gen)[: min(n, tokens_per_clip)]
            st.samples.append(flat[idx].clone())
            st.token_absmax.append(flat[idx].abs().amax(1))
            for owner in owners:
                if owner in windows:
                    cx = _complexity(x, windows[owner])
                    if cx is not None:
                        st.spatial.append(cx[0])
                        st.temporal.append(cx[1])
                    break
        return hook

    for name in layers:
        handles.append(modules[name].register_forward_pre_hook(layer_hook(name)))
    count = 0
    try:
        for clip in clips:
            model(clip)
            count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise VsrqError("the calibration set is empty: give --calib videos (a file or a folder) with at least one frame")
    return stats, time.perf_counter() - started


def windows_keys(layer_name: str) -> list[str]:
    """Enclosing module names of a layer, innermost first (where a window layout may be recorded)."""
    parts = layer_name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def clips_from_videos(paths: list[Path], frames: int = 8, crop: int = 64, per_video: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Calibration clips (1, 3, T, crop, crop) in [0, 1] cut from the user's videos (LR as given)."""
    from vsrq.io import VideoReader
    from vsrq.pipeline.upscale import frames_to_tensor

    rng = np.random.default_rng(seed)
    clips = []
    for path in paths:
        taken = 0
        with VideoReader(path) as reader:
            buf = []
            for frame in reader.frames():
                buf.append(frame.image)
                if len(buf) < frames:
                    continue
                x = frames_to_tensor(buf)
                buf = []
                h, w = x.shape[-2:]
                c = min(crop, h, w)
                y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
                clips.append(x[..., y0:y0 + c, x0:x0 + c].contiguous())
                taken += 1
                if taken == per_video:
                    break
    return clips


def find_videos(spec: Path) -> list[Path]:
    """A video file, or the videos in a folder (by extension)."""
    exts = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".y4m"}
    if spec.is_file():
        return [spec]
    if spec.is_dir():
        found = sorted(p for p in spec.iterdir() if p.suffix.lower() in exts and p.is_file())
        if found:
            return found
        raise VsrqError(f"--calib {spec}: the folder holds no video files ({', '.join(sorted(exts))})")
    raise VsrqError(f"--calib {spec} does not exist")


def default_calibration_clips() -> list[torch.Tensor]:
    """The built-in calibration set: 8 LR training clips (8 x 48 x 48) shipped in the package."""
    from importlib import resources

    from safetensors.torch import load_file

    path = Path(str(resources.files("vsrq") / "quant" / "calib_default.safetensors"))
    clips = load_file(str(path))["clips"]  # (N, T, H, W, 3) uint8
    return [c.permute(3, 0, 1, 2).unsqueeze(0).float().div(255) for c in clips]
