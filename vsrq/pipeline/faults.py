"""Fault injection for the resume tests: send this process a signal at a chosen point of a job.

Why in the product and not only in tests: SIGKILL and a real SIGINT must hit the real process
at a reproducible point (after N output frames, or after N segments) for the kill-and-resume
tests to compare frames exactly; polling from outside would make them timing-dependent.
Set VSRQ_FAULT to `SIGNAL@frames=N`, `SIGNAL@segments=N` or `SIGNAL@complete=1` (every frame
saved, the final join not yet done); SIGNAL is KILL, INT or TERM.
Unset, it costs one comparison per frame.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

ENV = "VSRQ_FAULT"


@dataclass
class Fault:
    sig: int | None = None
    point: str = ""
    count: int = 0
    fired: bool = False

    def _maybe_fire(self, point: str, count: int) -> None:
        if self.sig is not None and not self.fired and point == self.point and count >= self.count:
            self.fired = True
            os.kill(os.getpid(), self.sig)

    def after_frame(self, frames: int) -> None:
        self._maybe_fire("frames", frames)

    def after_segment(self, segments: int) -> None:
        self._maybe_fire("segments", segments)

    def before_join(self) -> None:
        self._maybe_fire("complete", 1)


def planned() -> Fault:
    """The fault asked for in the environment, or one that never fires."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return Fault()
    try:
        name, where = spec.split("@", 1)
        point, count = where.split("=", 1)
        sig = getattr(signal, "SIG" + name.upper().removeprefix("SIG"))
        if point not in ("frames", "segments", "complete"):
            raise ValueError(point)
        return Fault(int(sig), point, int(count))
    except (ValueError, AttributeError):
        raise ValueError(f"{ENV}={spec!r}: expected SIGNAL@frames=N, SIGNAL@segments=N or SIGNAL@complete=1") from None
