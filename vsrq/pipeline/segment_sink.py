"""Encode finished frames into journaled segments on a thread of their own.

Why a thread: at 1080p the encoder (x264 `medium`) costs more host time per frame than the
model costs GPU time (docs/PERF.md, GPU run 3), and PyAV releases the GIL while it converts and
encodes, so encoding chunk n while the GPU computes chunk n+1 overlaps the two instead of adding
them. The thread owns the open segment writer and the journal commits, in the order the frames
were sent; the job thread only decides where segments end. Errors on the thread are re-raised
in the job thread at its next call; `abort()` (any failure, Ctrl-C) stops the thread and throws
away the segment being written, so the journal still lists only complete segments.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from vsrq.io import VideoWriter
from vsrq.pipeline.faults import Fault
from vsrq.pipeline.journal import Journal

_FRAME, _CLOSE, _STOP = "frame", "close", "stop"
_QUEUE_ITEMS = 24  # frames in flight: bounds host memory (24 x 6 MB at 1080p 8-bit)


class SegmentSink:
    """Frames in (`write`), segments out (`close_segment`), all encoded on one worker thread."""

    def __init__(self, journal: Journal, open_writer: Callable[[str], VideoWriter], fault: Fault,
                 on_written: Callable[[int], None]) -> None:
        self.journal, self._open_writer, self.fault, self._on_written = journal, open_writer, fault, on_written
        self.written = journal.frames_done  # frames the worker has encoded (absolute index of the next)
        self._writer: VideoWriter | None = None
        self._segment_start = self.written
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._aborting = threading.Event()
        self._thread = threading.Thread(target=self._work, name="vsrq-encode", daemon=True)
        self._thread.start()

    # -- job thread -----------------------------------------------------------------------------

    def write(self, image: np.ndarray, pts: int) -> None:
        self._put((_FRAME, image, pts))

    def close_segment(self, chunks_done: int) -> None:
        """End the current segment after the frames sent so far (no-op if none is open then)."""
        self._put((_CLOSE, chunks_done))

    def finish(self) -> None:
        """Wait until every frame is encoded and every segment committed; raise the worker's error."""
        self._put((_STOP,))
        self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Stop now: drop queued frames, discard the open segment. Safe to call after finish()."""
        self._aborting.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait((_STOP,))
            except queue.Full:
                pass
            self._thread.join(timeout=0.1)

    def _put(self, item: tuple) -> None:
        while True:
            self._raise_error()
            if not self._thread.is_alive():
                raise RuntimeError("the encoding thread has stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- worker thread --------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while not self._aborting.is_set():
                item = self._queue.get()
                if item[0] == _STOP:
                    break
                if item[0] == _FRAME:
                    self._encode(item[1], item[2])
                else:
                    self._commit(item[1])
        except BaseException as err:  # handed to the job thread, which reports it
            self._error = err
        finally:
            if self._writer is not None:
                self._writer.abort()
                self._writer = None

    def _encode(self, image: np.ndarray, pts: int) -> None:
        if self._writer is None:
            self._segment_start = self.written
            self._writer = self._open_writer(self.journal.next_segment_path())
        self._writer.write(image, pts)
        self.written += 1
        self._on_written(self.written)
        self.fault.after_frame(self.written)

    def _commit(self, chunks_done: int) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        self.journal.commit(writer.target, self._segment_start, self.written - self._segment_start, chunks_done,
                            writer.packet_log)
        self.fault.after_segment(len(self.journal.state.segments))
