"""Triton-kernel-vs-reference checks, run in a child process under TRITON_INTERPRET=1.

Why a child process: Triton decides at decoration time whether ``@triton.jit`` compiles
or interprets, and the flag is process-wide; running these checks in their own
interpreter keeps it out of every other test. ``test_triton_interp.py`` starts this
file (``python _interp_cases.py SHARD NSHARDS``) and turns each printed ``CASE`` line
into one test. Importing this module (to list case names) needs neither triton nor
the flag.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

CASES: dict[str, Callable[[], str]] = {}


def case(name: str) -> Callable:
    def deco(fn: Callable[[], str]) -> Callable[[], str]:
        CASES[name] = fn
        return fn

    return deco


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _agree(got, ref, shape: tuple, what: str) -> str:
    """A Triton-path layer output against the reference path's: same shape, <= 1e-2 relative."""
    assert got is not None and got.shape == ref.shape == shape, f"{what}: shapes {None if got is None else got.shape} / {ref.shape}"
    e = _rel(got.float(), ref.float())
    assert e <= 1e-2, f"{what}: rel err {e}"
    return f"rel={e:.1e}"


def _lin_inputs(m: int, k: int, dtype, r: int = 0, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 2.0).to(dtype)
    ld = (torch.randn(k, r, generator=g) * 0.05).to(torch.bfloat16) if r else None
    sm = torch.rand(k, generator=g) + 0.5
    return x, ld, sm


# ----------------------------------------------------------------------------- act_quant

_ACT = {
    "pertoken_b4_ragged": dict(m=37, k=200, bits=4),
    "pertoken_b8": dict(m=19, k=96, bits=8),
    "pertoken_b3_m1": dict(m=1, k=64, bits=3),
    "pertoken_smooth_lora": dict(m=37, k=200, bits=4, smooth=True, r=20),
    "group32_lora": dict(m=21, k=192, bits=4, group_size=32, r=16),
    "group64_b8_smooth": dict(m=33, k=192, bits=8, group_size=64, smooth=True),
    "hadamard64": dict(m=37, k=192, bits=4, hadamard_block=64, r=8),
    "hadamard128_smooth_group32": dict(m=18, k=256, bits=4, hadamard_block=128, smooth=True, group_size=32),
    "hadamard64_fp32_input": dict(m=17, k=128, bits=4, hadamard_block=64, dtype="float32"),
    "fp16_input_lora": dict(m=25, k=160, bits=4, r=32, dtype="float16"),
    "rowsum_total": dict(m=37, k=200, bits=4, rowsum_group=0),
    "rowsum_group64_pertoken": dict(m=37, k=192, bits=4, rowsum_group=64),
    "rowsum_group32_grouped": dict(m=20, k=128, bits=4, group_size=32, rowsum_group=32),
    # DRAQ clip ratios (not exact in fp32, so the kernel's fp32 argument is what is compared)
    "clip070_pertoken_b4_heavy": dict(m=37, k=200, bits=4, clip=0.7, heavy=True),
    "clip085_pertoken_b8_smooth_rowsum": dict(m=19, k=96, bits=8, clip=0.85, smooth=True, rowsum_group=0,
                                              heavy=True),
    "clip055_group32_rowsum_lora": dict(m=21, k=192, bits=4, group_size=32, rowsum_group=32, r=16, clip=0.55,
                                        heavy=True),
    # rows of a wider buffer (row stride != K, data pointer offset), and a pinned two-pass launch shape
    "smooth_k320_strided": dict(m=18, k=320, bits=4, smooth=True, pad_cols=24),
    "lora16_config_32x16": dict(m=45, k=96, bits=4, r=16, config=dict(BLOCK_M=32, BLOCK_K=16, num_warps=4)),
}


def _act_case(p: dict) -> str:
    """The default dispatch and, where that is the tile kernel, the forced two-pass kernel too."""
    from vsrq.kernels.act_quant import tile_serves

    tile = tile_serves(p["k"], p.get("group_size"), p.get("rowsum_group"), p.get("hadamard_block", 0), p.get("r", 0))
    runs = (("auto (tile)", False), ("two-pass", True)) if tile else (("auto (two-pass)", False),)
    return "; ".join(f"{tag}: {_act_case_one(p, two)}" for tag, two in runs)


