"""Kill a job (SIGKILL, SIGINT, SIGTERM) mid-way, resume it, and get exactly the frames of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_upscale_e2e import audio_packets, run_vsrq
from vsrq.io import VideoReader
from vsrq.pipeline.journal import work_dir_for

ARGS = ("--chunk", "8", "--overlap", "2", "--segment-frames", "8", "--quiet")


def decoded(path: Path) -> tuple[np.ndarray, list[int | None]]:
    with VideoReader(path) as r:
        frames = list(r.frames())
    return np.stack([f.image for f in frames]), [f.pts for f in frames]


@pytest.fixture
def reference(short_bbb, test_model, tmp_path) -> Path:
    out = tmp_path / "reference.mp4"
    result = run_vsrq("upscale", str(short_bbb), str(out), *ARGS)
    assert result.returncode == 0, result.stderr
    return out


def journal_of(out: Path) -> dict:
    with open(os.path.join(work_dir_for(str(out)), "journal.json")) as f:
        return json.load(f)


def assert_same_video(a: Path, b: Path) -> None:
    fa, pa = decoded(a)
    fb, pb = decoded(b)
    assert fa.shape == fb.shape == (40, 144, 256, 3)
    assert pa == pb
    assert np.array_equal(fa, fb)
    assert audio_packets(a) == audio_packets(b)


@pytest.mark.parametrize("fault, code", [("KILL@frames=21", -signal.SIGKILL), ("INT@frames=13", 130),
                                         ("TERM@segments=2", 130), ("KILL@complete=1", -signal.SIGKILL)])
def test_interrupted_job_resumes_to_the_same_frames(short_bbb, reference, tmp_path, fault, code):
    out = tmp_path / "out.mp4"
    killed = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, env_extra={"VSRQ_FAULT": fault})
    assert killed.returncode == code, killed.stderr
    assert not out.exists()  # nothing that looks finished
    assert "Traceback" not in killed.stderr
    if code == 130:
        err = killed.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vsrq: error: interrupted;") and "--resume" in err[0], err
    saved = journal_of(out)["segments"]
    assert saved, "some segments must have been saved before the fault"
    # without --resume the saved work is neither lost nor silently overwritten
    again = run_vsrq("upscale", str(short_bbb), str(out), *ARGS)
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_video(reference, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # work dir and temps gone


def test_resume_refuses_other_options(short_bbb, test_model, tmp_path):
    out = tmp_path / "out.mp4"
    killed = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, env_extra={"VSRQ_FAULT": "KILL@segments=1"})
    assert killed.returncode == -signal.SIGKILL
    other = run_vsrq("upscale", str(short_bbb), str(out), "--chunk", "6", "--overlap", "2", "--segment-frames", "8", "--quiet", "--resume")
    assert other.returncode != 0
    assert "cannot resume" in other.stderr and "chunking" in other.stderr and "Traceback" not in other.stderr
    fresh = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, "--overwrite")  # start over on request
    assert fresh.returncode == 0, fresh.stderr
    assert len(decoded(out)[0]) == 40


def test_damaged_segment_is_redone(short_bbb, reference, tmp_path):
    out = tmp_path / "out.mp4"
    killed = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, env_extra={"VSRQ_FAULT": "KILL@segments=3"})
    assert killed.returncode == -signal.SIGKILL
    work = Path(work_dir_for(str(out)))
    second = work / journal_of(out)["segments"][1]["file"]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF
    second.write_bytes(bytes(data))  # a bit flip: the sha256 no longer matches
    (work / ".seg-000003.vsrq-video.nut").write_bytes(b"half a segment")  # as a kill mid-write leaves
    resumed = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_video(reference, out)


def test_resume_without_a_saved_job_just_runs(short_bbb, reference, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_vsrq("upscale", str(short_bbb), str(out), *ARGS, "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_video(reference, out)
