"""Colour and pixel-format facts shared by the reader and the writer.

Kept in one place so that decoding (YUV -> RGB) and encoding (RGB -> YUV) use the same
matrix and range rules; a mismatch between the two would shift colours on every job.
"""

from __future__ import annotations

import av
from av.video.reformatter import Colorspace

# FFmpeg enum values (AVColorRange / AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic).
RANGE_UNSPECIFIED = 0
RANGE_LIMITED = 1  # "tv" / MPEG
RANGE_FULL = 2  # "pc" / JPEG
SPACE_RGB = 0
SPACE_BT709 = 1
SPACE_UNSPECIFIED = 2
SPACE_SMPTE170M = 6
UNSPECIFIED = 2  # primaries and transfer use the same "unspecified" value

# AVColorSpace -> swscale matrix. swscale only knows these few matrices; FFmpeg's own
# numbering differs from swscale's, so passing AVColorSpace values through would be wrong.
_SWS_MATRIX = {
    1: Colorspace.ITU709,
    4: Colorspace.FCC,
    5: Colorspace.ITU601,  # BT.470BG
    6: Colorspace.ITU601,  # SMPTE 170M
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,  # BT.2020 non-constant luminance
    10: Colorspace.BT2020,  # BT.2020 constant luminance (closest available)
}


def optional_tag(value: int | None, unspecified: int) -> int | None:
    """Map FFmpeg's "unspecified" enum value to None so callers can test `is None`."""
    if value is None or int(value) == unspecified:
        return None
    return int(value)


def guessed_colorspace(height: int) -> int:
    """The matrix players assume for untagged video: BT.709 for HD and up, BT.601 below."""
    return SPACE_BT709 if height >= 720 else SPACE_SMPTE170M


def sws_matrix(colorspace: int | None, height: int) -> Colorspace | None:
    """swscale matrix for a YUV stream; untagged streams get the same guess players make."""
    if colorspace is None:
        colorspace = guessed_colorspace(height)
    return _SWS_MATRIX.get(colorspace)


def bit_depth(pix_fmt: str) -> int:
    """Bits per sample of the deepest component (10 for yuv420p10le and p010le)."""
    fmt = av.VideoFormat(pix_fmt)
    return max((c.bits for c in fmt.components), default=8)


def is_rgb(pix_fmt: str) -> bool:
    """RGB-family formats carry no YUV matrix and are always full range."""
    return bool(av.VideoFormat(pix_fmt).is_rgb)


def needs_even_size(pix_fmt: str) -> tuple[bool, bool]:
    """(even width needed, even height needed) for chroma-subsampled formats like yuv420p."""
    fmt = av.VideoFormat(pix_fmt)
    if fmt.is_rgb or len(fmt.components) < 3:
        return False, False
    return fmt.chroma_width(2) < 2, fmt.chroma_height(2) < 2