def _act_case_one(p: dict, two_pass: bool) -> str:
    import torch

    from vsrq.kernels.act_quant import act_quant
    from vsrq.kernels.reference import act_quant_ref

    dtype = getattr(torch, p.get("dtype", "bfloat16"))
    x, ld, sm = _lin_inputs(p["m"], p["k"], dtype, p.get("r", 0), seed=p["m"] * 7 + p["k"])
    if p.get("heavy"):  # heavy-tailed tokens (a normal over a uniform): clipping saturates some
        g = torch.Generator().manual_seed(p["k"])
        x = (torch.randn(p["m"], p["k"], generator=g) / (torch.rand(p["m"], p["k"], generator=g) + 0.05)).to(dtype)
    if p.get("pad_cols"):  # rows of a wider buffer: row stride != K, data pointer offset
        wide = torch.zeros(p["m"], p["k"] + p["pad_cols"], dtype=dtype)
        wide[:, 8:8 + p["k"]] = x
        x = wide[:, 8:8 + p["k"]]
    clip = p.get("clip", 1.0)
    kw = dict(
        bits=p["bits"], group_size=p.get("group_size"), smooth=sm if p.get("smooth") else None,
        hadamard_block=p.get("hadamard_block", 0), lora_down=ld, rowsum_group=p.get("rowsum_group"),
        clip_ratio=clip,
    )
    qmax = (1 << (p["bits"] - 1)) - 1
    poison = torch.full((p["m"], p["k"]), -128, dtype=torch.int8)
    kern = dict(two_pass=two_pass, config=p.get("config"))
    got = act_quant(x, out_q=poison, **kw, **kern)
    ref = act_quant_ref(x, **kw)
    if clip == 1.0:
        # |q| <= qmax by construction (scale = absmax / qmax), so -128 marks an unwritten value
        assert int(got.q.min()) >= -qmax, "unwritten (poisoned) q values"
    else:
        # clipped: -qmax-1 is reachable (and is -128 at 8 bits), so poison twice, differently
        assert int(ref.q.min()) == -qmax - 1 or int(ref.q.max()) == qmax, "the clip saturated nothing"
        again = act_quant(x, out_q=torch.full((p["m"], p["k"]), 127, dtype=torch.int8), **kw, **kern)
        assert torch.equal(again.q, got.q), "unwritten (poisoned) q values"
    diff = (got.q.to(torch.int16) - ref.q.to(torch.int16)).abs()
    rotated = bool(p.get("hadamard_block"))
    if rotated:  # summation order of the rotation may move a value across a rounding edge
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.01, f"q mismatch {diff.sum()}"
        assert _rel(got.scale, ref.scale) < 1e-5
    else:
        assert int(diff.max()) == 0, f"{int((diff > 0).sum())} q values differ"
        assert torch.equal(got.scale, ref.scale), "scales differ"
    if ref.rowsum is not None:
        gs = p["rowsum_group"] or p["k"]
        own = got.q.to(torch.int32).reshape(p["m"], -1, gs).sum(-1)
        assert torch.equal(got.rowsum, own), "row sums disagree with the kernel's own q"
        if not rotated:
            assert torch.equal(got.rowsum, ref.rowsum)
    if ld is not None:
        e = _rel(got.lowrank.float(), ref.lowrank.float())
        assert e < 1e-2, f"low-rank rel err {e}"
    return f"max|dq|={int(diff.max())}"


for _n, _p in _ACT.items():
    case(f"act_quant[{_n}]")(lambda _p=_p: _act_case(_p))


@case("act_quant_dispatch")
def _act_dispatch() -> str:
    """act_quant runs the tile kernel where it applies, else (or with two_pass=True, or a config
    without ROWS) the two-pass kernel."""
    import torch

    import vsrq.kernels.act_quant as aq

    seen: list[str] = []
    real, real_tile = aq._launch, aq._launch_tile

    def spy(p, o, cfg):
        seen.append("two-pass")
        return real(p, o, cfg)

    def spy_tile(*a):
        seen.append("tile")
        return real_tile(*a)

    x, ld, sm = _lin_inputs(20, 192, torch.bfloat16, 8)
    aq._launch, aq._launch_tile = spy, spy_tile
    try:
        expect = {
            "per-token smooth+lora": (dict(smooth=sm, lora_down=ld), "two-pass"),
            "per-token smooth": (dict(smooth=sm), "tile"),
            "per-token rowsum": (dict(rowsum_group=0), "tile"),
            "per-token rowsum per 64": (dict(rowsum_group=64), "two-pass"),
            "per-group": (dict(group_size=64), "tile"),
            "per-group rowsum": (dict(group_size=64, rowsum_group=64), "tile"),
            "hadamard": (dict(hadamard_block=64), "two-pass"),
            "two-pass config": (dict(config={"BLOCK_M": 16, "BLOCK_K": 64, "num_warps": 4}), "two-pass"),
            "forced two-pass": (dict(two_pass=True), "two-pass"),
        }
        for name, (kw, want) in expect.items():
            seen.clear()
            aq.act_quant(x, 4, **kw)
            assert seen == [want], f"{name}: ran {seen}"
        wide = torch.randn(3, aq.TILE_MAX_K + 64).to(torch.bfloat16)
        seen.clear()
        aq.act_quant(wide, 4)
        assert seen == ["two-pass"], f"K > {aq.TILE_MAX_K}: ran {seen}"
    finally:
        aq._launch, aq._launch_tile = real, real_tile
    try:
        aq.norm_act_quant(x, 1e-6, rowsum_group=64)
    except ValueError:
        return "ok"
    raise AssertionError("norm_act_quant with row sums per 64 of a per-token scale did not raise")


