"""Every bad input: one clear line on stderr, a non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsrq.cli import app


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result, match: str, out_dir: Path) -> None:
    assert result.exit_code != 0
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vsrq: error: ")
    assert match.lower() in err.lower(), err
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".") or p.name.startswith("out")]
    assert not leftovers, leftovers


@pytest.fixture
def clip(media, tmp_path) -> Path:
    src = tmp_path / "in.mp4"
    shutil.copy(media["tagged"].path, src)
    return src


def test_non_video(test_model, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    assert_clean_failure(run("upscale", str(bad), str(tmp_path / "out.mp4")), "not a", tmp_path)


def test_truncated(test_model, bbb_path, tmp_path):
    data = Path(bbb_path).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_failure(run("upscale", str(cut), str(tmp_path / "out.mp4"), "-q"), "truncated", tmp_path)


def test_no_video_stream(test_model, audio_only, tmp_path):
    assert_clean_failure(run("upscale", audio_only, str(tmp_path / "out.mp4"), "-q"), "no video stream", tmp_path)


def test_zero_frames(test_model, zero_frames, tmp_path):
    assert_clean_failure(run("upscale", zero_frames, str(tmp_path / "out.mkv"), "-q"), "no video frames", tmp_path)


def test_output_is_input(test_model, clip, tmp_path):
    before = clip.read_bytes()
    assert_clean_failure(run("upscale", str(clip), str(clip), "--overwrite"), "is the input", tmp_path)
    assert clip.read_bytes() == before


def test_existing_output_without_overwrite(test_model, clip, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    result = run("upscale", str(clip), str(out))
    assert result.exit_code != 0 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"


def test_unwritable_directory(test_model, clip, tmp_path):
    result = run("upscale", str(clip), "/proc/vsrq-out.mp4", "-q")
    assert_clean_failure(result, "/proc", tmp_path)


def test_missing_directory(test_model, clip, tmp_path):
    assert_clean_failure(run("upscale", str(clip), str(tmp_path / "nope" / "out.mp4"), "-q"), "does not exist", tmp_path)


def test_unknown_model(test_model, clip, tmp_path):
    assert_clean_failure(run("upscale", str(clip), str(tmp_path / "out.mp4"), "--model", "no-such-model"), "unknown model", tmp_path)


def test_missing_input(test_model, tmp_path):
    assert_clean_failure(run("upscale", str(tmp_path / "ghost.mp4"), str(tmp_path / "out.mp4")), "does not exist", tmp_path)


def test_bad_options(test_model, clip, tmp_path):
    assert_clean_failure(run("upscale", str(clip), str(tmp_path / "out.mp4"), "--chunk", "4", "--overlap", "3"), "overlap", tmp_path)
    assert_clean_failure(run("upscale", str(clip), str(tmp_path / "out.mp4"), "--codec", "divx-3000", "-q"), "divx-3000", tmp_path)
    assert_clean_failure(run("upscale", str(clip), str(tmp_path / "out.mp4"), "--device", "tpu"), "--device", tmp_path)


def test_models_lists_registry(test_model):
    result = run("models")
    assert result.exit_code == 0
    assert "random-tiny" in result.output and "vsrq-tiny-fp16" in result.output


def test_train_and_eval_on_missing_data_say_how_to_build_it(tmp_path):
    result = run("train", "--data", str(tmp_path / "nodata"), "--run", str(tmp_path / "run"))
    assert_clean_failure(result, "python -m vsrq.train.data build", tmp_path)
    result = run("eval", "--eval", str(tmp_path / "noeval"))
    assert_clean_failure(result, "python -m vsrq.train.data eval", tmp_path)


def test_train_rejects_bad_loss_weights_and_missing_init(tmp_path):
    data = str(tmp_path / "nodata")
    for loss, match in [('{"temporal": "x"}', "non-negative numbers"), ('{"tv": 1}', "unknown weight"), ("[1]", "unknown weight"), ("{", "JSON")]:
        result = run("train", "--data", data, "--run", str(tmp_path / "run"), "--loss", loss)
        assert_clean_failure(result, match, tmp_path)
    result = run("train", "--data", data, "--run", str(tmp_path / "run"), "--init", str(tmp_path / "nope.safetensors"))
    assert_clean_failure(result, "no such file", tmp_path)
