"""Synthetic degradations that turn an HR clip into the LR clip the model learns to invert.

Convention: clips are numpy uint8 arrays of shape (T, H, W, 3), RGB. Every parameter of a
degradation is drawn once per clip (a camera and an encoder do not change settings between
frames); only the noise realisation differs per frame, as sensor noise does. All randomness comes
from one seeded ``numpy.random.Generator``, and the encoders are configured to be bit-exact across
runs (x264 single-threaded; x265 single-threaded at preset "superfast", because its slower
presets are not reproducible run to run), so a seed reproduces the LR clip exactly on the same FFmpeg build.

Pipeline (first order, as in Real-ESRGAN-style training but with real video codecs):
    blur at HR -> x`scale` downscale -> noise -> quantise to uint8 -> compression (JPEG/H.264/HEVC)
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

try:
    import av
except ImportError:  # the GPU image has no PyAV: training-set clips then decode through OpenCV's FFmpeg
    av = None  # type: ignore[assignment]
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DegradeParams",
    "sample_degrade_params",
    "degrade",
    "degrade_random",
    "degrade_mild",
    "degrade_mild_encoded",
    "MILD",
    "gaussian_kernel",
    "blur_clip",
    "downscale_clip",
    "encode_clip",
    "decode_clip",
    "encode_lossless",
]

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradeParams:
    """Everything that defines one clip's degradation; stored next to each LR clip in the dataset."""

    blur: str = "none"  # "none" | "iso" | "aniso"
    sigma_x: float = 0.0  # HR pixels
    sigma_y: float = 0.0
    theta: float = 0.0  # radians, rotation of the anisotropic kernel
    down: str = "bicubic"  # "bicubic" | "bilinear" | "area"
    antialias: bool = True  # only for bicubic/bilinear; False gives an aliasing (cheap) scaler
    noise: str = "none"  # "none" | "gaussian" | "poisson"
    noise_level: float = 0.0  # gaussian: sigma on the 0..255 scale; poisson: photons at white
    noise_gray: bool = False  # same noise on all channels (luminance noise) instead of per channel
    codec: str = "none"  # "none" | "jpeg" | "h264" | "hevc"
    quality: int = 0  # h264/hevc: CRF; jpeg: mjpeg qscale (2 = best .. 31 = worst)
    chroma: str = "420"  # "420" | "444" (jpeg only; video codecs always use 4:2:0 like real streams)
    scale: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DegradeParams":
        return cls(**d)


#: The fixed evaluation degradation: Gaussian blur sigma 0.6, antialiased bicubic x4, H.264 CRF 18.
MILD = DegradeParams(blur="iso", sigma_x=0.6, sigma_y=0.6, down="bicubic", antialias=True, codec="h264", quality=18)


MILD_SHARE = 0.4
# The light family's ranges (sample_degrade_params draws from them, is_light recognises them).
LIGHT_SIGMA = (0.3, 1.0)
LIGHT_NOISE_MAX = 3.0
LIGHT_CRF = (14, 24)


def is_light(params: dict) -> bool:
    """Whether recorded degradation parameters (DegradeParams.to_dict) lie in the light family's
    ranges: isotropic blur sigma <= 1, antialiased bicubic, no or weak Gaussian noise, no codec or
    H.264 at CRF <= 24. Used to fine-tune towards clean input, the common case for users."""
    return (
        params.get("blur") in ("iso", "none") and float(params.get("sigma_x", 0.0)) <= LIGHT_SIGMA[1]
        and params.get("down") == "bicubic" and bool(params.get("antialias"))
        and (params.get("noise") == "none"
             or (params.get("noise") == "gaussian" and float(params.get("noise_level", 0.0)) <= LIGHT_NOISE_MAX))
        and (params.get("codec") == "none" or (params.get("codec") == "h264" and int(params.get("quality", 99)) <= LIGHT_CRF[1]))
    )