# ----------------------------------------------------------------------------- act_quant, whole-row tiles

_TILE = {
    "pertoken_b4_ragged": dict(m=37, k=200, bits=4),
    "pertoken_b8_rows4_fp32": dict(m=19, k=96, bits=8, rows=4, dtype="float32"),
    "group32_rowsum": dict(m=21, k=192, bits=4, group_size=32, rowsum_group=32),
    "group16_smooth_k_not_pow2": dict(m=9, k=48, bits=4, group_size=16, smooth=True),
    "pertoken_smooth_rowsum_fp16": dict(m=30, k=131, bits=4, smooth=True, rowsum_group=0, dtype="float16"),
    "clip060_pertoken_heavy": dict(m=37, k=200, bits=4, clip=0.6, heavy=True),
    "norm_modulate_pertoken": dict(m=37, k=200, bits=4, norm=True, mod=True),
    "norm_modulate_group32_rows2": dict(m=25, k=96, bits=4, group_size=32, norm=True, mod=True, rows=2),
    "norm_only_b8_rowsum": dict(m=17, k=64, bits=8, norm=True, rowsum_group=0),
}


def _tile_case(p: dict) -> str:
    import torch

    from vsrq.kernels.act_quant import act_quant, norm_act_quant
    from vsrq.kernels.act_quant_tile import modulation_vectors, norm_modulate_ref
    from vsrq.kernels.reference import act_quant_ref

    dtype = getattr(torch, p.get("dtype", "bfloat16"))
    x, _, sm = _lin_inputs(p["m"], p["k"], dtype, 0, seed=p["m"] * 5 + p["k"])
    if p.get("heavy"):
        g = torch.Generator().manual_seed(p["k"])
        x = (torch.randn(p["m"], p["k"], generator=g) / (torch.rand(p["m"], p["k"], generator=g) + 0.05)).to(dtype)
    kw = dict(bits=p["bits"], group_size=p.get("group_size"), smooth=sm if p.get("smooth") else None,
              rowsum_group=p.get("rowsum_group"), clip_ratio=p.get("clip", 1.0))
    cfg = {"ROWS": p.get("rows", 1), "num_warps": 4}
    poison = torch.full((p["m"], p["k"]), -128, dtype=torch.int8)
    if p.get("norm"):
        mod = None
        if p.get("mod"):
            g = torch.Generator().manual_seed(p["k"] + 1)
            mod = modulation_vectors(torch.randn(p["k"], generator=g) * 0.3, torch.randn(p["k"], generator=g) * 0.3,
                                     p["k"], x.device)
        got = norm_act_quant(x, 1e-6, mod, out_q=poison, config=cfg, **kw)
        ref = act_quant_ref(norm_modulate_ref(x, 1e-6, mod), **kw)
    else:
        got = act_quant(x, out_q=poison, config=cfg, **kw)
        ref = act_quant_ref(x, **kw)
    diff = (got.q.to(torch.int16) - ref.q.to(torch.int16)).abs()
    if p.get("norm"):  # the row mean/variance sum in another order: a value may cross a rounding edge
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.005, f"q mismatch {int(diff.sum())}"
        assert _rel(got.scale, ref.scale) < 1e-5, "scales differ"
    else:
        assert int(diff.max()) == 0, f"{int((diff > 0).sum())} q values differ"
        assert torch.equal(got.scale, ref.scale), "scales differ"
    if ref.rowsum is not None:
        gs = p["rowsum_group"] or p["k"]
        own = got.q.to(torch.int32).reshape(p["m"], -1, gs).sum(-1)
        assert torch.equal(got.rowsum, own), "row sums disagree with the kernel's own q"
    return f"max|dq|={int(diff.max())} off={int((diff > 0).sum())}"


for _n, _p in _TILE.items():
    case(f"act_quant_tile[{_n}]")(lambda _p=_p: _tile_case(_p))


# ----------------------------------------------------------------------------- unpack


