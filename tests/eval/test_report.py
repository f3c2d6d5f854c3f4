"""The comparison-table helper scores baselines on EvalClip-like objects."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from vsrq.eval.report import BASELINES, evaluate, format_table


def test_baselines_table_on_a_synthetic_clip() -> None:
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.random((3, 3, 12, 12))).float()
    hr = (F.interpolate(base, size=(48, 48), mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().byte()
    hr_np = hr.permute(0, 2, 3, 1).contiguous().numpy()
    lr_np = F.interpolate(hr.float(), scale_factor=0.25, mode="area").round().byte().permute(0, 2, 3, 1).contiguous().numpy()
    clip = SimpleNamespace(name="c0", lr=lr_np, hr=hr_np)
    rows = evaluate("ground truth", None, [clip], temporal=False)
    for name, fn in BASELINES.items():
        rows += evaluate(name, fn, [clip], temporal=False)
    assert np.isinf(rows[0]["psnr_y"]) and all(20 < r["psnr_y"] < 60 for r in rows[1:])
    table = format_table(rows)
    assert "| bicubic | 1 |" in table and "| lanczos3 | 1 |" in table
