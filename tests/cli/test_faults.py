"""Faults during a job: out of memory, a full disk, too little free space, and batches with bad files."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from typer.testing import CliRunner

from tests.cli.conftest import static_clip
from vsrq.cli import app
from vsrq.errors import VsrqError
from vsrq.io import probe
from vsrq.models.loader import load_model
from vsrq.pipeline.upscale import EncodeOptions, UpscaleOptions, upscale_file


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    err = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(err) == 1 and err[0].startswith("vsrq: error: "), err
    return err[0]


def oom_above(module: torch.nn.Module, monkeypatch, max_width: int) -> list[int]:
    """Make the model raise CUDA's out-of-memory error for inputs wider than max_width; log widths seen."""
    seen: list[int] = []
    forward = module.forward

    def limited(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[-1])
        if x.shape[-1] > max_width:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(module, "forward", limited)
    return seen


def test_out_of_memory_retries_the_chunk_with_smaller_tiles(short_bbb, test_model, tmp_path, monkeypatch):
    loaded = load_model(test_model)
    seen = oom_above(loaded.module, monkeypatch, max_width=40)
    warnings: list[str] = []
    out = tmp_path / "out.mp4"
    report = upscale_file(short_bbb, out, loaded, UpscaleOptions(chunk=8, overlap=2, device="cpu"), EncodeOptions(),
                          progress=False, on_warning=warnings.append)
    assert report.frames == 40 and probe(out).width == 256
    assert seen[0] == 64 and max(seen[1:]) <= 40  # the whole frame failed once, then tiles only
    assert len(warnings) == 1 and "out of memory" in warnings[0] and "--tile 32" in warnings[0]


def test_out_of_memory_at_the_smallest_tile_is_one_clear_error(short_bbb, test_model, tmp_path, monkeypatch):
    loaded = load_model(test_model)
    oom_above(loaded.module, monkeypatch, max_width=0)
    out = tmp_path / "out.mp4"
    with pytest.raises(VsrqError, match="out of memory on cpu even with --tile 32"):
        upscale_file(short_bbb, out, loaded, UpscaleOptions(chunk=8, overlap=2, device="cpu"), EncodeOptions(),
                     progress=False, on_warning=lambda m: None)
    assert not out.exists()


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))


def test_full_disk_ends_cleanly_and_can_resume(short_bbb, test_model, tmp_path):
    """A size-limited process stands in for a full disk: the first segment that grows too big fails."""
    out = tmp_path / "out.mp4"
    args = [sys.executable, "-m", "vsrq", "upscale", str(short_bbb), str(out), "--chunk", "8", "--overlap", "2",
            "--segment-frames", "8", "--quiet", "--crf", "0", "--preset", "ultrafast"]
    full = subprocess.run(args, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert full.returncode == 1, full.stderr
    err = full.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vsrq: error: ") and "File too large" in err[0], err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_file()]  # no stray temporaries
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)  # space freed: go on
    assert done.returncode == 0, done.stderr
    assert probe(out).num_frames == 40


def test_too_little_free_space_is_refused_before_any_work(short_bbb, test_model, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "out.mp4"
    line = one_error_line(run("upscale", str(short_bbb), str(out), "-q"))
    assert "not enough free space" in line and "--no-space-check" in line
    assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))
    assert run("upscale", str(short_bbb), str(out), "-q", "--no-space-check").exit_code == 0


def test_batch_keeps_going_past_a_bad_file_and_skips_finished_ones(short_bbb, test_model, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(short_bbb, src / "a.mp4")
    (src / "b.mp4").write_text("not a video\n" * 20)
    static_clip(src / "c.avi", frames=6)
    (src / "notes.txt").write_text("ignored: not a video suffix")
    first = run("upscale", str(src), str(dst), "-q")
    assert first.exit_code == 1
    lines = first.stderr.strip().splitlines()
    assert any(line.startswith("vsrq: error: ") and "b.mp4" in line for line in lines[:-1]), lines
    assert "1 failed" in lines[-1] and "2 upscaled" in lines[-1] and "b.mp4" in lines[-1]
    assert sorted(p.name for p in dst.iterdir()) == ["a.mp4", "c.mkv"]  # .avi becomes .mkv
    assert probe(dst / "a.mp4").num_frames == 40
    second = run("upscale", str(src), str(dst), "-q")
    assert second.exit_code == 1 and "0 upscaled, 2 skipped" in second.stderr.strip().splitlines()[-1]


def test_batch_folder_without_videos(test_model, tmp_path):
    (tmp_path / "in").mkdir()
    assert "holds no video files" in one_error_line(run("upscale", str(tmp_path / "in"), str(tmp_path / "out")))