@case("group_norm_act[bf16_and_fp32]")
def _group_norm_act() -> str:
    """The VAE's per-frame GroupNorm + SiLU kernel against its reference and nn.GroupNorm per frame."""
    import torch

    from vsrq.kernels.group_norm import frame_group_stats, group_norm_act, group_norm_act_ref

    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 5, 7) * 3 + 10  # far from zero: a bf16 mean would lose the deviations
    w, b = torch.randn(8), torch.randn(8)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w)
        norm.bias.copy_(b)
        want = torch.stack([torch.nn.functional.silu(norm(x[:, :, t])) for t in range(3)], dim=2)
    got = group_norm_act(x, 4, w, b, 1e-6)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    xb = x.bfloat16()
    mean, rstd = frame_group_stats(xb, 4, 1e-6)
    kern = group_norm_act(xb, 4, w, b, 1e-6, act=False)
    ref = group_norm_act_ref(xb, mean, rstd, w, b, act=False)
    torch.testing.assert_close(kern.float(), ref.float(), atol=0.02, rtol=0.01)
    err = float((kern[:, :, 1].float() - norm(x[:, :, 1]).detach()).abs().max())  # frame 1 without SiLU vs fp32 nn.GroupNorm
    assert err < 0.05, err
    return "matches nn.GroupNorm per frame"


@case("unpack[signed_even]")
def _unpack_signed() -> str:
    import torch

    from vsrq.kernels.reference import unpack_int4_ref
    from vsrq.kernels.unpack import unpack_int4_to_int8
    from vsrq.quant.pack import pack_int4

    q = torch.randint(-8, 8, (45, 130), dtype=torch.int8)
    out = torch.full((45, 130), -128, dtype=torch.int8)
    got = unpack_int4_to_int8(pack_int4(q), 130, out=out)
    assert torch.equal(got, q) and torch.equal(got, unpack_int4_ref(pack_int4(q), 130))
    return "exact"


@case("unpack[unsigned_odd_k]")
def _unpack_unsigned() -> str:
    import torch

    from vsrq.kernels.unpack import unpack_int4_to_int8
    from vsrq.quant.pack import pack_int4

    q = torch.randint(0, 16, (33, 131), dtype=torch.int8)
    padded = torch.cat((q, torch.zeros(33, 1, dtype=torch.int8)), 1)
    got = unpack_int4_to_int8(pack_int4(padded), 131, signed=False)
    assert torch.equal(got, q)
    return "exact"


# ----------------------------------------------------------------------------- qgemm

_GEMM = {
    "ptr_channel_ragged": dict(impl="ptr", m=37, n=45, k=200),
    "ptr_channel_w8a8": dict(impl="ptr", m=29, n=40, k=160, bits=8),
    "ptr_group32_all_epilogue": dict(impl="ptr", m=37, n=45, k=192, group=32, r=20, bias=True,
                                     act="gelu_tanh", gate=True, res=True),
    "ptr_asym_channel": dict(impl="ptr", m=37, n=45, k=200, asym=True, bias=True),
    "ptr_asym_group64": dict(impl="ptr", m=21, n=50, k=192, group=64, asym=True),
    "ptr_wgroup_only": dict(impl="ptr", m=21, n=50, k=192, group=64, act_per_token=True),
    "ptr_fp16_out": dict(impl="ptr", m=17, n=33, k=96, out="float16", r=8, bias=True),
    "tma_channel_ragged_k": dict(impl="tma", m=37, n=45, k=208, r=20, bias=True),
    "tma_group64_asym": dict(impl="tma", m=37, n=45, k=192, group=64, asym=True, gate=True),
    "tma_request_unaligned_k_falls_back": dict(impl="tma", m=20, n=30, k=200, bias=True),
    "persistent_channel": dict(impl="persistent", m=70, n=80, k=208, r=16, act="gelu_tanh", res=True),
    "persistent_group32": dict(impl="persistent", m=37, n=45, k=128, group=32, bias=True),
    # one gate vector for every row, as the DiT hands it (an (M, N) view of stride 0 along M)
    "ptr_gate_vector_ragged": dict(impl="ptr", m=37, n=45, k=200, bias=True, gate="vector", res=True),
    "persistent_gate_vector_gelu": dict(impl="persistent", m=70, n=80, k=208, act="gelu_tanh", gate="vector", res=True),
    # the output through TMA stores (two half tiles, clipped by the copy engine at ragged edges)
    "tma_store_ragged": dict(impl="tma", m=37, n=56, k=208, r=20, bias=True, tma_store=True),
    "persistent_store_gate_res": dict(impl="persistent", m=70, n=88, k=128, act="gelu_tanh", gate="vector", res=True,
                                      tma_store=True, out="float16"),
    "persistent_group32_tma_store": dict(impl="persistent", m=37, n=48, k=128, group=32, bias=True, tma_store=True),
}


