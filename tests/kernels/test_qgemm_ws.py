"""The warp-specialized Gluon GEMM (vsrq.kernels.qgemm_ws) on a machine without a GPU.

The kernel itself only runs on an sm_90 GPU (scripts/bench_gemm_ws.py checks it there); here:
the module imports whatever the installed triton's Gluon looks like, reports itself unavailable
without CUDA or under the interpreter, and the GEMM dispatcher never launches it then.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

_ROOT = Path(__file__).resolve().parents[2]


def test_imports_and_reports_unavailable_without_cuda() -> None:
    from vsrq.kernels import qgemm_ws as W

    assert W.GLUON_ERROR is None or isinstance(W.GLUON_ERROR, str)
    if not torch.cuda.is_available():
        assert not W.ws_available()
        assert not W.ws_available(0)
    assert not W.ws_available(torch.device("cpu"))
    for cfg in W.WS_CONFIGS:  # every config's ring (and output staging) fits an H100's 227 KB
        assert W._smem_bytes(cfg) + 1024 <= 227 * 1024
        assert cfg["mode"] in ("pingpong", "coop")


def test_declines_cpu_operands() -> None:
    from vsrq.kernels import qgemm_ws as W

    qa = torch.randint(-8, 8, (32, 64), dtype=torch.int8)
    qw = torch.randint(-8, 8, (48, 64), dtype=torch.int8)
    args = {"a": qa, "b": qw, "group": 0, "asym": False, "fp8": False, "has_lora": False}
    assert not W.ws_supports(args)
    with pytest.raises(ValueError):
        W.qgemm_ws(qa, torch.rand(32, 1), qw, torch.rand(48, 1))


_INTERP_SCRIPT = r"""
import torch
from vsrq.kernels import qgemm as qg
from vsrq.kernels import qgemm_ws as W
from vsrq.kernels.reference import qgemm_ref
assert not W.ws_available() and not W.ws_available(0)
def boom(*a, **k):
    raise AssertionError("the warp-specialized kernel was launched under the interpreter")
W.launch_ws = boom
if hasattr(qg, "launch_ws"):
    qg.launch_ws = boom
qa = torch.randint(-8, 8, (24, 64), dtype=torch.int8)
qw = torch.randint(-8, 8, (40, 64), dtype=torch.int8)
sa, sw = torch.rand(24, 1) * 0.1, torch.rand(40, 1) * 0.1
y = qg.qgemm(qa, sa, qw, sw, out_dtype=torch.float32)
ref = qgemm_ref(qa, sa, qw, sw, out_dtype=torch.float32)
assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5), (y - ref).abs().max()
print("OK")
"""


def test_dispatcher_never_picks_ws_in_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(_ROOT))
    p = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], capture_output=True, text=True, env=env,
                       cwd=str(_ROOT), timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
