#!/usr/bin/env python
"""Check and time the W4A4 / W8A8 kernels on a CUDA GPU against cuBLAS bf16.

One script for a whole lease: (1) ceilings (bf16 matmul, device copy), (2) correctness
of every kernel variant against the pure-torch reference on the GPU (fresh random
inputs, poisoned outputs, never zeros), (3) medians from ``triton.testing.do_bench``:
cuBLAS bf16 vs W8A8 vs W4A4 (act-quant + GEMM + low-rank r=32, and the GEMM alone) at
DiT shapes, plus sweeps of GEMM implementations/configs and act-quant launch shapes.
Prints a table (ms, TOPS, speedup vs bf16 measured in the same run, weight bytes) last.

    python scripts/bench_kernels.py [--sweep] [--main-shapes] [--out DIR]
    python scripts/bench_kernels.py --quick [--out DIR]     # act-quant focus, < 150 s on an H100
    TRITON_INTERPRET=1 python scripts/bench_kernels.py --sweep   # CPU dry run, tiny sizes

``--quick``: only the activation-quantizer checks (kernels vs reference) and the act-quant
timing rows: act-quant with smoothing + r=32 (the two-pass kernel) at M=16384/4096,
K=2560/3072, the W4A4 layer (K=N) built on it, and W4A4 through cuBLAS fp8
(``torch._scaled_mm`` on e4m3 operands holding the int4 values, row-wise scales), all
with their ratio to cuBLAS bf16 ``F.linear`` timed in the same run.

Timing never happens in tests; this script is the only place numbers come from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from vsrq.kernels import qgemm as qg  # noqa: E402
from vsrq.kernels.act_quant import act_quant  # noqa: E402
from vsrq.kernels.reference import act_quant_ref, qgemm_ref  # noqa: E402
from vsrq.kernels.unpack import unpack_int4_to_int8  # noqa: E402
from vsrq.quant.pack import pack_int4, quantize_weight  # noqa: E402
from vsrq.quant.qlinear import QuantLinear  # noqa: E402

T0 = time.time()
SMOKE = os.environ.get("TRITON_INTERPRET") == "1"  # --smoke: CPU interpreter dry run of this script
DEV = "cpu" if SMOKE else "cuda"
# --smoke maps every size to a small one of the same divisibility, to exercise all code paths fast
_SMALL = {16384: 64, 12288: 512, 9216: 384, 4096: 64, 3072: 256, 2560: 320, 3071: 47, 3000: 96, 1024: 128, 1000: 40,
          999: 31, 777: 37, 700: 70, 600: 30, 555: 23, 513: 33, 512: 128, 500: 50, 333: 33}
LOG: list[str] = []
RESULTS: list[dict] = []
LOG_FILE: Path | None = None


def log(msg: str = "") -> None:
    """Print and append to bench.log at once (a run killed at its limit keeps its log)."""
    print(msg, flush=True)
    LOG.append(msg)
    if LOG_FILE is not None:
        with LOG_FILE.open("a") as f:
            f.write(msg + "\n")


def elapsed() -> float:
    return time.time() - T0


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def S(n: int) -> int:
    """A size as given on the GPU, or its small stand-in in --smoke mode."""
    return _SMALL.get(n, n) if SMOKE else n


def capability() -> tuple[int, int]:
    return (9, 0) if SMOKE else torch.cuda.get_device_capability()


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of fn (device events via do_bench); one wall-clock call in --smoke."""
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


# ----------------------------------------------------------------------------- ceilings


def ceilings() -> None:
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = bench(lambda: a @ b)
    log(f"ceiling: bf16 8192^3 matmul {2 * 8192**3 / t / 1e9:.0f} TFLOP/s ({t:.3f} ms)")
    src = torch.randn(256 * 1024 * 1024, device=DEV, dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))
    log(f"ceiling: device copy {2 * src.numel() * 4 / t / 1e6:.0f} GB/s (read+write, {t:.3f} ms)")


# ----------------------------------------------------------------------------- correctness


def check(name: str, fn) -> None:
    try:
        detail = fn()
        log(f"CHECK ok   {name:58s} {detail}")
        RESULTS.append({"check": name, "ok": True, "detail": detail})
    except Exception as e:
        log(f"CHECK FAIL {name:58s} {type(e).__name__}: {str(e)[:300]}")
        RESULTS.append({"check": name, "ok": False, "detail": traceback.format_exc(limit=4)})


def _act_check(m: int, k: int, two_pass: bool = False, **kw) -> str:
    x = torch.randn(m, k, device=DEV, dtype=kw.pop("dtype", torch.bfloat16)) * 3
    r = kw.pop("r", 0)
    ld = (torch.randn(k, r, device=DEV) * 0.03).to(torch.bfloat16) if r else None
    if kw.pop("smooth", False):
        kw["smooth"] = torch.rand(k, device=DEV) + 0.5
    poison = torch.full((m, k), -128, dtype=torch.int8, device=DEV)
    got = act_quant(x, lora_down=ld, out_q=poison, two_pass=two_pass, **kw)
    ref = act_quant_ref(x, lora_down=ld, **kw)
    sync()
    qmax = (1 << (kw.get("bits", 4) - 1)) - 1
    assert int(got.q.min()) >= -qmax, "unwritten (poisoned) q"
    d = (got.q.int() - ref.q.int()).abs()
    frac = float((d > 0).float().mean())
    if kw.get("hadamard_block"):
        assert int(d.max()) <= 1 and frac < 1e-3, f"q mismatch frac {frac}"
    else:
        assert int(d.max()) == 0, f"{int((d > 0).sum())} q differ"
    es = rel(got.scale, ref.scale)
    assert es < 1e-5, f"scale err {es}"
    out = f"q mismatch {frac:.1e} scale {es:.1e}"
    if ld is not None:
        e = rel(got.lowrank.float(), ref.lowrank.float())
        assert e < 1e-2, f"lowrank {e}"
        out += f" lowrank {e:.1e}"
    if ref.rowsum is not None:
        gs = kw["rowsum_group"] or k
        assert torch.equal(got.rowsum, got.q.int().reshape(m, -1, gs).sum(-1).int())
    return out