def _gemm_case(p: dict) -> str:
    import torch

    from vsrq.kernels.qgemm import qgemm
    from vsrq.kernels.reference import act_quant_ref, qgemm_ref
    from vsrq.quant.pack import quantize_weight

    g = torch.Generator().manual_seed(p["m"] + p["n"] + p["k"])
    m, n, k = p["m"], p["n"], p["k"]
    bits = p.get("bits", 4)
    group = p.get("group")
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g)
    qw, sw, zw = quantize_weight(w, bits, group, not p.get("asym"), torch.float16)
    a_group = None if p.get("act_per_token") else group
    gs = group if group else 0
    r = p.get("r", 0)
    ld = (torch.randn(k, r, generator=g) * 0.05).to(torch.bfloat16) if r else None
    aq = act_quant_ref(x, bits, a_group, lora_down=ld, rowsum_group=gs if p.get("asym") else None)
    kw = dict(
        wzero=zw, rowsum=aq.rowsum,
        bias=torch.randn(n, generator=g) if p.get("bias") else None,
        lowrank=aq.lowrank, lora_up=(torch.randn(r, n, generator=g) * 0.05).to(torch.bfloat16) if r else None,
        activation=p.get("act"),
        gate=torch.randn(m, n, generator=g).to(torch.bfloat16) if p.get("gate") else None,
        residual=torch.randn(m, n, generator=g).to(torch.bfloat16) if p.get("res") else None,
    )
    if p.get("gate") == "vector":
        kw["gate"] = torch.randn(n, generator=g).to(torch.bfloat16).view(1, n).expand(m, n)
    results = []
    for out_dtype in (torch.float32, getattr(torch, p.get("out", "bfloat16"))):
        out = torch.full((m, n), float("nan"), dtype=out_dtype)
        config = None
        if p.get("tma_store"):
            from vsrq.kernels.qgemm import _INTERP

            config = dict(_INTERP, TMA_STORE=1)
        got = qgemm(aq.q, aq.scale, qw, sw, out=out, out_dtype=out_dtype, impl=p["impl"], config=config, **kw)
        ref = qgemm_ref(aq.q, aq.scale, qw, sw, out_dtype=out_dtype, **kw)
        assert not torch.isnan(got).any(), "unwritten (poisoned) outputs"
        e = _rel(got.float(), ref.float())
        tol = 1e-5 if out_dtype == torch.float32 else 1e-2
        assert e < tol, f"{out_dtype}: rel err {e:.3g} >= {tol}"
        results.append(f"{e:.1e}")
    return "rel=" + "/".join(results)


for _n, _p in _GEMM.items():
    case(f"qgemm[{_n}]")(lambda _p=_p: _gemm_case(_p))


@case("qgemm[tma_store_taken_and_fallback]")
def _tma_store_path() -> str:
    """TMA_STORE goes through descriptor stores where the output rows are 16-byte aligned (N=56
    bf16) and falls back to pointer stores where they are not (N=45): both equal the reference,
    with a full (M, N) gate and a residual."""
    import torch

    from vsrq.kernels import qgemm as qg
    from vsrq.kernels.reference import qgemm_ref

    taken: list[bool] = []
    orig = qg._tma_store_ok
    qg._tma_store_ok = lambda c: taken.append(orig(c)) or taken[-1]
    try:
        g = torch.Generator().manual_seed(3)
        for n in (56, 45):
            m, k = 37, 96
            qa = torch.randint(-7, 8, (m, k), generator=g, dtype=torch.int8)
            qw = torch.randint(-7, 8, (n, k), generator=g, dtype=torch.int8)
            sa, sw = torch.rand(m, 1, generator=g) * 0.01, (torch.rand(n, 1, generator=g) * 0.01).half()
            kw = dict(bias=torch.randn(n, generator=g), gate=torch.randn(m, n, generator=g).to(torch.bfloat16),
                      residual=torch.randn(m, n, generator=g).to(torch.bfloat16), out_dtype=torch.bfloat16)
            got = qg.qgemm(qa, sa, qw, sw, impl="persistent", config=dict(qg._INTERP, TMA_STORE=1), **kw)
            ref = qgemm_ref(qa, sa, qw, sw, **kw)
            assert torch.equal(got, ref), f"N={n}: max diff {float((got.float() - ref.float()).abs().max())}"
    finally:
        qg._tma_store_ok = orig
    assert taken == [True, False], taken
    return "ok"


# ----------------------------------------------------------------------------- QuantLinear

_QLIN = {
    "w4a4_smooth_lora_bias": dict(k=192, n=80, bits=4, abits=4, smooth=True, rank=16),
    "w4a4_group64_asym": dict(k=192, n=80, bits=4, abits=4, group=64, asym=True),
    "w8a8_channel": dict(k=160, n=48, bits=8, abits=8),
    "w4a4_hadamard_gelu_3d": dict(k=128, n=96, bits=4, abits=4, hadamard=64, act="gelu_tanh", lead=(2, 9)),
    "w4a4_gate_residual_ragged_k": dict(k=200, n=72, bits=4, abits=4, rank=8, gate=True, res=True),
    "w4a8_odd_k": dict(k=131, n=40, bits=4, abits=8),
    "w4a4_act_clip_group64_asym": dict(k=192, n=80, bits=4, abits=4, group=64, asym=True, clip=0.8),
}


