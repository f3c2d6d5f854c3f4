#!/usr/bin/env python
"""Whole-row act-quant kernel and LayerNorm + modulate + quantize fusion against the two-pass kernel (H100).

    PYTHONPATH=. python3 scripts/bench_act_tile.py [--out DIR]

Why: the two-pass act-quant kernel runs at ~40 % of the copy rate (docs/PERF.md, GPU run 4), and
the W4A4 layer goal (>= 1.5x cuBLAS bf16) needs the quantization near its memory floor or folded
into the op that produces x. In one run: (1) correctness of the tile kernel (`act_quant`'s default for
the modes without rotation or low-rank) and `norm_act_quant` on
the GPU against the reference at the timed shapes (and ragged M); (2) act-quant time per mode and
launch shape against the two-pass kernel and a bf16 -> int8 copy (the floor's traffic); (3)
LayerNorm + modulate in bf16 torch ops against the fused kernel; (4) the layer both ways: bf16
(LN + modulate + F.linear) against W4A4 (fused LN-modulate-quantize + int8 GEMM + bias), and the
plain layer (act-quant + GEMM vs F.linear) with each act kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrq.kernels import qgemm as qg  # noqa: E402
from vsrq.kernels.act_quant import act_quant, norm_act_quant  # noqa: E402
from vsrq.kernels.act_quant_tile import modulation_vectors, norm_modulate_ref, tile_config  # noqa: E402
from vsrq.kernels.reference import act_quant_ref  # noqa: E402
from vsrq.models.dit import modulate  # noqa: E402
from vsrq.quant.pack import quantize_weight  # noqa: E402
from vsrq.quant.qlinear import QuantLinear  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_run import RunLog, kernel_ms  # noqa: E402

EPS = 1e-6


def ms(fn) -> float:
    return kernel_ms(fn, 25, 100)


def configs(k: int) -> list[dict]:
    out = []
    for rows in (1, 2, 4):
        for warps in (2, 4, 8, 16):
            per_thread = rows * (1 << (k - 1).bit_length()) // (32 * warps)
            if 8 <= per_thread <= 64:
                out.append({"ROWS": rows, "num_warps": warps})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--norm-sweep", action="store_true", help="only time norm_act_quant's launch shapes")
    a = ap.parse_args()
    torch.manual_seed(0)
    log = RunLog("norm_sweep" if a.norm_sweep else "act_tile")
    rows = log.rows
    log.header()
    fails = 0
    if a.norm_sweep:
        norm_sweep(log)
        log.write(a.out)
        return 0

    # (1) correctness at the timed shapes
    for m, k in ((16384, 3072), (16384, 12288), (1000, 3072), (4099, 2560)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
        sm = torch.rand(k, device="cuda") + 0.5
        mod = modulation_vectors(torch.randn(k, device="cuda") * 0.3, torch.randn(k, device="cuda") * 0.3, k, x.device)
        for name, kw in {"plain": {}, "group32": {"group_size": 32}, "smooth+rowsum": {"smooth": sm, "rowsum_group": 0},
                         "group32+rowsum": {"group_size": 32, "rowsum_group": 32}}.items():
            ref = act_quant_ref(x, 4, **kw)
            got = act_quant(x, 4, **kw)  # the default dispatch: the tile kernel for these modes
            ok = torch.equal(got.q, ref.q) and torch.equal(got.scale, ref.scale) and (
                ref.rowsum is None or torch.equal(got.rowsum, ref.rowsum))
            fails += not ok
            log(f"check M={m} K={k} tile {name}: {'ok' if ok else 'FAILED'}")
        for name, kw in {"norm+mod": {}, "norm+mod group32": {"group_size": 32}}.items():
            ref = act_quant_ref(norm_modulate_ref(x, EPS, mod), 4, **kw)
            got = norm_act_quant(x, EPS, mod, 4, **kw)
            off = float((got.q != ref.q).float().mean())
            dq = int((got.q.to(torch.int16) - ref.q.to(torch.int16)).abs().max())
            srel = float(((got.scale - ref.scale).abs() / ref.scale).max())
            ok = dq <= 1 and off <= 1e-3 and srel < 1e-5
            fails += not ok
            log(f"check M={m} K={k} {name}: {'ok' if ok else 'FAILED'} (q off by one: {off:.2e} of values, "
                f"scale max rel diff {srel:.1e})")
        x = None
    torch.cuda.empty_cache()

    # (2) act-quant alone
    m = 16384
    for k in (3072, 12288):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        t_copy = ms(lambda: y.copy_(x))  # bf16 -> bf16: 4 bytes per value, the act-quant moves 3
        log(f"M={m} K={k}: bf16 copy {t_copy:.4f} ms ({m * k * 4 / t_copy / 1e9:.2f} TB/s); act-quant floor at that "
            f"rate {t_copy * 3 / 4:.4f} ms")
        for name, kw in {"plain": {}, "group32": {"group_size": 32}}.items():
            t2 = ms(lambda: act_quant(x, 4, two_pass=True, **kw))
            t_auto = ms(lambda: act_quant(x, 4, **kw))
            log(f"  {name:8s} act_quant default dispatch (tile, {tile_config()}): {t_auto:.4f} ms")
            best = None
            for cfg in configs(k):
                t = ms(lambda: act_quant(x, 4, config=cfg, **kw))
                log(f"  {name:8s} tile {cfg}: {t:.4f} ms")
                if best is None or t < best[0]:
                    best = (t, cfg)
            log(f"  {name:8s} two-pass {t2:.4f} ms; best tile {best[0]:.4f} ms {best[1]} = {t2 / best[0]:.2f}x faster, "
                f"{t_copy * 3 / 4 / best[0]:.2f} of the copy rate")
            rows.append({"k": k, "mode": name, "two_pass_ms": t2, "tile_ms": best[0], "tile_cfg": best[1],
                         "default_ms": t_auto, "copy_ms": t_copy})
        x = y = None  # noqa: F841 (free before the next shape)
        torch.cuda.empty_cache()

    # (3) + (4) LayerNorm + modulate + quantize, and the layer
    for k, n in ((3072, 3072), (3072, 12288)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        shift = (torch.randn(1, k, device="cuda") * 0.3).to(torch.bfloat16)
        scale = (torch.randn(1, k, device="cuda") * 0.3).to(torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) * 0.01
        w4, s4, _ = quantize_weight(w.float(), 4, None, True, torch.float16)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        biasf = bias.float()

        def ln_mod():
            return modulate(F.layer_norm(x, (k,), eps=EPS), shift, scale)

        mod = modulation_vectors(shift, scale, k, x.device)  # once per layer, as the model would
        t_lnmod = ms(ln_mod)
        t_lnmod_q2 = ms(lambda: act_quant(ln_mod(), 4))
        t_fused = ms(lambda: norm_act_quant(x, EPS, mod, 4))
        t_lin = ms(lambda: F.linear(x, w, bias))
        t_gemm = ms(lambda: qg.qgemm(*(lambda r: (r.q, r.scale))(act_quant(x, 4)), w4, s4, bias=biasf, out=out))
        aq = act_quant(x, 4)
        t_gemm_only = ms(lambda: qg.qgemm(aq.q, aq.scale, w4, s4, bias=biasf, out=out))
        t_plain2 = ms(lambda: qg.qgemm(*(lambda r: (r.q, r.scale))(act_quant(x, 4, two_pass=True)), w4, s4, bias=biasf, out=out))
        t_bf16_blk = ms(lambda: F.linear(ln_mod(), w, bias))
        t_w4_blk = ms(lambda: qg.qgemm(*(lambda r: (r.q, r.scale))(norm_act_quant(x, EPS, mod, 4)), w4, s4,
                                       bias=biasf, out=out))
        lin = torch.nn.Linear(k, n).float()  # QuantLinear quantizes from fp32 weights
        with torch.no_grad():
            lin.weight.copy_(w.float().cpu())
            lin.bias.copy_(bias.float().cpu())
        specs = {"r0": {}, "r0 a32": {"act_group_size": 32}, "smooth r32": {"rank": 32, "smooth": torch.rand(k) + 0.5}}
        t_ql = {}
        with torch.no_grad():
            for tag, kw in specs.items():
                ql = QuantLinear.from_linear(lin, bits=4, act_bits=4, **kw).cuda().to(torch.bfloat16)
                t_ql[tag] = ms(lambda: ql(x))
                ql = None
        shape = f"M={m} K={k} N={n}"
        log(f"{shape}: QuantLinear module (unpack per call): " + ", ".join(
            f"{tag} {t:.4f} ms = {t_lin / t:.2f}x bf16" for tag, t in t_ql.items()))
        log(f"{shape}: LN+modulate bf16 torch {t_lnmod:.4f} ms; + two-pass quant {t_lnmod_q2:.4f}; "
            f"fused LN-mod-quant {t_fused:.4f} ms")
        log(f"  cuBLAS bf16 linear {t_lin:.4f} ms; W4A4 GEMM+bias alone {t_gemm_only:.4f} ({t_lin / t_gemm_only:.2f}x)")
        log(f"  plain layer: tile act + GEMM {t_gemm:.4f} ms = {t_lin / t_gemm:.2f}x bf16; two-pass act + GEMM "
            f"{t_plain2:.4f} = {t_lin / t_plain2:.2f}x")
        log(f"  LN+modulate+linear: bf16 {t_bf16_blk:.4f} ms; W4A4 fused LN-mod-quant + GEMM {t_w4_blk:.4f} ms = "
            f"{t_bf16_blk / t_w4_blk:.2f}x")
        rows.append({"shape": shape, "lnmod_ms": t_lnmod, "lnmod_twopass_ms": t_lnmod_q2, "fused_ms": t_fused,
                     "bf16_linear_ms": t_lin, "gemm_ms": t_gemm_only, "plain_tile_layer_ms": t_gemm,
                     "plain_twopass_layer_ms": t_plain2, "bf16_block_ms": t_bf16_blk, "w4a4_block_ms": t_w4_blk,
                     "quantlinear_ms": t_ql})
        x = w = out = None  # noqa: F841
        torch.cuda.empty_cache()
    log(f"checks failed: {fails}")
    log.write(a.out)
    return 1 if fails else 0


def norm_sweep(log: RunLog) -> None:
    """norm_act_quant at M=16384 for each launch shape (the first GPU run timed only the default)."""
    m = 16384
    rows = log.rows
    for k in (2560, 3072):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        mod = modulation_vectors(torch.randn(k, device="cuda") * 0.3, torch.randn(k, device="cuda") * 0.3, k, x.device)
        t_plain = ms(lambda: act_quant(x, 4))
        for group in (None, 32):
            for cfg in configs(k):
                t = ms(lambda: norm_act_quant(x, EPS, mod, 4, group_size=group, config=cfg))
                log(f"K={k} group={group} norm {cfg}: {t:.4f} ms (plain act-quant, default shape: {t_plain:.4f})")
                rows.append({"k": k, "group": group, "cfg": cfg, "ms": t, "plain_ms": t_plain})


if __name__ == "__main__":
    raise SystemExit(main())
