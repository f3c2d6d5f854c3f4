"""`vsrq bench` runs end to end on the CPU and reports every part it promises (no timing asserted)."""

import json

from typer.testing import CliRunner

from vsrq.cli import app


def test_bench_reports_forward_layers_size_and_pipeline():
    result = CliRunner().invoke(app, ["bench", "--config", '{"dim": 24, "depth": 2, "heads": 2, "window": [2, 4, 4]}',
                                      "--size", "32x16", "--frames", "4", "--chunk", "2", "--repeat", "1", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    r = json.loads(result.output)
    assert set(r["forward"]) == {"fp", "w8a8", "w4a4"}
    assert all(v["ms"] > 0 for v in r["forward"].values())
    assert r["size"]["w4a4"] < r["size"]["w8a8"] < r["size"]["fp"]  # packed weights are smaller
    assert r["layers"] and all(row["w4a4"] > 0 for row in r["layers"])
    assert r["pipeline"]["frames"] == 4 and r["pipeline"]["upscale_fps_w4a4"] > 0


def test_bench_refuses_bad_precisions():
    result = CliRunner().invoke(app, ["bench", "--precisions", "w4a4,fp"])
    assert result.exit_code == 2 and "--precisions" in result.stderr


def test_bench_fp8_vae_variants_need_an_fp8_gpu():
    result = CliRunner().invoke(app, ["bench", "--model", "seedvr2-3b", "--random-weights", "--device", "cpu",
                                      "--precisions", "fp,w4a4+fp8vae"])
    assert result.exit_code == 2 and "need a CUDA GPU with fp8 tensor cores" in result.stderr
    result = CliRunner().invoke(app, ["bench", "--model", "seedvr2-3b", "--random-weights", "--precisions", "fp,w4a4+fp4vae"])
    assert result.exit_code == 2 and "optionally +fp8vae" in result.stderr


def test_bench_sizes_are_checked_before_anything_is_built():
    from vsrq.bench import parse_size

    assert parse_size("160x90") == (160, 90) and parse_size("1080p") == (1920, 1080)
    for bad in (["--size", "0x90"], ["--size", "wide"], ["--model", "seedvr2-3b", "--random-weights", "--sizes", "4k"]):
        result = CliRunner().invoke(app, ["bench", *bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "WxH" in result.output


def test_bench_cuda_graphs_needs_compile():
    result = CliRunner().invoke(app, ["bench", "--cuda-graphs"])
    assert result.exit_code == 2 and "--cuda-graphs needs --compile" in result.stderr
    result = CliRunner().invoke(app, ["bench", "--compile", "--cuda-graphs", "--device", "cpu"])
    assert result.exit_code == 2 and "--cuda-graphs needs a CUDA device" in result.stderr