def sample_degrade_params(rng: np.random.Generator, scale: int = 4, light_share: float | None = None) -> DegradeParams:
    """Draw one clip's degradation; ranges are documented in docs/DATA.md.

    A share MILD_SHARE of clips comes from a light family (small blur, antialiased bicubic
    down-scaling, little or no noise, high-quality H.264) so that clean input, the common case
    for users and the evaluation setting, is not out of distribution; the rest is the heavy
    real-world mix. `light_share` overrides MILD_SHARE (1.0: a light-only training set)."""
    if rng.random() < (MILD_SHARE if light_share is None else light_share):
        s = float(rng.uniform(*LIGHT_SIGMA))
        noise, level = ("gaussian", float(rng.uniform(0.5, LIGHT_NOISE_MAX))) if rng.random() < 0.3 else ("none", 0.0)
        codec = "h264" if rng.random() < 0.8 else "none"
        q = int(rng.integers(LIGHT_CRF[0], LIGHT_CRF[1] + 1)) if codec == "h264" else 0
        return DegradeParams("iso", s, s, 0.0, "bicubic", True, noise, level, False, codec, q, "420", scale)
    u = rng.random()
    if u < 0.1:
        blur, sx, sy, th = "none", 0.0, 0.0, 0.0
    elif u < 0.55:
        s = float(rng.uniform(0.2, 3.0))
        blur, sx, sy, th = "iso", s, s, 0.0
    else:
        blur = "aniso"
        sx, sy = (float(v) for v in rng.uniform(0.2, 3.0, size=2))
        th = float(rng.uniform(0.0, math.pi))
    down = str(rng.choice(["bicubic", "bilinear", "area"]))
    antialias = bool(rng.random() < 0.8) if down != "area" else True
    u = rng.random()
    if u < 0.2:
        noise, level = "none", 0.0
    elif u < 0.7:
        noise, level = "gaussian", float(rng.uniform(1.0, 15.0))
    else:
        noise, level = "poisson", float(math.exp(rng.uniform(math.log(60.0), math.log(2000.0))))
    gray = bool(rng.random() < 0.4) if noise != "none" else False
    u = rng.random()
    chroma = "420"
    if u < 0.15:
        codec, q = "none", 0
    elif u < 0.45:
        codec, q = "jpeg", int(rng.integers(2, 17))
        chroma = "420" if rng.random() < 0.7 else "444"
    elif u < 0.8:
        codec, q = "h264", int(rng.integers(18, 37))
    else:
        codec, q = "hevc", int(rng.integers(20, 39))
    return DegradeParams(blur, sx, sy, th, down, antialias, noise, level, gray, codec, q, chroma, scale)


# --------------------------------------------------------------------------------------------
# Building blocks (torch float tensors (T, 3, H, W) on the 0..255 scale)
# --------------------------------------------------------------------------------------------


def _to_tensor(clip: np.ndarray) -> torch.Tensor:
    _check_clip(clip)
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).to(torch.float32)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _check_clip(clip: np.ndarray) -> None:
    if not isinstance(clip, np.ndarray) or clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        got = f"{type(clip).__name__} {getattr(clip, 'dtype', '')} {getattr(clip, 'shape', '')}"
        raise ValueError(f"expected a uint8 clip of shape (T, H, W, 3), got {got}")


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float = 0.0, size: int | None = None) -> torch.Tensor:
    """Normalised 2-D Gaussian, optionally anisotropic and rotated; odd size covering ~3 sigma."""
    smax = max(sigma_x, sigma_y)
    if size is None:
        size = min(21, 2 * math.ceil(3.0 * smax) + 1)
    r = (size - 1) / 2.0
    ax = torch.arange(size, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy  # coordinates in the kernel's principal axes
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).to(torch.float32)


