"""The warp-specialized Gluon GEMM (vsrq.kernels.qgemm_ws) on a machine without a GPU.

The kernel itself only runs on an sm_90 GPU (scripts/bench_gemm_ws.py checks it there); here:
the module imports whatever the installed triton's Gluon looks like, reports itself unavailable
without CUDA or under the interpreter, and the GEMM dispatcher does not use it at all (unregistered).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

def test_imports_and_reports_unavailable_without_cuda() -> None:
    from vsrq.kernels import qgemm_ws as W

    assert W.GLUON_ERROR is None or isinstance(W.GLUON_ERROR, str)
    if not torch.cuda.is_available():
        assert not W.ws_available()
        assert not W.ws_available(0)
    assert not W.ws_available(torch.device("cpu"))
    for cfg in W.WS_CONFIGS:  # every config's ring of stages fits an H100's 227 KB
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


def test_the_dispatcher_does_not_use_it() -> None:
    """Kept unregistered (GPU run 9: slower than `persistent` at K <= 3072): qgemm neither imports
    nor offers it, so no implementation name or tuner candidate leads there."""
    import inspect

    from vsrq.kernels import qgemm as qg

    assert "ws" not in qg.GEMM_IMPLS and "ws" not in qg.SM90_AUTO_IMPLS
    assert "qgemm_ws" not in inspect.getsource(qg) and not hasattr(qg, "launch_ws")
