"""Triton availability and device facts shared by the kernel wrappers.

Kept import-safe: nothing here imports triton at module import, so CPU-only installs
(without triton) can still use the reference path.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the triton package can be imported (it is optional: the `gpu` extra)."""
    try:
        import triton.language as tl  # also fails on some broken installs
    except Exception:  # absent or broken: the reference path is used
        return False
    return tl is not None


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def can_run_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can consume tensor ``t`` in this process."""
    if not triton_available():
        return False
    return t.is_cuda or (interpreting() and t.device.type == "cpu")


@lru_cache(maxsize=8)
def capability(device_index: int) -> tuple[int, int]:
    """CUDA compute capability; (0, 0) when there is no CUDA device (interpreter)."""
    if not torch.cuda.is_available():
        return (0, 0)
    return torch.cuda.get_device_capability(device_index)


@lru_cache(maxsize=8)
def num_sms(device_index: int) -> int:
    """Multiprocessor count (persistent grids size themselves by it)."""
    if not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@lru_cache(maxsize=8)
def max_shared_memory(device_index: int) -> int:
    """Opt-in shared memory per block in bytes (used to prune GEMM configs)."""
    if not torch.cuda.is_available():
        return 1 << 30
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def device_index(t: torch.Tensor) -> int:
    return t.device.index if (t.is_cuda and t.device.index is not None) else (torch.cuda.current_device() if t.is_cuda else 0)


# One-time launch-config tuning shared by the kernel wrappers. Why home-made (not
# triton.autotune): the wrappers derive constexprs from the data (chunk widths, group
# sizes, descriptors) before the launch, so they time their own launch closures. Each
# candidate is timed once per key with do_bench (median) and the winner cached for the
# process; call it outside CUDA-graph capture.
_TUNED: dict[tuple, object] = {}


def _tuning_file() -> Path:
    """Per GPU model and Triton version: a choice timed on one does not hold on another."""
    from vsrq.cache import cache_dir

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    safe = "".join(c if c.isalnum() else "-" for c in f"{name}-triton{triton_version()}")
    return cache_dir() / "tuning" / f"{safe}.json"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


@lru_cache(maxsize=1)
def _disk_choices() -> dict[str, object]:
    try:
        return json.loads(_tuning_file().read_text())
    except (OSError, ValueError):
        return {}


def _remember(key: tuple, choice: object) -> None:
    """Add a choice to the tuning file (written whole, by rename; losing it only costs time)."""
    choices = _disk_choices()
    choices[repr(key)] = choice
    path = _tuning_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _as_json(c: object) -> object:
    return json.loads(json.dumps(c))  # tuples become lists, as they come back from the file


_ANNOUNCED = False


def _announce_tuning() -> None:
    """Say once per process why the first GPU run pauses: the tuner compiles and times every
    candidate of every new shape (about a minute for the default model on an H100, docs/PERF.md,
    GPU run 12); later runs read the choices back."""
    global _ANNOUNCED
    if _ANNOUNCED or interpreting():
        return
    _ANNOUNCED = True
    logging.getLogger("vsrq.kernels").info(
        "timing GPU kernel launch configs for new shapes (first run on this GPU: up to a minute or two; "
        "remembered in %s)", _tuning_file().parent)


def tune_once(key: tuple, candidates: Sequence[T] | Callable[[], Sequence[T]], launch: Callable[[T], None]) -> T:
    """The fastest of ``candidates`` for ``key``: timed on the first call, cached after, in
    the process and on disk (``vsrq.cache``), so later runs on the same GPU skip the timing.
    ``candidates`` may be a function making the list: it then runs only when the key is not in
    the process's cache yet (the list costs host time on every layer call otherwise).

    ``launch(c)`` runs the kernel with candidate ``c`` on the real operands (outputs are
    overwritten, so the caller's final launch must come after). Candidates that fail to
    compile or launch are skipped; a single candidate is returned untimed. A remembered
    choice that is no longer among the candidates is timed again.
    """
    if key in _TUNED:
        return _TUNED[key]  # type: ignore[return-value]
    if callable(candidates):
        candidates = candidates()
    remembered = _disk_choices().get(repr(key)) if not interpreting() else None
    for cand in candidates:
        if remembered is not None and _as_json(cand) == remembered:
            _TUNED[key] = cand
            return cand
    if not candidates:
        raise ValueError(f"no launch configs to tune for {key}")
    if len(candidates) == 1:
        _TUNED[key] = candidates[0]
        return candidates[0]
    from triton.testing import do_bench

    _announce_tuning()
    best, best_t = None, float("inf")
    start, failed = time.perf_counter(), 0
    for cand in candidates:
        try:
            t = do_bench(lambda: launch(cand), warmup=5, rep=20, return_mode="median")
        except Exception:  # does not compile / fit on this device: skip it
            failed += 1
            continue
        if t < best_t:
            best, best_t = cand, t
    if best is None:
        raise RuntimeError(f"no launch config could run for {key}")
    logging.getLogger("vsrq.kernels").debug(
        "tuned %s in %.1f s: %d candidates (%d failed), chose %s at %.4f ms",
        key, time.perf_counter() - start, len(candidates), failed, best, best_t)
    _TUNED[key] = best
    if not interpreting():
        _remember(key, _as_json(best))
    return best