def _gemm_check(m: int, n: int, k: int, impl: str, group=None, asym=False, bits=4, r=0, bias=False,
                act=None, gate=False, res=False, fp8=False, fp8_acc_k=0, config=None) -> str:
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=DEV)
    qw, sw, zw = quantize_weight(w, bits, group, not asym, torch.float16)
    ld = (torch.randn(k, r, device=DEV) * 0.03).to(torch.bfloat16) if r else None
    aq = act_quant_ref(x, bits, group, lora_down=ld, rowsum_group=(group or 0) if asym else None)
    kw = dict(
        wzero=zw, rowsum=aq.rowsum, bias=torch.randn(n, device=DEV) if bias else None,
        lowrank=aq.lowrank, lora_up=(torch.randn(r, n, device=DEV) * 0.03).to(torch.bfloat16) if r else None,
        activation=act,
        gate=torch.randn(m, n, device=DEV, dtype=torch.bfloat16) if gate else None,
        residual=torch.randn(m, n, device=DEV, dtype=torch.bfloat16) if res else None,
    )
    qa, qww = aq.q, qw
    if fp8:
        qa, qww = qa.to(torch.float8_e4m3fn), qw.to(torch.float8_e4m3fn)
    out = torch.full((m, n), float("nan"), device=DEV, dtype=torch.float32)
    got = qg.qgemm(qa, aq.scale, qww, sw, out=out, impl=impl, config=config, fp8_acc_k=fp8_acc_k, **kw)
    ref = qgemm_ref(aq.q, aq.scale, qw, sw, out_dtype=torch.float32, **kw)
    sync()
    assert not torch.isnan(got).any(), "unwritten (poisoned) outputs"
    e = rel(got, ref)
    assert e < (1e-4 if not fp8 else 1e-3), f"rel err {e:.2e}"
    return f"rel {e:.1e}"


def _qlinear_check(m: int, k: int, n: int, **kw) -> str:
    lin = torch.nn.Linear(k, n, device=DEV)
    smooth = torch.rand(k, device=DEV) + 0.5 if kw.pop("smooth", False) else None
    ql = QuantLinear.from_linear(lin, smooth=smooth, **kw)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    y = ql(x)
    ql.backend = "reference"
    yr = ql(x)
    ql.backend = "auto"
    e = rel(y.float(), yr.float())
    assert e <= 1e-2, f"triton vs reference {e:.2e}"
    yf = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    return f"vs ref {e:.1e}; quantization error vs fp32 linear {rel(y.float(), yf):.3f}"


def _act_inputs(m: int, k: int, dtype=torch.bfloat16, r: int = 0, smooth: bool = False) -> tuple:
    x = torch.randn(m, k, device=DEV, dtype=dtype) * 3
    ld = (torch.randn(k, r, device=DEV) * 0.03).to(torch.bfloat16) if r else None
    sm = torch.rand(k, device=DEV) + 0.5 if smooth else None
    return x, ld, sm


def _act_fp8_out_check(m: int, k: int) -> str:
    """q written straight as float8_e4m3fn (the _scaled_mm operand) equals the int8 q."""
    x, ld, sm = _act_inputs(m, k, r=32, smooth=True)
    q8 = torch.full((m, k), float("nan"), device=DEV).to(torch.float8_e4m3fn)
    a = act_quant(x, 4, smooth=sm, lora_down=ld, out_q=q8)
    b = act_quant(x, 4, smooth=sm, lora_down=ld)
    sync()
    assert not torch.isnan(a.q.float()).any(), "unwritten (poisoned) q"
    assert torch.equal(a.q.float(), b.q.float()) and torch.equal(a.scale, b.scale)
    return "exact"


