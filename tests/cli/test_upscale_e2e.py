"""End to end through the real command: a real clip with audio, x4, checked like a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from tests.cli.conftest import static_clip
from vsrq.io import VideoReader, probe


def run_vsrq(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    import signal

    env = dict(os.environ, **(env_extra or {}))
    # SIGINT as in a terminal: a shell running the tests in the background (`pytest &`) passes SIGINT
    # on ignored, and Python then never raises KeyboardInterrupt, so the Ctrl-C tests would see exit 0
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.run([sys.executable, "-m", "vsrq", *args], capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=reset)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return [bytes(p) for p in c.demux(stream) if p.size]


def test_upscale_real_clip_x4_keeps_frames_timing_and_audio(small_bbb, test_model, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_vsrq("upscale", str(small_bbb), str(out), "--chunk", "8", "--overlap", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    src, dst = probe(small_bbb), probe(out)
    assert (dst.width, dst.height) == (4 * src.width, 4 * src.height) == (256, 144)
    with VideoReader(small_bbb) as a, VideoReader(out) as b:
        ta = [f.time for f in a.frames()]
        frames_b = list(b.frames())
    assert len(frames_b) == len(ta) == 132
    np.testing.assert_allclose([f.time for f in frames_b], ta, atol=1e-3)
    assert abs(dst.duration - src.duration) < 0.05
    assert dst.fps == src.fps
    assert audio_packets(out) == audio_packets(small_bbb)  # bit-identical audio
    assert frames_b[60].image.std() > 5  # a real picture, not a blank frame
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_static_video_has_no_seam_at_chunk_borders(test_model, tmp_path):
    """A still picture upscales to frames that don't jump where one chunk hands over to the next."""
    src = static_clip(tmp_path / "static.mkv", frames=20)
    out = tmp_path / "static_x4.mkv"
    result = run_vsrq("upscale", str(src), str(out), "--chunk", "6", "--overlap", "2", "--codec", "ffv1", "--pix-fmt", "yuv444p", "--quiet")
    assert result.returncode == 0, result.stderr
    with VideoReader(out) as r:
        frames = np.stack([f.image.astype(np.float32) for f in r.frames()])
    assert len(frames) == 20
    jumps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # mean change between neighbours
    borders = [4, 8, 12, 16]  # chunks start at 0, 4, 8, 12, 16 (stride chunk - overlap)
    # in 8-bit levels: what is left is the colour conversion's rounding, far below a visible step
    assert jumps.max() < 0.25, jumps
    assert max(jumps[b - 1] for b in borders) < 0.25, jumps