def blur_clip(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every frame and channel with one kernel, reflect-padded so borders do not darken."""
    t, c, h, w = x.shape
    p = kernel.shape[-1] // 2
    if p == 0:
        return x
    mode = "reflect" if p < min(h, w) else "replicate"
    y = F.pad(x.reshape(t * c, 1, h, w), (p, p, p, p), mode=mode)
    return F.conv2d(y, kernel[None, None]).reshape(t, c, h, w)


def downscale_clip(x: torch.Tensor, scale: int, mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """x`scale` reduction; H and W must be multiples of `scale` so LR and HR stay pixel-aligned."""
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}")
    size = (h // scale, w // scale)
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unknown downscale mode {mode!r}")
    return F.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=False)


def _add_noise(x: torch.Tensor, p: DegradeParams, rng: np.random.Generator) -> torch.Tensor:
    if p.noise == "none":
        return x
    t, c, h, w = x.shape
    if p.noise == "gaussian":
        shape = (t, 1, h, w) if p.noise_gray else (t, c, h, w)
        n = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * p.noise_level
        return x + n
    if p.noise == "poisson":
        v = (x / 255.0).clamp(0, 1).numpy().astype(np.float64)
        peak = p.noise_level
        if p.noise_gray:  # shot noise of the luminance, shared by the channels
            y = (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2])[:, None]
            n = rng.poisson(y * peak) / peak - y
        else:
            n = rng.poisson(v * peak) / peak - v
        return x + torch.from_numpy((n * 255.0).astype(np.float32))
    raise ValueError(f"unknown noise {p.noise!r}")


# --------------------------------------------------------------------------------------------
# Codecs through PyAV
# --------------------------------------------------------------------------------------------

# x265 is only bit-reproducible here with one thread and the fastest analysis presets: at
# "veryfast" and slower, the same input and settings gave different streams run to run.
_X265_PARAMS = "log-level=error:pools=none:frame-threads=1"
# Macroblock-tree rate control off: with it, libx264 (PyAV 18.1's build) gave different bytes for
# the same clip depending on what the process had encoded before (4 of 19 small clips in a test
# build), which broke the bit-exact reproducibility of the training and evaluation sets.
_X264_PARAMS = "mbtree=0"


def encode_clip(clip: np.ndarray, codec: str, quality: int = 0, chroma: str = "420", fps: int = 25, container: str | None = None) -> bytes:
    """Encode a uint8 RGB clip and return the bytes (raw elementary stream unless `container` is given).

    codec: "h264" / "hevc" (CRF = quality, 4:2:0), "jpeg" (mjpeg, qscale = quality),
    "rgb-lossless" (libx264rgb qp 0: exact RGB), "rgb-crf" (libx264rgb at CRF = quality: planar RGB,
    no colour-matrix rounding, used to store HR clips compactly).
    """
    _check_clip(clip)
    t, h, w, _ = clip.shape
    if codec == "h264":
        name, pix, fmt, opts = "libx264", "yuv420p", "h264", {"crf": str(quality), "preset": "medium", "threads": "1", "x264-params": _X264_PARAMS}
    elif codec == "hevc":
        name, pix, fmt, opts = "libx265", "yuv420p", "hevc", {"crf": str(quality), "preset": "superfast", "x265-params": _X265_PARAMS}
    elif codec == "jpeg":
        pix = "yuvj420p" if chroma == "420" else "yuvj444p"
        name, fmt, opts = "mjpeg", "mjpeg", {"qmin": str(quality), "qmax": str(quality), "threads": "1"}
    elif codec == "rgb-lossless":
        name, pix, fmt, opts = "libx264rgb", "rgb24", "h264", {"qp": "0", "preset": "medium", "threads": "1"}
    elif codec == "rgb-crf":
        name, pix, fmt, opts = "libx264rgb", "rgb24", "h264", {"crf": str(quality), "preset": "medium", "threads": "1", "x264-params": _X264_PARAMS}
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if pix.endswith("420p") and (h % 2 or w % 2):
        raise ValueError(f"4:2:0 needs even frame sizes, got {w}x{h}")
    buf = io.BytesIO()
    out = av.open(buf, "w", format=container or fmt)
    try:
        stream = out.add_stream(name, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, pix
        for i, frame in enumerate(clip):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for pkt in stream.encode(vf):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    finally:
        out.close()
    return buf.getvalue()


def decode_clip(data: bytes | np.ndarray, frames: int | None = None) -> np.ndarray:
    """Decode encoded bytes (any container/stream FFmpeg probes) to a uint8 RGB clip (T, H, W, 3)."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if av is None:
        return _decode_clip_opencv(raw, frames)
    src = av.open(io.BytesIO(raw), "r")
    try:
        out = []
        for f in src.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if frames is not None and len(out) >= frames:
                break
    finally:
        src.close()
    if not out:
        raise ValueError("no frames decoded")
    return np.stack(out)


def _decode_clip_opencv(raw: bytes, frames: int | None) -> np.ndarray:
    """The same FFmpeg decode through OpenCV (bit-identical on the stored clips; checked in tests)."""
    import os
    import tempfile

    import cv2

    fd, name = tempfile.mkstemp(suffix=".mkv")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        cap = cv2.VideoCapture(name)
        out = []
        while frames is None or len(out) < frames:
            ok, frame = cap.read()
            if not ok:
                break
            out.append(np.ascontiguousarray(frame[..., ::-1]))
        cap.release()
    finally:
        os.unlink(name)
    if not out:
        raise ValueError("no frames decoded")
    return np.stack(out)


def encode_lossless(clip: np.ndarray) -> bytes:
    """Exact RGB storage (libx264rgb qp 0); decode_clip() returns the identical array."""
    return encode_clip(clip, "rgb-lossless")


def _compress(clip: np.ndarray, p: DegradeParams, container: str | None = None) -> tuple[np.ndarray, bytes | None]:
    """Round-trip through the chosen codec; edge-pads sizes a codec mishandles and crops back.

    4:2:0 needs even sizes. x265 (this build) gave run-to-run different output and heap corruption
    for frames under 64 pixels (one CTU), so HEVC input is padded to at least 64x64.
    """
    if p.codec == "none":
        return clip, None
    t, h, w, _ = clip.shape
    least = 64 if p.codec == "hevc" else 2
    ph, pw = max(h % 2, least - h), max(w % 2, least - w)
    src = np.pad(clip, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else clip
    data = encode_clip(src, p.codec, p.quality, p.chroma, container=container)
    dec = decode_clip(data)
    if dec.shape[0] != t:
        raise RuntimeError(f"codec {p.codec} returned {dec.shape[0]} frames for {t}")
    return np.ascontiguousarray(dec[:, :h, :w]), data


# --------------------------------------------------------------------------------------------
# Public degradations
# --------------------------------------------------------------------------------------------


def _degrade(hr_clip: np.ndarray, p: DegradeParams, rng: np.random.Generator | None, container: str | None = None) -> tuple[np.ndarray, bytes | None]:
    x = _to_tensor(hr_clip)
    if p.blur != "none":
        x = blur_clip(x, gaussian_kernel(p.sigma_x, p.sigma_y, p.theta))
    x = downscale_clip(x, p.scale, p.down, p.antialias)
    if p.noise != "none":
        if rng is None:
            raise ValueError("noise needs a random generator")
        x = _add_noise(x, p, rng)
    lr = _to_uint8(x)
    return _compress(lr, p, container)


def degrade(hr_clip: np.ndarray, params: DegradeParams, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Apply `params` to a uint8 (T, H, W, 3) clip -> uint8 (T, H/scale, W/scale, 3); `seed` drives the noise."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _degrade(hr_clip, params, rng)[0]


def degrade_random(
    hr_clip: np.ndarray, seed: int | np.random.Generator, scale: int = 4, light_share: float | None = None
) -> tuple[np.ndarray, DegradeParams]:
    """Draw parameters from `seed` and degrade; the same seed gives the same LR clip and parameters."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = sample_degrade_params(rng, scale, light_share)
    return degrade(hr_clip, params, rng), params


def degrade_mild_encoded(hr_clip: np.ndarray, container: str | None = None) -> tuple[np.ndarray, bytes]:
    """The evaluation degradation, also returning the H.264 bytes (raw stream, or in `container`, e.g. "mp4")."""
    lr, data = _degrade(hr_clip, MILD, None, container)
    assert data is not None
    return lr, data


def degrade_mild(hr_clip: np.ndarray) -> np.ndarray:
    """Fixed evaluation degradation: Gaussian blur sigma 0.6 (5x5 kernel), antialiased bicubic x4, H.264 CRF 18.

    Deterministic (no noise). HR height and width must be multiples of 4 and give even LR sizes.
    """
    return degrade_mild_encoded(hr_clip)[0]