def act_checks(quick: bool) -> None:
    """Activation-quantizer checks of the default dispatch (the whole-row tile kernel where it
    applies, else two-pass) and of the two-pass kernel forced on modes the tile kernel serves, vs
    the reference. ``quick`` keeps one per kernel mode (each variant is a compile, seconds each)."""
    fp8 = SMOKE or capability() >= (8, 9)
    if quick:
        check("act_quant b4 smooth+lora32 1000x3072", lambda: _act_check(S(1000), S(3072), bits=4, smooth=True, r=32))
        check("act_quant b4 group64+rowsum 1000x3072",
              lambda: _act_check(S(1000), S(3072), bits=4, group_size=64, rowsum_group=64))
        check("act_quant b4 hadamard128+lora 1000x3072",
              lambda: _act_check(S(1000), S(3072), bits=4, hadamard_block=128, r=32))
        check("act_quant two-pass b3 smooth rowsum 555x200",
              lambda: _act_check(S(555), 200, two_pass=True, bits=3, smooth=True, rowsum_group=0))
        if fp8:
            check("act_quant fp8 e4m3 q out 1000x3072", lambda: _act_fp8_out_check(S(1000), S(3072)))
        return
    for m, k in ((S(777), 200), (S(1000), S(3072))):
        check(f"act_quant b4 per-token {m}x{k}", lambda: _act_check(m, k, bits=4))
        check(f"act_quant b8 per-token {m}x{k}", lambda: _act_check(m, k, bits=8))
    check("act_quant b4 smooth+lora32 1000x3072", lambda: _act_check(S(1000), S(3072), bits=4, smooth=True, r=32))
    check("act_quant b4 group64+rowsum 1000x3072", lambda: _act_check(S(1000), S(3072), bits=4, group_size=64, rowsum_group=64))
    check("act_quant b4 group32 smooth 555x192", lambda: _act_check(S(555), S(192), bits=4, group_size=32, smooth=True))
    check("act_quant b4 hadamard128+lora 1000x3072", lambda: _act_check(S(1000), S(3072), bits=4, hadamard_block=128, r=32))
    check("act_quant b4 hadamard64+smooth 1000x3072", lambda: _act_check(S(1000), S(3072), bits=4, hadamard_block=64, smooth=True))
    check("act_quant b4 per-token rowsum 777x3072", lambda: _act_check(S(777), S(3072), bits=4, rowsum_group=0))
    check("act_quant fp16 in, lora", lambda: _act_check(S(333), S(512), bits=4, dtype=torch.float16, r=16))
    check("act_quant fp32 in, hadamard", lambda: _act_check(S(333), S(512), bits=4, dtype=torch.float32, hadamard_block=128))
    check("act_quant two-pass b8 per-token 777x4096", lambda: _act_check(S(777), S(4096), two_pass=True, bits=8))
    check("act_quant two-pass b3 smooth rowsum 555x200",
          lambda: _act_check(S(555), 200, two_pass=True, bits=3, smooth=True, rowsum_group=0))
    check("act_quant two-pass b4 group32 smooth 555x192",
          lambda: _act_check(S(555), S(192), two_pass=True, bits=4, group_size=32, smooth=True))
    if fp8:
        check("act_quant fp8 e4m3 q out 1000x3072", lambda: _act_fp8_out_check(S(1000), S(3072)))


def correctness(quick: bool) -> None:
    log("== correctness (GPU, fresh random inputs, poisoned outputs) ==")
    act_checks(False)

    def unpack_check() -> str:
        q = torch.randint(-8, 8, (S(3071), S(3072)), device=DEV, dtype=torch.int8)
        out = torch.full_like(q, -128)
        got = unpack_int4_to_int8(pack_int4(q), S(3072), out=out)
        assert torch.equal(got, q)
        qo = torch.randint(0, 16, (77, 131), device=DEV, dtype=torch.int8)
        p = pack_int4(torch.cat((qo, torch.zeros(77, 1, dtype=torch.int8, device=DEV)), 1))
        assert torch.equal(unpack_int4_to_int8(p, 131, signed=False), qo)
        return "exact"

    check("unpack int4->int8 (signed even, unsigned odd K)", unpack_check)
    for impl in ("ptr", "tma", "persistent"):
        check(f"qgemm {impl} channel ragged 1000x3000x3072 lora bias",
              lambda: _gemm_check(S(1000), S(3000), S(3072), impl, r=32, bias=True))
        check(f"qgemm {impl} channel ragged-K 777x333x208", lambda: _gemm_check(S(777), S(333), S(208), impl))
        check(f"qgemm {impl} w8a8 1000x1000x3072", lambda: _gemm_check(S(1000), S(1000), S(3072), impl, bits=8))
        check(f"qgemm {impl} group64 lora 1000x3000x3072", lambda: _gemm_check(S(1000), S(3000), S(3072), impl, group=64, r=32))
        check(f"qgemm {impl} group128 asym 600x500x1024",
              lambda: _gemm_check(S(600), S(500), S(1024), impl, group=128, asym=True))
        check(f"qgemm {impl} asym channel gelu gate res 513x700x512",
              lambda: _gemm_check(S(513), S(700), S(512), impl, asym=True, r=16, bias=True, act="gelu_tanh", gate=True, res=True))
        for acck in (0, 128):
            check(f"qgemm {impl} fp8 operands acc_k={acck} 1000x1000x3072",
                  lambda: _gemm_check(S(1000), S(1000), S(3072), impl, fp8=True, fp8_acc_k=acck))
    check("QuantLinear W4A4 smooth r32 auto-path 4096x3072->3072",
          lambda: _qlinear_check(S(4096), S(3072), S(3072), bits=4, act_bits=4, rank=32, smooth=True))
    check("QuantLinear W4A4 g64 asym gelu 999x1024->4096",
          lambda: _qlinear_check(S(999), S(1024), S(4096), bits=4, act_bits=4, group_size=64, symmetric=False,
                                 activation="gelu_tanh"))
    check("QuantLinear W8A8 4096x3072->3072", lambda: _qlinear_check(S(4096), S(3072), S(3072), bits=8, act_bits=8))


# ----------------------------------------------------------------------------- timing


