"""The ablation command's rows on a tiny random model and generated clips (what docs/QUANT.md's table runs)."""

import numpy as np

from tests.support import random_model
from vsrq.models.loader import LoadedModel
from vsrq.quant.ablation import format_rows, run_rows
from vsrq.train.data import EvalClip


def test_rows_for_each_method_and_fp_reference(tmp_path):
    rng = np.random.default_rng(0)
    hr = np.kron(rng.integers(0, 255, (4, 8, 8, 3)), np.ones((1, 4, 4, 1))).astype(np.uint8)
    lr = hr.reshape(4, 8, 4, 8, 4, 3).mean(axis=(2, 4)).astype(np.uint8)
    clips = [EvalClip("toy", lr, hr, tmp_path, tmp_path, "generated")]
    loaded = LoadedModel("tiny", random_model(), "fp32", tmp_path)
    rows = run_rows(loaded, clips, ["rtn-w8a8", "rtn"], chunk=4, overlap=1, log=lambda r: None)
    assert [r["method"] for r in rows] == ["tiny (full precision)", "rtn-w8a8 W8A8", "rtn W4A4"]
    assert rows[0]["psnr_vs_fp"] == float("inf")
    assert rows[1]["psnr_vs_fp"] > rows[2]["psnr_vs_fp"] > 20  # 8-bit is closer to FP than 4-bit
    assert rows[2]["bits"] < rows[1]["bits"] < 16
    assert "| rtn W4A4 |" in format_rows(rows, "header")
