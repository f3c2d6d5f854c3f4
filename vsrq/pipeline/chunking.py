"""Temporal chunks with overlap, and the linear cross-fade that hides the seams between them.

A video streams through in chunks of `size` frames; consecutive chunks share `overlap` frames.
The shared frames are computed twice (with different temporal context) and blended with weights
that ramp linearly from the earlier chunk to the later one, so no frame jumps at a chunk border.
Only one chunk of input and `overlap` frames of output are held at a time: memory is constant
whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


def check_chunking(size: int, overlap: int) -> None:
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    if overlap < 0 or 2 * overlap > size:
        raise ValueError(f"overlap must be between 0 and half the chunk size ({size // 2}), got {overlap}")


def iter_chunks(items: Iterable[T], size: int, overlap: int) -> Iterator[tuple[int, list[T]]]:
    """Yield (start index, items) windows of `size` stepping by `size - overlap`.

    The last window may be shorter; a window that would hold only frames already covered by
    the previous one is never yielded.
    """
    check_chunking(size, overlap)
    buf: list[T] = []
    start = 0
    fresh = 0  # items in buf not covered by a previous window
    for item in items:
        buf.append(item)
        fresh += 1
        if len(buf) == size:
            yield start, buf
            buf = buf[size - overlap:] if overlap else []
            start += size - overlap
            fresh = 0
    if fresh:
        yield start, buf


def crossfade_weights(n: int) -> torch.Tensor:
    """Weights of the later chunk over `n` shared frames: (1..n)/(n+1), so neither side ever gets 0 or 1."""
    return torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)


class CrossFader:
    """Receives chunk outputs in order and returns each frame once it is final."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self._pending: torch.Tensor | None = None  # (n, ...) last frames of the previous chunk
        self._pending_start = 0

    def push(self, start: int, frames: torch.Tensor) -> torch.Tensor:
        """Add a chunk's outputs (T, ...) starting at frame `start`; returns the frames now final."""
        if self._pending is not None:
            shared = self._pending_start + len(self._pending) - start
            if shared < 0 or shared > len(frames):
                raise ValueError("chunks must arrive in order and overlap the previous one by at most its length")
            done = self._pending[: len(self._pending) - shared]
            w = crossfade_weights(shared).to(frames).view(-1, *([1] * (frames.dim() - 1)))
            blended = (1 - w) * self._pending[len(self._pending) - shared:] + w * frames[:shared]
            frames = torch.cat([blended, frames[shared:]])
        else:
            done = frames[:0]
        keep = min(self.overlap, len(frames))
        self._pending = frames[len(frames) - keep:]
        self._pending_start = start + len(frames) - keep
        return torch.cat([done, frames[: len(frames) - keep]])

    def flush(self) -> torch.Tensor:
        """The frames still held back (the end of the video)."""
        out = self._pending
        self._pending = None
        return out if out is not None else torch.empty(0)