def _float_operands(layer: object, m: int, k: int, n: int, r: int) -> None:
    """The bf16 operands every layer bench starts from (x, W, bias, smoothing, low-rank), seeded by shape."""
    g = torch.Generator(device=DEV).manual_seed(m + k + n)
    layer.x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16, generator=g)
    layer.w = (torch.randn(n, k, device=DEV, generator=g) / math.sqrt(k)).to(torch.bfloat16)
    layer.bias = torch.randn(n, device=DEV, generator=g).to(torch.bfloat16)
    layer.bias32 = layer.bias.float()
    layer.smooth = torch.rand(k, device=DEV, generator=g) + 0.5
    layer.ld = (torch.randn(k, r, device=DEV, generator=g) * 0.03).to(torch.bfloat16)
    layer.lu = (torch.randn(r, n, device=DEV, generator=g) * 0.03).to(torch.bfloat16)


class Layer:
    """Operands of one linear layer in every format, built once per shape."""

    def __init__(self, m: int, k: int, n: int, r: int = 32) -> None:
        self.m, self.k, self.n, self.r = m, k, n, r
        _float_operands(self, m, k, n, r)
        q4, self.s4, _ = quantize_weight(self.w.float(), 4, None, True, torch.float16)
        self.p4 = pack_int4(q4)
        self.w4 = unpack_int4_to_int8(self.p4, k)
        q4g, self.s4g, _ = quantize_weight(self.w.float(), 4, 64, True, torch.float16)
        self.p4g = pack_int4(q4g)
        self.w4g = unpack_int4_to_int8(self.p4g, k)
        self.w8, self.s8, _ = quantize_weight(self.w.float(), 8, None, True, torch.float16)
        self.aq4 = act_quant(self.x, 4, smooth=self.smooth, lora_down=self.ld)
        self.aq4g = act_quant(self.x, 4, 64, smooth=self.smooth, lora_down=self.ld)
        self.aq8 = act_quant(self.x, 8)
        self.out = torch.empty(m, n, device=DEV, dtype=torch.bfloat16)

    def ops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def bytes_bf16(self) -> int:
        return self.n * self.k * 2

    def bytes_w8(self) -> int:
        return self.n * self.k + self.n * 2

    def bytes_w4(self, group: int | None = None) -> int:
        scales = self.n * (self.k // group if group else 1) * 2
        return self.n * self.k // 2 + scales + (self.k + self.n) * self.r * 2


def w4a4_full(L: Layer, w8: torch.Tensor | None, impl: str, cfg: dict | None, group: int | None = None,
              act_cfg: dict | None = None) -> None:
    """act-quant (smooth + low-rank down) + GEMM (low-rank up + bias); w8=None unpacks per call."""
    packed, scale = (L.p4g, L.s4g) if group else (L.p4, L.s4)
    w = w8 if w8 is not None else unpack_int4_to_int8(packed, L.k)
    aq = act_quant(L.x, 4, group, smooth=L.smooth, lora_down=L.ld, config=act_cfg)
    qg.qgemm(aq.q, aq.scale, w, scale, bias=L.bias32, lowrank=aq.lowrank, lora_up=L.lu, out=L.out,
             impl=impl, config=cfg)


def w8a8_full(L: Layer, impl: str, cfg: dict | None) -> None:
    aq = act_quant(L.x, 8)
    qg.qgemm(aq.q, aq.scale, L.w8, L.s8, bias=L.bias32, out=L.out, impl=impl, config=cfg)


def row(shape: str, variant: str, ms: float, ops: float, base_ms: float | None, wbytes: float | None = None) -> dict:
    rec = {"shape": shape, "variant": variant, "ms": ms, "tops": ops / ms / 1e9,
           "speedup": (base_ms / ms) if base_ms else None, "wbytes_ratio": wbytes}
    RESULTS.append(rec)
    sp = f"{rec['speedup']:.2f}x" if rec["speedup"] else "-"
    wb = f"{wbytes:.3f}" if wbytes else ""
    log(f"TIME {shape:22s} {variant:46s} {ms:8.4f} ms {rec['tops']:7.0f} TOPS {sp:>7s} {wb}")
    return rec


def best_config(L: Layer, impl: str, group: int | None, with_lora: bool, sweep: bool) -> tuple[dict, float]:
    """Time every candidate config of one GEMM implementation; return the fastest."""
    arch = "sm90" if capability()[0] >= 9 else "sm80"
    aq = L.aq4g if group else L.aq4
    w, s = (L.w4g, L.s4g) if group else (L.w4, L.s4)
    kw = dict(bias=L.bias32, lowrank=aq.lowrank, lora_up=L.lu) if with_lora else {}
    yref = qgemm_ref(aq.q, aq.scale, w, s, **kw)
    best, best_t = None, float("inf")
    for cfg in qg.gemm_configs(arch, bool(group)) if sweep else qg.gemm_configs(arch, bool(group))[:2]:
        try:
            L.out.fill_(float("nan"))
            qg.qgemm(aq.q, aq.scale, w, s, out=L.out, impl=impl, config=cfg, **kw)
            e = rel(L.out.float(), yref.float())
            if not e < 1e-2 or bool(torch.isnan(L.out).any()):
                log(f"CHECK FAIL {impl} {tuple(cfg.values())} g={group}: rel err {e:.2e} at full size")
                RESULTS.append({"check": f"{impl} {cfg} g={group}", "ok": False, "detail": f"{e}"})
                continue
            t = bench(lambda: qg.qgemm(aq.q, aq.scale, w, s, out=L.out, impl=impl, config=cfg, **kw), rep=60)
        except Exception as e:
            log(f"  {impl} {tuple(cfg.values())}: failed {type(e).__name__}: {str(e)[:120]}")
            continue
        log(f"  sweep {impl:10s} g={group or 'ch'} {str(tuple(cfg.values())):34s} {t:.4f} ms "
            f"{L.ops() / t / 1e9:6.0f} TOPS (checked: rel {e:.1e})")
        if t < best_t:
            best, best_t = cfg, t
    return best, best_t


def timing(shapes: list[tuple[int, int, int]], sweep: bool, budget_s: float) -> None:
    cap = capability()
    impls = ["ptr", "tma", "persistent"] if cap[0] >= 9 else ["ptr"]
    for si, (m, k, n) in enumerate(shapes):
        if elapsed() > budget_s:
            log(f"(time budget reached: skipping shape {m}x{k}->{n})")
            continue
        main = si < 2
        shape = f"M={m} K={k} N={n}"
        log(f"== timing {shape} ==")
        L = Layer(m, k, n)
        t_bf16 = bench(lambda: F.linear(L.x, L.w, L.bias))
        row(shape, "cuBLAS bf16 (F.linear + bias)", t_bf16, L.ops(), t_bf16, 1.0)
        qa8t = L.aq8.q
        try:
            t = bench(lambda: torch._int_mm(qa8t, L.w8.t()))
            row(shape, "cuBLAS int8 torch._int_mm (GEMM only)", t, L.ops(), t_bf16)
        except Exception as e:
            log(f"  _int_mm unavailable: {e}")
        try:
            a8 = L.aq4.q.to(torch.float8_e4m3fn)
            b8 = L.w4.to(torch.float8_e4m3fn)
            one = torch.ones((), device=DEV)
            t = bench(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
            row(shape, "cuBLAS fp8 torch._scaled_mm (GEMM only)", t, L.ops(), t_bf16)
        except Exception as e:
            log(f"  _scaled_mm unavailable: {e}")

        # GEMM implementation / config sweep (W4A4 per-channel, low-rank epilogue)
        found = {}
        for impl in impls if main else impls[:2]:
            cfg, t = best_config(L, impl, None, True, sweep and main)
            if cfg is not None:
                found[impl] = (cfg, t)
        if not found:
            log("no GEMM config ran")
            continue
        impl, (cfg, t_gemm) = min(found.items(), key=lambda kv: kv[1][1])
        log(f"  best GEMM: {impl} {cfg}")
        for i2, (c2, t2) in sorted(found.items(), key=lambda kv: kv[1][1]):
            row(shape, f"W4A4 GEMM only [{i2}] (+r32 +bias epilogue)", t2, L.ops(), t_bf16)
        aq = L.aq4
        t = bench(lambda: qg.qgemm(aq.q, aq.scale, L.w4, L.s4, out=L.out, impl=impl, config=cfg))
        row(shape, f"W4A4 GEMM only, no epilogue extras [{impl}]", t, L.ops(), t_bf16)
        t_unpack = bench(lambda: unpack_int4_to_int8(L.p4, k))
        row(shape, "int4->int8 weight unpack alone", t_unpack, L.ops(), t_bf16)
        t_aq = bench(lambda: act_quant(L.x, 4, smooth=L.smooth, lora_down=L.ld))
        row(shape, "act-quant alone (smooth + r32 down) [two-pass]", t_aq, L.ops(), t_bf16)
        for two, tag in ((False, "auto: whole-row tile"), (True, "two-pass")):
            t_aq0 = bench(lambda: act_quant(L.x, 4, two_pass=two))
            row(shape, f"act-quant alone (plain) [{tag}]", t_aq0, L.ops(), t_bf16)
        t_c = bench(lambda: w4a4_full(L, L.w4, impl, cfg))
        row(shape, f"W4A4 linear, cached int8 W [{impl}]", t_c, L.ops(), t_bf16, L.bytes_w4() * 2 / L.bytes_bf16())
        t_u = bench(lambda: w4a4_full(L, None, impl, cfg))
        row(shape, f"W4A4 linear, unpack W per call [{impl}]", t_u, L.ops(), t_bf16, L.bytes_w4() / L.bytes_bf16())
        # W8A8
        aq8 = L.aq8
        # (config=None: qgemm's own one-time tuner picks and caches the config)
        t = bench(lambda: qg.qgemm(aq8.q, aq8.scale, L.w8, L.s8, bias=L.bias32, out=L.out, impl=impl))
        row(shape, f"W8A8 GEMM only [{impl}, self-tuned]", t, L.ops(), t_bf16)
        t = bench(lambda: w8a8_full(L, impl, None))
        row(shape, f"W8A8 linear [{impl}]", t, L.ops(), t_bf16, L.bytes_w8() / L.bytes_bf16())
        # per-group W4A4 (g = 64)
        gcfg, t_g = best_config(L, impl, 64, True, sweep and main)
        if gcfg is not None:
            row(shape, f"W4A4 g64 GEMM only [{impl}]", t_g, L.ops(), t_bf16)
            t = bench(lambda: w4a4_full(L, L.w4g, impl, gcfg, group=64))
            row(shape, f"W4A4 g64 linear, cached int8 W [{impl}]", t, L.ops(), t_bf16,
                L.bytes_w4(64) * 2 / L.bytes_bf16())
        # the public module path (self-tuned impl/config, as model code runs it)
        lin = torch.nn.Linear(k, n, device=DEV, dtype=torch.bfloat16)
        with torch.no_grad():
            lin.weight.copy_(L.w)
            lin.bias.copy_(L.bias)
        for cache in (True, False):
            ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, rank=32, smooth=L.smooth, cache_int8=cache)
            ql(L.x)  # tunes once
            t = bench(lambda: ql(L.x))
            row(shape, f"QuantLinear W4A4 r32 module, cache_int8={cache}", t, L.ops(), t_bf16,
                ql.weight_bytes() * (2 if cache else 1) / L.bytes_bf16())
        ql8 = QuantLinear.from_linear(lin, bits=8, act_bits=8)
        ql8(L.x)
        t = bench(lambda: ql8(L.x))
        row(shape, "QuantLinear W8A8 module", t, L.ops(), t_bf16, ql8.weight_bytes() / L.bytes_bf16())
        if main:
            # fp8 operands through the same Triton kernel (int4 values are exact in e4m3)
            a8 = L.aq4.q.to(torch.float8_e4m3fn)
            b8 = L.w4.to(torch.float8_e4m3fn)
            for acck in (0, 128):
                try:
                    t = bench(lambda: qg.qgemm(a8, aq.scale, b8, L.s4, bias=L.bias32, lowrank=aq.lowrank,
                                               lora_up=L.lu, out=L.out, impl=impl, config=cfg, fp8_acc_k=acck))
                    row(shape, f"fp8-operand GEMM only acc_k={acck} [{impl}]", t, L.ops(), t_bf16)
                except Exception as e:
                    log(f"  fp8 variant failed: {type(e).__name__}: {str(e)[:150]}")
            # Hadamard act-quant cost
            t = bench(lambda: act_quant(L.x, 4, hadamard_block=128, lora_down=L.ld))
            row(shape, "act-quant alone (hadamard128 + r32)", t, L.ops(), t_bf16)
            # full-size correctness of the timed path
            y = torch.full((m, n), float("nan"), device=DEV, dtype=torch.bfloat16)
            L.out = y
            w4a4_full(L, None, impl, cfg)
            aqr = act_quant_ref(L.x, 4, smooth=L.smooth, lora_down=L.ld)
            yr = qgemm_ref(aqr.q, aqr.scale, L.w4, L.s4, bias=L.bias32, lowrank=aqr.lowrank, lora_up=L.lu)
            e = rel(y.float(), yr.float())
            log(f"CHECK {'ok  ' if e < 1e-2 and not torch.isnan(y).any() else 'FAIL'} timed W4A4 path at {shape}: rel err vs reference {e:.2e}")
            L.out = torch.empty(m, n, device=DEV, dtype=torch.bfloat16)
        L = None  # free this shape's tensors before the next one  # noqa: F841
        if not SMOKE:
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- quick mode

QUICK_SHAPES = [(16384, 3072), (16384, 2560), (4096, 3072), (4096, 2560)]  # (M, K = N)


def _quick_gemm() -> tuple[str, dict | None]:
    """One fixed GEMM implementation/config for the quick rows: qgemm's own tuner would compile
    12 variants per shape, over the time budget."""
    if SMOKE:
        return "ptr", None  # the interpreter's small default
    arch = "sm90" if capability()[0] >= 9 else "sm80"
    return ("tma" if arch == "sm90" else "ptr"), qg.gemm_configs(arch, False)[0]


class QuickLayer:
    """One K -> N=K linear layer: bf16 weights, int4 weights (int8 containers, per-channel
    scales), smoothing, r=32 low-rank branch, and the e4m3 operands for cuBLAS fp8."""

    def __init__(self, m: int, k: int, r: int = 32) -> None:
        self.m, self.k, self.n = m, k, k
        _float_operands(self, m, k, k, r)
        self.w4, self.s4, _ = quantize_weight(self.w.float(), 4, None, True, torch.float16)
        self.out = torch.empty(m, k, device=DEV, dtype=torch.bfloat16)
        # cuBLAS fp8: e4m3 holds -8..7 exactly; row-wise scales (M, 1) x (1, N) in fp32
        self.w8 = self.w4.to(torch.float8_e4m3fn)
        self.sb = self.s4.float().reshape(1, -1).contiguous()
        self.a8 = torch.empty(m, k, device=DEV, dtype=torch.float8_e4m3fn)

    def ops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def act(self, out_q: torch.Tensor | None = None):
        return act_quant(self.x, 4, smooth=self.smooth, lora_down=self.ld, out_q=out_q)

    def w4a4(self, impl: str, cfg: dict | None) -> torch.Tensor:
        """The W4A4 layer on our kernels: act-quant (smooth + r32 down) + GEMM (r32 up + bias)."""
        aq = self.act()
        return qg.qgemm(aq.q, aq.scale, self.w4, self.s4, bias=self.bias32, lowrank=aq.lowrank, lora_up=self.lu,
                        out=self.out, impl=impl, config=cfg)

    def reference(self) -> torch.Tensor:
        aq = act_quant_ref(self.x, 4, smooth=self.smooth, lora_down=self.ld)
        return qgemm_ref(aq.q, aq.scale, self.w4, self.s4, bias=self.bias32, lowrank=aq.lowrank, lora_up=self.lu,
                         out_dtype=torch.float32)


class Fp8Path:
    """W4A4 through cuBLAS fp8 (torch._scaled_mm): e4m3 operands holding the int4 values,
    per-token scale_a (M, 1) and per-channel scale_b (1, N) in fp32, bf16 out, bias in
    cuBLAS where this torch accepts it; the r=32 up-projection added by torch.addmm."""

    def __init__(self, L: QuickLayer) -> None:
        self.L = L
        self.bias_in_mm = True
        self.q_out_fp8 = True
        aq = L.act()
        self.a8, self.sa = aq.q.to(torch.float8_e4m3fn), aq.scale
        try:
            self.gemm(self.a8, self.sa)
        except Exception as e:  # e.g. row-wise scaling without bias support in this torch
            self.bias_in_mm = False
            log(f"  _scaled_mm: bias= not usable with row-wise scales here ({type(e).__name__}: "
                f"{str(e)[:160]}); bias added by a separate add_")
            self.gemm(self.a8, self.sa)  # raises if _scaled_mm itself cannot run: no fp8 rows
        try:
            L.act(out_q=L.a8)
        except Exception as e:
            self.q_out_fp8 = False
            log(f"  act-quant cannot write e4m3 q ({type(e).__name__}: {str(e)[:160]}); "
                f"the fp8 layer row converts int8 q with .to() (an extra pass)")

    def gemm(self, a8: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
        L = self.L
        y = torch._scaled_mm(a8, L.w8.t(), scale_a=sa, scale_b=L.sb, bias=L.bias if self.bias_in_mm else None,
                             out_dtype=torch.bfloat16)
        return y if self.bias_in_mm else y.add_(L.bias)

    def layer(self) -> torch.Tensor:
        """act-quant (e4m3 q) + _scaled_mm + low-rank up-projection (addmm)."""
        L = self.L
        if self.q_out_fp8:
            aq = L.act(out_q=L.a8)
            a8 = L.a8
        else:
            aq = L.act()
            a8 = aq.q.to(torch.float8_e4m3fn)
        return self.gemm(a8, aq.scale).addmm_(aq.lowrank, L.lu)


def _fp8_checks(L: QuickLayer, f8: Fp8Path, shape: str) -> None:
    """_scaled_mm on the int4 integers vs our reference GEMM on the same integers."""
    def gemm_alone() -> str:
        aq = L.act()
        y = f8.gemm(aq.q.to(torch.float8_e4m3fn), aq.scale)
        yr = qgemm_ref(aq.q, aq.scale, L.w4, L.s4, bias=L.bias32, out_dtype=torch.float32)
        e = rel(y.float(), yr)
        assert e < 1e-2, f"rel err {e:.2e}"
        return f"rel err vs reference GEMM {e:.2e} (bf16 out)"

    def layer() -> str:
        e = rel(f8.layer().float(), L.reference())
        assert e < 1e-2, f"rel err {e:.2e}"
        return f"rel err vs reference layer {e:.2e}"

    check(f"fp8 _scaled_mm W4A4 GEMM {shape}", gemm_alone)
    check(f"fp8 layer (act + _scaled_mm + addmm) {shape}", layer)


def quick_timing() -> None:
    """Act-quant (smooth + r32: the two-pass kernel), the W4A4 layer on it, and the cuBLAS fp8 route."""
    impl, cfg = _quick_gemm()
    log(f"== quick timing (GEMM for the layer rows: {impl} {cfg}; act-quant: smooth + r=32) ==")
    for m, k in [(S(m), S(k)) for m, k in QUICK_SHAPES]:
        shape = f"M={m} K=N={k}"
        L = QuickLayer(m, k)
        t_bf16 = bench(lambda: F.linear(L.x, L.w, L.bias))
        row(shape, "cuBLAS bf16 (F.linear + bias)", t_bf16, L.ops(), t_bf16)
        floor_ms = (m * k * 3) / 3.0e12 * 1e3
        t = bench(L.act)
        row(shape, "act-quant two-pass (smooth + r32)", t, L.ops(), t_bf16)
        log(f"  ({m * k * 3 / t / 1e6:.0f} GB/s of x read + q written; floor at 3 TB/s {floor_ms:.4f} ms)")
        L.out.fill_(float("nan"))
        e = rel(L.w4a4(impl, cfg).float(), L.reference())
        log(f"CHECK {'ok  ' if e < 1e-2 else 'FAIL'} W4A4 layer, {shape}: rel err vs reference {e:.2e}")
        RESULTS.append({"check": f"w4a4 layer {shape}", "ok": e < 1e-2, "detail": f"{e}"})
        aq = L.act()
        t = bench(lambda: qg.qgemm(aq.q, aq.scale, L.w4, L.s4, bias=L.bias32, lowrank=aq.lowrank, lora_up=L.lu,
                                   out=L.out, impl=impl, config=cfg))
        row(shape, f"W4A4 GEMM only [{impl}] (+r32 +bias)", t, L.ops(), t_bf16)
        t = bench(lambda: L.w4a4(impl, cfg))
        row(shape, f"W4A4 linear, act + GEMM [{impl}]", t, L.ops(), t_bf16)
        try:
            f8 = Fp8Path(L)
        except Exception as e:
            log(f"  cuBLAS fp8 path unavailable: {type(e).__name__}: {str(e)[:200]}")
        else:
            _fp8_checks(L, f8, shape)
            a8, sa = f8.a8, f8.sa
            t = bench(lambda: f8.gemm(a8, sa))
            row(shape, "cuBLAS fp8 _scaled_mm W4A4 (row-wise scales)", t, L.ops(), t_bf16)
            t = bench(f8.layer)
            row(shape, "act (e4m3 q) + _scaled_mm + addmm r32", t, L.ops(), t_bf16)
        log(f"  (elapsed {elapsed():.0f} s)")
        L = None  # noqa: F841
        if not SMOKE:
            torch.cuda.empty_cache()


def act_sweep(m: int, k: int) -> None:
    log(f"== act-quant launch sweep M={m} K={k} (smooth + r32) ==")
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    sm = torch.rand(k, device=DEV) + 0.5
    ld = (torch.randn(k, 32, device=DEV) * 0.03).to(torch.bfloat16)
    ref = act_quant(x, 4, smooth=sm, lora_down=ld)
    floor_ms = (m * k * 2 + m * k) / 3.0e12 * 1e3
    cands = [{"BLOCK_M": bm, "BLOCK_K": bk, "num_warps": nw} for bm in (16, 32, 64) for bk in (128, 256) for nw in (4, 8)]
    for cfg in cands:
        tag = f"2-pass {cfg['BLOCK_M']:3d}x{cfg['BLOCK_K']:4d} w{cfg['num_warps']:2d}"
        try:
            got = act_quant(x, 4, smooth=sm, lora_down=ld, config=cfg)
            if not torch.equal(got.q, ref.q):
                log(f"CHECK FAIL act-quant {tag}: q differs from the two-pass default's")
                continue
            t = bench(lambda: act_quant(x, 4, smooth=sm, lora_down=ld, config=cfg), rep=50)
            log(f"  act {tag}: {t:.4f} ms ({(m * k * 3) / t / 1e6:.0f} GB/s; floor@3TB/s {floor_ms:.4f})")
        except Exception as e:
            log(f"  act {tag} failed: {type(e).__name__}: {str(e)[:150]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="time every GEMM config and act-quant launch shape")
    ap.add_argument("--quick", action="store_true",
                    help="act-quant checks + act-quant, layer and cuBLAS fp8 timing rows only (< 150 s)")
    ap.add_argument("--main-shapes", action="store_true", help="only the two main shapes")
    ap.add_argument("--checks-only", action="store_true", help="run the correctness checks, no timing")
    ap.add_argument("--skip-checks", action="store_true",
                    help="timing only (the 48 checks take ~5 min on an H100; run them in another call)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which timing stops")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench.log / bench.json")
    args = ap.parse_args()
    if args.skip_checks and (args.checks_only or args.quick):
        ap.error("--skip-checks times the full bench; it does not combine with --checks-only or --quick")
    global LOG_FILE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = out / "bench.log"
    LOG_FILE.write_text("")
    if not torch.cuda.is_available() and not SMOKE:
        print("no CUDA device: nothing to benchmark (TRITON_INTERPRET=1 runs a CPU dry run)", file=sys.stderr)
        return 2
    if SMOKE:
        log("SMOKE dry run on the CPU interpreter: sizes shrunk, times meaningless")
    else:
        p = torch.cuda.get_device_properties(0)
        log(f"device {p.name} sm_{p.major}{p.minor} {p.multi_processor_count} SMs; torch {torch.__version__}, "
            f"triton {triton.__version__}, date {time.strftime('%Y-%m-%d')}")
        if not args.quick:  # (--quick quotes the act-quant floor at run 1's 3 TB/s copy rate)
            ceilings()
    if args.quick:
        log("== act-quant correctness (GPU, fresh random inputs, poisoned outputs) ==")
        act_checks(True)
        log(f"  (checks done at {elapsed():.0f} s)")
        quick_timing()
        return summary(out)
    if not args.skip_checks:
        correctness(args.quick)
    if args.checks_only:
        fails = [r["check"] for r in RESULTS if "check" in r and not r["ok"]]
        log(f"checks: {len(RESULTS) - len(fails)} ok, {len(fails)} failed {fails}")
        (out / "bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))
        return 1 if fails else 0
    shapes = [(16384, 3072, 3072), (16384, 3072, 12288)]
    if not args.main_shapes:
        shapes += [(16384, 12288, 3072), (4096, 3072, 3072), (16384, 3072, 9216)]
    shapes = [(S(m), S(k), S(n)) for m, k, n in shapes]
    timing(shapes, args.sweep, args.budget)
    if args.sweep and elapsed() < args.budget + 60:
        act_sweep(S(16384), S(3072))
    return summary(out)


def summary(out: Path) -> int:
    """The table of every timing row, the check tally, bench.json; exit 1 if a check failed."""
    log("")
    log("== summary ==")
    log(f"{'shape':22s} {'variant':46s} {'ms':>9s} {'TOPS':>7s} {'vs bf16':>8s} {'W bytes/bf16':>12s}")
    for r in RESULTS:
        if "variant" in r:
            sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
            wb = f"{r['wbytes_ratio']:.3f}" if r["wbytes_ratio"] else ""
            log(f"{r['shape']:22s} {r['variant']:46s} {r['ms']:9.4f} {r['tops']:7.0f} {sp:>8s} {wb:>12s}")
    fails = [r["check"] for r in RESULTS if "check" in r and not r["ok"]]
    log(f"checks: {sum(1 for r in RESULTS if 'check' in r) - len(fails)} ok, {len(fails)} failed {fails}")
    log(f"elapsed {elapsed():.0f} s")
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
