"""Which video encoders vsrq offers, and how its one quality/speed vocabulary maps onto each.

Users say `--crf 18 --preset medium` once; x264/x265, SVT-AV1, NVENC and FFV1 each spell those
differently (or ignore them), so the translation lives here rather than in the writer.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction

import av

from vsrq.errors import OutputError

SUPPORTED_ENCODERS = ("libx264", "libx265", "libsvtav1", "ffv1", "h264_nvenc", "hevc_nvenc")
HARDWARE_ENCODERS = frozenset({"h264_nvenc", "hevc_nvenc"})

_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                 "veryslow", "placebo")
# x264 preset name -> SVT-AV1 preset number (0 slowest .. 13 fastest), roughly equal effort.
_SVTAV1_PRESETS = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 6,
                   "slow": 5, "slower": 4, "veryslow": 3, "placebo": 2}
# x264 preset name -> NVENC p1 (fastest) .. p7 (best).
_NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                  "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}
_TEN_BIT_FORMATS = ("yuv420p10le", "p010le")


@dataclass(frozen=True)
class EncoderSettings:
    """What the writer hands to PyAV: codec options and any codec-context attributes."""

    options: dict[str, str]
    bit_rate: int | None = None


@functools.lru_cache(maxsize=None)
def _hardware_encoder_works(name: str) -> bool:
    """NVENC is compiled into FFmpeg everywhere but needs a GPU and driver: try to open it."""
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
        return True
    except Exception:  # any failure (no device, no driver, no libcuda) means "not available"
        return False


@functools.lru_cache(maxsize=None)
def _encoder_exists(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return name not in HARDWARE_ENCODERS or _hardware_encoder_works(name)


def available_video_encoders() -> list[str]:
    """Encoders vsrq supports that work on this machine (NVENC only with a usable GPU)."""
    return [name for name in SUPPORTED_ENCODERS if _encoder_exists(name)]


def check_encoder(name: str) -> None:
    """Raise OutputError naming the choices when `name` is unknown or unusable here."""
    if name in SUPPORTED_ENCODERS and _encoder_exists(name):
        return
    choices = ", ".join(available_video_encoders())
    why = "is not available on this machine" if name in SUPPORTED_ENCODERS else "is not a supported video codec"
    raise OutputError(f"codec {name!r} {why}; choose one of: {choices}")


def supported_pix_fmts(codec: str) -> list[str]:
    """Pixel formats the encoder accepts (empty when FFmpeg does not say)."""
    return [f.name for f in (av.Codec(codec, "w").video_formats or ())]


def default_pix_fmt(codec: str, source_bit_depth: int) -> str:
    """yuv420p for 8-bit sources; a 10-bit 4:2:0 format for deeper ones when the codec has one."""
    formats = supported_pix_fmts(codec)
    if source_bit_depth > 8:
        for fmt in _TEN_BIT_FORMATS:
            if fmt in formats:
                return fmt
    return "yuv420p" if "yuv420p" in formats or not formats else formats[0]


def check_pix_fmt(codec: str, pix_fmt: str) -> None:
    """OutputError naming the accepted formats when the codec cannot take `pix_fmt`."""
    formats = supported_pix_fmts(codec)
    if formats and pix_fmt not in formats:
        raise OutputError(f"codec {codec!r} cannot encode pix_fmt {pix_fmt!r}; it accepts: {', '.join(formats)}")


def encoder_settings(codec: str, crf: int | None, preset: str | None) -> EncoderSettings:
    """Translate crf/preset into the named codec's own options (FFV1 is lossless: it ignores both)."""
    if codec in ("libx264", "libx265"):
        options: dict[str, str] = {}
        if crf is not None:
            options["crf"] = str(crf)
        if preset is not None:
            if preset not in _X26X_PRESETS:
                raise OutputError(f"preset {preset!r} is not valid for {codec}; use one of: {', '.join(_X26X_PRESETS)}")
            options["preset"] = preset
        if codec == "libx265":
            options["x265-params"] = "log-level=error"  # x265 prints banners to stderr otherwise
        return EncoderSettings(options)
    if codec == "libsvtav1":
        # SVT-AV1 prints a banner per encoder unless told otherwise; keep a user's own SVT_LOG.
        os.environ.setdefault("SVT_LOG", "1")
        options = {}
        if crf is not None:
            options["crf"] = str(crf)
        if preset is not None:
            options["preset"] = str(_svtav1_preset(preset))
        return EncoderSettings(options)
    if codec in HARDWARE_ENCODERS:
        options = {"rc": "vbr"}
        if crf is not None:
            options["cq"] = str(crf)  # constant-quality target, NVENC's closest match to crf
        if preset is not None:
            options["preset"] = _nvenc_preset(preset)
        return EncoderSettings(options, bit_rate=0)  # 0 lets cq alone decide the bit rate
    if codec == "ffv1":
        return EncoderSettings({"level": "3", "slicecrc": "1"})  # version 3: multithreaded, checksummed
    raise OutputError(f"codec {codec!r} is not a supported video codec")


def _svtav1_preset(preset: str) -> int:
    if preset.lstrip("-").isdigit():
        return int(preset)
    if preset not in _SVTAV1_PRESETS:
        raise OutputError(f"preset {preset!r} is not valid for libsvtav1; use a number -1..13 or one of: "
                          f"{', '.join(_SVTAV1_PRESETS)}")
    return _SVTAV1_PRESETS[preset]


def _nvenc_preset(preset: str) -> str:
    if preset in {f"p{i}" for i in range(1, 8)}:
        return preset
    if preset not in _NVENC_PRESETS:
        raise OutputError(f"preset {preset!r} is not valid for NVENC; use p1..p7 or one of: {', '.join(_NVENC_PRESETS)}")
    return _NVENC_PRESETS[preset]