def _qlin_case(p: dict) -> str:
    import torch

    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(p["k"] * 3 + p["n"])
    lin = torch.nn.Linear(p["k"], p["n"])
    smooth = torch.rand(p["k"]) + 0.5 if p.get("smooth") else None
    ql = QuantLinear.from_linear(
        lin, bits=p["bits"], act_bits=p["abits"], group_size=p.get("group"), symmetric=not p.get("asym"),
        rank=p.get("rank", 0), smooth=smooth, hadamard_block=p.get("hadamard", 0), activation=p.get("act"),
        act_clip=p.get("clip", 1.0),
    )
    lead = p.get("lead", (23,))
    x = torch.randn(*lead, p["k"]).to(torch.bfloat16)
    gate = torch.randn(*lead, p["n"]).to(torch.bfloat16) if p.get("gate") else None
    res = torch.randn(*lead, p["n"]).to(torch.bfloat16) if p.get("res") else None
    ql.backend = "reference"
    ref = ql(x, gate=gate, residual=res)
    ql.backend = "triton"
    got = ql(x, gate=gate, residual=res)
    return _agree(got, ref, (*lead, p["n"]), "triton vs reference")


for _n, _p in _QLIN.items():
    case(f"quant_linear[{_n}]")(lambda _p=_p: _qlin_case(_p))


@case("quant_linear[binary_branch]")
def _qlin_binary() -> str:
    """A layer with the binary residual branch (vsrq.quant.binres) on the Triton path (fp32 GEMM
    output + the branch + GELU / gate / residual in torch) against the reference path."""
    import torch

    from vsrq.quant.binres import fit_binary_residual
    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(11)
    lin = torch.nn.Linear(96, 40)
    x_cal = torch.randn(64, 96)
    out = []
    for kw in (dict(), dict(smooth=torch.rand(96) + 0.5, activation="gelu_tanh")):
        q = QuantLinear.from_linear(lin, bits=4, act_bits=4, binary_k=4, **kw)
        fit_binary_residual(lin, q, x_cal)
        assert q.bin_scale.float().abs().sum() > 0, "the branch is empty"
        x = torch.randn(2, 13, 96).to(torch.bfloat16)
        gate = torch.randn(2, 13, 40).to(torch.bfloat16)
        res = torch.randn(2, 13, 40).to(torch.bfloat16)
        q.backend = "reference"
        ref = q(x, gate=gate, residual=res)
        q.backend = "triton"
        got = q(x, gate=gate, residual=res)
        out.append(_agree(got, ref, (2, 13, 40), "binary branch triton vs reference"))
    return "; ".join(out)


# ----------------------------------------------------------------------------- QuantLinear with a fused LayerNorm

_QNORM = {
    "pertoken": dict(k=96, n=80),
    "group32_gelu_asym": dict(k=128, n=72, act_group=32, asym=True, act="gelu_tanh"),
    "smooth_b8_nomod": dict(k=64, n=48, abits=8, smooth=True, nomod=True),
    "lead_dims_clip": dict(k=96, n=40, lead=(2, 3, 7), clip=0.8),
    "gelu_passed_by_the_caller": dict(k=96, n=64, call_act="gelu_tanh"),
}


def _qnorm_case(p: dict) -> str:
    import torch
    import torch.nn.functional as F

    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(p["k"] + p["n"])
    lin = torch.nn.Linear(p["k"], p["n"])
    ql = QuantLinear.from_linear(
        lin, bits=4, act_bits=p.get("abits", 4), act_group_size=p.get("act_group"), symmetric=not p.get("asym"),
        smooth=torch.rand(p["k"]) + 0.5 if p.get("smooth") else None, activation=p.get("act"),
        act_clip=p.get("clip", 1.0))
    lead = p.get("lead", (37,))
    x = (torch.randn(*lead, p["k"]) * 3 + 1).to(torch.bfloat16)
    shift = None if p.get("nomod") else torch.randn(p["k"]) * 0.3
    scale = None if p.get("nomod") else torch.randn(p["k"]) * 0.3
    xn = F.layer_norm(x.float(), (p["k"],), eps=1e-6)
    if shift is not None:
        xn = xn * (1 + scale) + shift
    call_act = p.get("call_act")
    ql.backend = "reference"
    assert ql.forward_normed(x, 1e-6, shift, scale, call_act) is None, "the reference backend must leave the norm to the caller"
    ref = ql(xn)
    if call_act:
        ref = F.gelu(ref.float(), approximate="tanh").to(ref.dtype)
    ql.backend = "triton"
    got = ql.forward_normed(x, 1e-6, shift, scale, call_act)
    assert got is None or got.dtype == x.dtype
    return _agree(got, ref, (*lead, p["n"]), "fused norm vs reference")


for _n, _p in _QNORM.items():
    case(f"quant_linear_normed[{_n}]")(lambda _p=_p: _qnorm_case(_p))


