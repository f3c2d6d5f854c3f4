"""The work directory of one upscale job: finished video segments and a journal that lists them.

Why: a job on a two-hour file must survive Ctrl-C, a kill or a power cut. Segments are published
by rename and the journal is rewritten by rename after each one, so after any crash the journal
names only complete segments; `--resume` verifies them (size and sha256), deletes whatever else
is in the directory (a half-written segment), and continues after the last one. The directory
sits beside the output (`.NAME.vsrq-job/`), on the same filesystem, and is removed once the
output is published. A lock file keeps two processes from writing the same job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from vsrq.errors import OutputError
from vsrq.io.segments import SEGMENT_SUFFIX, Segment
from vsrq.models.registry import sha256_file

JOURNAL = "journal.json"
LOCK = "lock"
VERSION = 1


@dataclass(frozen=True)
class SegmentRecord:
    """One complete segment: which output frames it holds and how to check and join it."""

    file: str
    first_frame: int
    frames: int
    chunks_done: int  # temporal chunks fully processed when this segment was closed
    bytes: int
    sha256: str
    packets: list[list[int | None]]  # (pts, dts, duration) per packet, in the source's time base


@dataclass
class JobState:
    version: int
    target: str
    fingerprint: dict[str, Any]
    time_base: str
    segments: list[SegmentRecord] = field(default_factory=list)
    complete: bool = False  # every frame is in a segment; only the final join is left


def work_dir_for(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.vsrq-job")


def _write_atomically(path: str, text: str) -> None:
    """Write, fsync and rename, so the journal on disk is always a complete old or new version."""
    temp = path + ".tmp"
    with open(temp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class Journal:
    """Open with :meth:`open`; use as a context manager to hold the job's lock."""

    def __init__(self, work_dir: str, state: JobState) -> None:
        self.work_dir = work_dir
        self.state = state
        self._lock_fd: int | None = None

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, target: str, fingerprint: dict[str, Any], time_base: Fraction, *, resume: bool,
             overwrite: bool) -> "Journal":
        """The job for `target`: resumed (verified), started afresh, or refused with the reason."""
        work_dir = work_dir_for(target)
        fresh = JobState(VERSION, target, fingerprint, str(time_base))
        old = cls._load(work_dir) if os.path.isdir(work_dir) else None
        if old is not None and old.segments and not resume and not overwrite:
            done = sum(s.frames for s in old.segments)
            raise OutputError(f"{target}: an unfinished job is saved in {work_dir} ({done} frames done); "
                              "pass --resume to continue it or --overwrite to start over")
        if old is not None and resume:
            changed = _differences(old.fingerprint, fingerprint)
            if changed:
                raise OutputError(f"{target}: cannot resume: the saved job used other {', '.join(changed)}; "
                                  "use the same input and options, or --overwrite to start over")
            fresh.segments, fresh.complete = old.segments, old.complete
        journal = cls(work_dir, fresh)
        journal._lock()
        try:
            if not (old is not None and resume):
                journal._clear()
            journal._verify_and_tidy()
            journal._save()
        except BaseException:
            journal.close()
            raise
        return journal

    @staticmethod
    def _load(work_dir: str) -> JobState | None:
        """The saved state, or None when there is none or it cannot be read (then nothing is kept)."""
        try:
            with open(os.path.join(work_dir, JOURNAL)) as f:
                raw = json.load(f)
            if raw.get("version") != VERSION:
                return None
            segments = [SegmentRecord(**s) for s in raw["segments"]]
            return JobState(raw["version"], raw["target"], raw["fingerprint"], raw["time_base"], segments,
                            bool(raw.get("complete", False)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _lock(self) -> None:
        try:
            os.makedirs(self.work_dir, exist_ok=True)
            fd = os.open(os.path.join(self.work_dir, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise OutputError(f"{self.state.target}: cannot create the work directory {self.work_dir} "
                              f"({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"{self.state.target}: another vsrq process is writing this output") from None
        self._lock_fd = fd

    def _clear(self) -> None:
        self.state.segments = []
        self.state.complete = False
        self._remove_unlisted()

    def _remove_unlisted(self) -> None:
        keep = {JOURNAL, LOCK} | {s.file for s in self.state.segments}
        for name in os.listdir(self.work_dir):
            if name not in keep:
                path = os.path.join(self.work_dir, name)
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def _verify_and_tidy(self) -> None:
        """Keep the longest run of listed segments that are intact; drop everything else."""
        good: list[SegmentRecord] = []
        for seg in self.state.segments:
            path = os.path.join(self.work_dir, seg.file)
            if not os.path.isfile(path) or os.path.getsize(path) != seg.bytes or sha256_file(Path(path)) != seg.sha256:
                break
            good.append(seg)
        if len(good) < len(self.state.segments):
            self.state.complete = False
        self.state.segments = good
        self._remove_unlisted()

    # -- progress -------------------------------------------------------------------------------

    @property
    def frames_done(self) -> int:
        return sum(s.frames for s in self.state.segments)

    @property
    def chunks_done(self) -> int:
        return self.state.segments[-1].chunks_done if self.state.segments else 0

    @property
    def complete(self) -> bool:
        return self.state.complete

    def mark_complete(self) -> None:
        self.state.complete = True
        self._save()

    def next_segment_path(self) -> str:
        return os.path.join(self.work_dir, f"seg-{len(self.state.segments):06d}{SEGMENT_SUFFIX}")

    def commit(self, path: str, first_frame: int, frames: int, chunks_done: int,
               packets: list[tuple[int | None, int | None, int | None]]) -> None:
        """Record a finished, published segment; after this returns a crash keeps it."""
        record = SegmentRecord(os.path.basename(path), first_frame, frames, chunks_done, os.path.getsize(path),
                               sha256_file(Path(path)), [list(p) for p in packets])
        self.state.segments.append(record)
        self._save()

    def _save(self) -> None:
        try:
            _write_atomically(os.path.join(self.work_dir, JOURNAL), json.dumps(asdict(self.state), indent=1))
        except OSError as err:
            raise OutputError(f"{self.state.target}: cannot write the job journal in {self.work_dir} "
                              f"({err.strerror or err})") from None

    def segments(self) -> list[Segment]:
        tb = Fraction(self.state.time_base)
        return [Segment(os.path.join(self.work_dir, s.file), [tuple(p) for p in s.packets], tb)  # type: ignore[misc]
                for s in self.state.segments]

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        """The output is published: the work directory has no further use."""
        self.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
