"""`vsrq::quant_linear`, the opaque op torch.compile sees: same numbers as QuantLinear, valid registration.

Runs in a child process with TRITON_INTERPRET=1 (the flag must not leak into this process, see
test_triton_interp.py); small shapes, ragged M and K.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import torch
from torch import nn
from vsrq.kernels.linear import quant_linear_op
from vsrq.quant.qlinear import QuantLinear

torch.manual_seed(0)
for m, k, n, rank, smooth, act in [(37, 96, 40, 8, True, ""), (5, 200, 24, 0, False, "gelu_tanh")]:
    lin = nn.Linear(k, n)
    q = QuantLinear.from_linear(lin, bits=4, act_bits=4, rank=rank, smooth=torch.rand(k) + 0.5 if smooth else None,
                                activation=act or None, act_clip=0.9)
    q.backend = "reference"
    x = torch.randn(m, k)
    ref = q(x)
    y = quant_linear_op(x, q.qweight, q.wscale, q.wzero, q.smooth, q.lora_down, q.lora_up, q.effective_bias(),
                        None, None, k, q.packed, q.symmetric, q.a_bits, q.act_group_size or 0, q.hadamard_block,
                        q.activation or "", q.act_clip_float)
    err = ((y - ref).norm() / ref.norm()).item()
    assert err < 1e-5, (m, k, n, err)
    torch.library.opcheck(quant_linear_op, (x, q.qweight, q.wscale, q.wzero, q.smooth, q.lora_down, q.lora_up,
                          q.effective_bias(), None, None, k, q.packed, q.symmetric, q.a_bits, q.act_group_size or 0,
                          q.hadamard_block, q.activation or "", q.act_clip_float),
                          test_utils=("test_schema", "test_faketensor"))
    print("ok", m, k, n, err)

# the norm arguments (LayerNorm + modulation fused into the activation kernel): against the fused
# eager path of the module, and registered cleanly
from vsrq.kernels.act_quant_tile import modulation_vectors
for m, k, n, act in [(29, 96, 40, "gelu_tanh"), (7, 64, 24, "")]:
    q = QuantLinear.from_linear(nn.Linear(k, n), bits=4, act_bits=4, act_group_size=32 if act else None)
    q.backend = "triton"
    x = (torch.randn(m, k) * 2 + 1).to(torch.bfloat16)
    shift, scale = torch.randn(k) * 0.3, torch.randn(k) * 0.3
    ref = q.forward_normed(x, 1e-6, shift, scale, act or None)
    mm, ma = modulation_vectors(shift, scale, k, x.device)
    args = (x, q.qweight, q.wscale, q.wzero, q.smooth, None, None, q.effective_bias(), None, None, k, q.packed,
            q.symmetric, q.a_bits, q.act_group_size or 0, 0, act, q.act_clip_float, 1e-6, mm, ma)
    y = quant_linear_op(*args)
    assert torch.equal(y, ref), (m, k, n)
    torch.library.opcheck(quant_linear_op, args, test_utils=("test_schema", "test_faketensor"))
    print("ok-norm", m, k, n)

# a per-channel gate vector and a residual (`forward_residual`): the op equals the eager fused path
q = QuantLinear.from_linear(nn.Linear(64, 40), bits=4, act_bits=4)
q.backend = "triton"
x = torch.randn(11, 64).to(torch.bfloat16)
gate, res = torch.randn(40).to(torch.bfloat16), torch.randn(11, 40).to(torch.bfloat16)
ref = q.forward_residual(x, gate, res)
args = (x, q.qweight, q.wscale, q.wzero, q.smooth, None, None, q.effective_bias(), gate, res, 64, q.packed,
        q.symmetric, q.a_bits, 0, 0, "", q.act_clip_float)
assert torch.equal(quant_linear_op(*args), ref)
torch.library.opcheck(quant_linear_op, args, test_utils=("test_schema", "test_faketensor"))
print("ok-gate")
"""


def test_compile_op_matches_the_module_and_registers_cleanly() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ok ") == 2 and out.stdout.count("ok-norm ") == 2, out.stdout
    assert "ok-gate" in out.stdout, out.stdout