@case("quant_linear_normed[modulation_cache]")
def _qnorm_mod_cache() -> str:
    """The (1 + scale, shift) vectors are made once for the same modulation tensors and made again
    after a write to them (a fresh result, equal to the uncached one)."""
    import torch

    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(5)
    ql = QuantLinear.from_linear(torch.nn.Linear(64, 32), bits=4, act_bits=4)
    ql.backend = "triton"
    buf = torch.randn(2, 64) * 0.3  # like the folded model's modulation buffer: shift, scale views
    x = torch.randn(9, 64).to(torch.bfloat16)
    y1 = ql.forward_normed(x, 1e-6, buf[0], buf[1])
    first = ql._mod_cache[2]
    y2 = ql.forward_normed(x, 1e-6, buf[0], buf[1])
    assert ql._mod_cache[2] is first and torch.equal(y1, y2), "not reused for the same tensors"
    buf.mul_(2)
    y3 = ql.forward_normed(x, 1e-6, buf[0], buf[1])
    assert ql._mod_cache[2] is not first, "stale vectors after a write"
    ql._mod_cache = None
    assert torch.equal(y3, ql.forward_normed(x, 1e-6, buf[0], buf[1])), "cached and fresh vectors disagree"
    return "ok"


@case("quant_linear_normed[declines]")
def _qnorm_declines() -> str:
    """Layers the whole-row kernel cannot serve return None (the model then normalizes itself)."""
    import torch

    from vsrq.quant.qlinear import QuantLinear

    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64).to(torch.bfloat16)
    for kw in (dict(rank=8), dict(hadamard_block=32), dict(group_size=32, symmetric=False, act_group_size=None)):
        ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, **kw)
        ql.backend = "triton"
        assert ql.forward_normed(x, 1e-6, None, None) is None, f"{kw} was fused"
    ql = QuantLinear.from_linear(lin, bits=4, act_bits=4)
    ql.backend = "triton"
    assert ql.forward_normed(x, 1e-6, None, None) is not None
    handle = ql.register_forward_pre_hook(lambda *a: None)
    assert ql.forward_normed(x, 1e-6, None, None) is None, "a hooked layer was fused (the hook would not run)"
    handle.remove()
    gelu = QuantLinear.from_linear(lin, bits=4, act_bits=4, activation="gelu_tanh")
    gelu.backend = "triton"
    assert gelu.forward_normed(x, 1e-6, None, None, "gelu_tanh") is None, "a second GELU was fused"
    return "ok"


_QRES = {
    "pertoken": dict(k=96, n=80),
    "lowrank_gelu_lead": dict(k=64, n=48, rank=8, act="gelu_tanh", lead=(2, 3, 7)),
    "group32_asym": dict(k=128, n=72, act_group=32, asym=True),
}


def _qres_case(p: dict) -> str:
    """forward_residual (gate and residual in the GEMM epilogue, one gate vector for all rows)
    against residual + gate * layer(x) composed on the reference path."""
    import torch

    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(p["k"] * 3 + p["n"])
    ql = QuantLinear.from_linear(
        torch.nn.Linear(p["k"], p["n"]), bits=4, act_bits=4, act_group_size=p.get("act_group"),
        symmetric=not p.get("asym"), rank=p.get("rank", 0), activation=p.get("act"))
    lead = p.get("lead", (37,))
    x = (torch.randn(*lead, p["k"]) * 2).to(torch.bfloat16)
    res = torch.randn(*lead, p["n"]).to(torch.bfloat16)
    gate = torch.randn(p["n"]).to(torch.bfloat16)
    ql.backend = "reference"
    assert ql.forward_residual(x, gate, res) is None, "the reference backend must leave the sum to the caller"
    ref = (res.float() + gate.float() * ql(x).float()).to(torch.bfloat16)
    ql.backend = "triton"
    got = ql.forward_residual(x, gate, res)
    assert got is None or got.dtype == x.dtype
    return _agree(got, ref, (*lead, p["n"]), "fused gate + residual vs reference")


for _n, _p in _QRES.items():
    case(f"quant_linear_residual[{_n}]")(lambda _p=_p: _qres_case(_p))


@case("quant_linear_residual[declines]")
def _qres_declines() -> str:
    """A hooked layer, a per-token gate and a residual of another shape are left to the caller."""
    import torch

    from vsrq.quant.qlinear import QuantLinear

    ql = QuantLinear.from_linear(torch.nn.Linear(64, 32), bits=4, act_bits=4)
    ql.backend = "triton"
    x = torch.randn(5, 64).to(torch.bfloat16)
    res, gate = torch.randn(5, 32).to(torch.bfloat16), torch.randn(32).to(torch.bfloat16)
    assert ql.forward_residual(x, gate, res) is not None
    assert ql.forward_residual(x, gate.expand(5, 32), res) is None, "a per-token gate was taken"
    assert ql.forward_residual(x, gate, res[:4]) is None, "a residual of another shape was taken"
    handle = ql.register_forward_hook(lambda *a: None)
    assert ql.forward_residual(x, gate, res) is None, "a hooked layer was fused (the hook would not see the plain call)"
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *a: None)
    assert ql.forward_residual(x, gate, res) is None, "fused under a global module hook"
    assert ql.forward_normed(x, 1e-6, None, None) is None, "norm fused under a global module hook"
    handle.remove()
    assert ql.forward_residual(x, gate.float(), res) is None, "an fp32 gate was fused (the plain sum promotes to fp32)"
    assert ql.forward_residual(x, gate, res.float()) is None, "an fp32 residual was fused"
    assert ql.forward_residual(x, gate, res.clone().requires_grad_()) is None, "the residual's gradient would be cut"
    with torch.no_grad():
        assert ql.forward_residual(x, gate, res.clone().requires_grad_()) is not None, "no gradient wanted: fuse"
    return "ok"


@case("dit_w4a4_triton_vs_reference")
def _dit_triton_vs_reference() -> str:
    """A whole W4A4 DiT (folded, RTN, random non-zero adaLN and head) in bf16 on the Triton path, where
    the blocks hand LayerNorm + modulate, GELU and gate + residual to the layers (forward_normed,
    forward_residual), against the fp32 model on the reference path (the CPU numerics). The fused
    path rounds differently from bf16 composed on the reference path (fewer 16-bit roundings), and
    every changed rounding can flip 4-bit activation steps downstream, so the two bf16 paths are not
    compared with each other: the fused one must be no further from fp32 than plain bf16 is (with the
    fusions turned off the Triton path equals the bf16 reference bit for bit, checked too)."""
    import torch

    from vsrq.bench import rtn_variant
    from vsrq.models.dit import DiTConfig, VSRDiT
    from vsrq.quant.qlinear import QuantLinear

    torch.manual_seed(11)
    net = VSRDiT(DiTConfig(dim=48, depth=2, heads=2, window=(2, 4, 4), scale=2))
    with torch.no_grad():
        for p in net.parameters():  # the zero-init adaLN gates and head would hide the blocks
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.05)
    q32 = rtn_variant(net, 4, 4, 0)
    q = rtn_variant(net, 4, 4, 0).to(torch.bfloat16)
    layers = [m for m in q.modules() if isinstance(m, QuantLinear)]
    x = torch.rand(1, 3, 2, 12, 16)
    up = net.upsample_residual(x)  # the bicubic part is the same on every path: compare the rest
    calls = {"normed": 0, "residual": 0}
    with torch.no_grad():
        ref32 = q32(x) - up
        for m in layers:
            m.backend = "reference"
        ref16 = q(x.bfloat16()).float() - up
        for m in layers:
            m.backend = "triton"
            for name in calls:
                orig = getattr(m, f"forward_{name}")

                def spy(*a, _orig=orig, _name=name, **k):
                    y = _orig(*a, **k)
                    calls[_name] += y is not None
                    return y

                setattr(m, f"forward_{name}", spy)
        got = q(x.bfloat16()).float() - up
        for m in layers:
            m.forward_normed = m.forward_residual = lambda *a, **k: None
        plain = q(x.bfloat16()).float() - up
    assert calls["normed"] == 4 and calls["residual"] == 4, f"fused calls {calls} (2 blocks x qkv/fc1, proj/fc2)"
    assert torch.equal(plain, ref16), "unfused Triton path differs from the bf16 reference"
    e_fused, e_bf16 = _rel(got, ref32), _rel(ref16, ref32)
    assert e_fused <= 1.1 * e_bf16 + 1e-3, f"fused path {e_fused:.3g} from fp32 against bf16's {e_bf16:.3g}"
    return f"fused {e_fused:.2e} / bf16 reference {e_bf16:.2e} from fp32"


from _interp_conv3d import CASES as _CONV3D_CASES  # noqa: E402  (tests/kernels is on sys.path both ways)

CASES.update(_CONV3D_CASES)

from _interp_vae import CASES as _VAE_CASES  # noqa: E402

CASES.update(_VAE_CASES)

from _interp_dit import CASES as _DIT_CASES  # noqa: E402

CASES.update(_DIT_CASES)


# ----------------------------------------------------------------------------- runner


def main(shard: int, nshards: int) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("this runner must be started with TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    import torch

    torch.set_num_threads(1)
    for i, (name, fn) in enumerate(sorted(CASES.items())):
        if i % nshards != shard:
            continue
        try:
            detail, ok = fn(), True
        except Exception as e:  # reported per case to the parent test
            detail, ok = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}", False
        print("CASE " + json.dumps({"name": name, "ok": ok, "detail": detail}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0, int(sys.argv[2]) if len(sys.argv) > 2 else 1))
