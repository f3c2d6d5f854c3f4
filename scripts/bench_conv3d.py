#!/usr/bin/env python
"""The implicit-GEMM causal conv3d (bf16 and fp8) against cuDNN at SeedVR2's 1080p VAE shapes (H100).

    PYTHONPATH=. python3 scripts/bench_conv3d.py [--shapes D1,E2] [--budget-s 330] [--acc-shapes D1] [--no-checks]

Why: the VAE's 3x3x3 convs are most of a SeedVR2 upscale's GPU time (docs/PERF.md). Per shape this
checks our outputs against `causal_conv3d_ref` (fp32, TF32 off; relative Frobenius error) and times,
as do_bench medians: cuDNN bf16 on NCDHW-contiguous input with the head `torch.cat` (the VAE's way
today), cuDNN bf16 with channels_last_3d input and weight (cat included), ours bf16, ours fp8 (the
activation quantization pass is not timed: it belongs to the producer). Launch configs come from
the shared tuner (its first call per shape times the candidates; not counted). TFLOP/s = 2 M N K.
The log goes to $OUT/conv3d.log (rewritten after each shape, so a killed run keeps what it did).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_run import RunLog, kernel_ms  # noqa: E402

from vsrq.kernels import _triton  # noqa: E402
from vsrq.kernels.conv3d import causal_conv3d, causal_conv3d_ref, prepare_conv_weight, quantize_fp8_activation  # noqa: E402

CL = torch.channels_last_3d
# name: (what, cin, cout, T of x, H, W, kernel, stride, padding, head frames, bottom/right pad)
SHAPES = {
    "D1": ("dec 1080p 128->128", 128, 128, 4, 1080, 1920, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D2": ("dec 1080p 256->128", 256, 128, 4, 1080, 1920, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D3": ("dec 1080p 256->256", 256, 256, 4, 1080, 1920, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D4": ("dec 540p 512->256", 512, 256, 4, 540, 960, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D5": ("dec 540p 256->256", 256, 256, 4, 540, 960, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D6": ("dec 540p 512->512", 512, 512, 4, 540, 960, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "D7": ("dec 270p 512->512 (2 frames)", 512, 512, 2, 270, 480, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "E1": ("enc 1080p 128->128", 128, 128, 4, 1080, 1920, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False),
    "E2": ("enc down 1x3x3 s(1,2,2) 128->128", 128, 128, 4, 1080, 1920, (1, 3, 3), (1, 2, 2), (0, 0, 0), 0, True),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _tuned_config(fmt: str, cin: int, cout: int) -> object:
    hits = [v for k, v in _triton._TUNED.items() if k[0] == "conv3d" and k[1] == fmt and k[4] == cin and k[5] == cout]
    return hits[-1] if hits else None


def bench_shape(log: RunLog, name: str, acc_check: bool) -> None:
    what, cin, cout, t, h, w, kernel, stride, padding, nh, pad_br = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, cin, t, h, w, device="cuda", generator=g, dtype=torch.bfloat16).contiguous(memory_format=CL)
    head = (torch.randn(1, cin, nh, h, w, device="cuda", generator=g, dtype=torch.bfloat16)
            .contiguous(memory_format=CL) if nh else None)
    weight = torch.randn(cout, cin, *kernel, device="cuda", generator=g) * (1.0 / (cin * kernel[0] * kernel[1] * kernel[2]) ** 0.5)
    bias = torch.randn(cout, device="cuda", generator=g) * 0.1
    out_hw = ((h + 1 - kernel[1]) // stride[1] + 1, (w + 1 - kernel[2]) // stride[2] + 1) if pad_br else None

    # cuDNN, the VAE's way: (F.pad), cat the head, conv (bf16)
    wb, bb = weight.bfloat16(), bias.bfloat16()
    x_nc, h_nc = x.contiguous(), None if head is None else head.contiguous()
    wb_cl = wb.contiguous(memory_format=CL)

    def cudnn(xx, hh, ww):
        if pad_br:
            xx = F.pad(xx, (0, 1, 0, 1))
        if hh is not None:
            xx = torch.cat([hh, xx], dim=2)
        return F.conv3d(xx, ww, bb, stride=stride, padding=padding)

    pc16 = prepare_conv_weight(weight, "bf16", bias, stride, padding)
    pc8 = prepare_conv_weight(weight, "fp8", bias, stride, padding)
    xq, xs = quantize_fp8_activation(x if head is None else torch.cat([head, x], 2))
    hq, xq = (xq[:, :, :nh].contiguous(memory_format=CL), xq[:, :, nh:].contiguous(memory_format=CL)) if nh else (None, xq)
    kw = dict(head=head, out_hw=out_hw)
    kw8 = dict(head=hq, out_hw=out_hw, x_scale=xs)

    t0 = time.perf_counter()
    ours16 = causal_conv3d(x, pc16, **kw)  # first calls tune (untimed)
    ours8 = causal_conv3d(xq, pc8, **kw8)
    torch.cuda.synchronize()
    t_tune = time.perf_counter() - t0
    # the fp32 reference on the top R input rows (memory and time): compare the output rows that
    # read only those rows (the top border included; the bottom one is in checks())
    t0 = time.perf_counter()
    torch.backends.cudnn.allow_tf32 = False
    r = 64
    kh, sh, ph = kernel[1], stride[1], padding[1]
    n_valid = (r - kh + ph) // sh + 1
    crop_hw = ((r + 1 - kh) // sh + 1, ours16.shape[4]) if pad_br else None

    def top(tt):
        return None if tt is None else tt[:, :, :, :r].contiguous(memory_format=CL)

    ref16 = causal_conv3d_ref(top(x), pc16, head=top(head), out_hw=crop_hw, out_dtype=torch.float32)[:, :, :, :n_valid]
    e16 = _rel(ours16[:, :, :, :n_valid], ref16)
    ref8 = causal_conv3d_ref(top(xq), pc8, head=top(hq), x_scale=xs, out_hw=crop_hw, out_dtype=torch.float32)
    ref8 = ref8[:, :, :, :n_valid]
    e8 = _rel(ours8[:, :, :, :n_valid], ref8)
    e8_real = _rel(ours8[:, :, :, :n_valid], ref16)  # the fp8 quantization's own error, against the bf16-input conv
    y_cd = cudnn(x_nc, h_nc, wb)
    e_cd = _rel(y_cd[:, :, :, :n_valid], ref16)
    del y_cd
    if acc_check:  # fp8 accumulator promoted to fp32 every 32 products (Triton's max_num_imprecise_acc)
        y = causal_conv3d(xq, pc8, **kw8, fp8_acc_k=32)
        e_acc = _rel(y[:, :, :, :n_valid], ref8)
        del y
    torch.backends.cudnn.allow_tf32 = True
    t_ref = time.perf_counter() - t0

    m = ours16.shape[0] * ours16.shape[2] * ours16.shape[3] * ours16.shape[4]
    k = cin * kernel[0] * kernel[1] * kernel[2]
    tflop = 2.0 * m * cout * k / 1e12
    times = {
        "cudnn_ncdhw_cat": kernel_ms(lambda: cudnn(x_nc, h_nc, wb)),
        "cudnn_cl3d_cat": kernel_ms(lambda: cudnn(x, head, wb_cl)),
        "ours_bf16": kernel_ms(lambda: causal_conv3d(x, pc16, **kw)),
        "ours_fp8": kernel_ms(lambda: causal_conv3d(xq, pc8, **kw8)),
    }
    if acc_check:
        times["ours_fp8_acc32"] = kernel_ms(lambda: causal_conv3d(xq, pc8, **kw8, fp8_acc_k=32))
    base = times["cudnn_ncdhw_cat"]
    log(f"{name} {what}: out {tuple(ours16.shape)} M={m} N={cout} K={k} ({tflop:.2f} TFLOP)")
    log(f"  rel err vs fp32 ref (top {n_valid} output rows): ours bf16 {e16:.2e}, ours fp8 {e8:.2e} (vs fp8 ref), "
        f"fp8 vs bf16-input conv {e8_real:.2e}, cuDNN bf16 {e_cd:.2e}"
        + (f", fp8 acc32 {e_acc:.2e}" if acc_check else "") + f"  [tuning {t_tune:.0f} s, refs {t_ref:.0f} s]")
    log(f"  configs: bf16 {_tuned_config('bf16', cin, cout)}; fp8 {_tuned_config('fp8', cin, cout)}")
    for v, ms in times.items():
        log(f"  {v:18s} {ms:8.3f} ms  {tflop / ms * 1e3:7.1f} TFLOP/s  x{base / ms:5.2f} vs cuDNN NCDHW  "
            f"x{times['cudnn_cl3d_cat'] / ms:5.2f} vs cuDNN CL3D")
    log.rows.append(dict(shape=name, what=what, m=m, n=cout, k=k, tflop=tflop, ms=times, rel_bf16=e16, rel_fp8=e8,
                         rel_fp8_vs_bf16=e8_real, rel_cudnn=e_cd))


def checks(log: RunLog) -> int:
    """Compiled-kernel edge checks against the fp32 reference: every candidate config at a ragged
    shape (M, N not multiples of the tiles, head + residual), the encoder's strided convs, and a 4K
    chunk past 2**31 input elements (int64 offsets; checked on its last frame's bottom rows)."""
    from vsrq.kernels.conv3d_triton import conv_configs

    fails = 0
    g = torch.Generator(device="cuda").manual_seed(1)
    torch.backends.cudnn.allow_tf32 = False
    cases = [  # cin, cout, t, h, w, kernel, stride, padding, head frames, pad_br, residual
        (128, 192, 3, 37, 45, (3, 3, 3), (1, 1, 1), (0, 1, 1), 2, False, True),
        (256, 128, 3, 21, 30, (3, 3, 3), (2, 2, 2), (0, 0, 0), 1, True, False),
        (128, 128, 2, 23, 31, (1, 3, 3), (1, 2, 2), (0, 0, 0), 0, True, False),
        (512, 256, 2, 9, 13, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, False, True),
    ]
    for i, (cin, cout, t, h, w, kernel, stride, padding, nh, pad_br, res) in enumerate(cases):
        x = torch.randn(1, cin, t, h, w, device="cuda", generator=g).contiguous(memory_format=CL)
        head = torch.randn(1, cin, nh, h, w, device="cuda", generator=g).contiguous(memory_format=CL) if nh else None
        weight = torch.randn(cout, cin, *kernel, device="cuda", generator=g) * 0.05
        out_hw = ((h + 1 - kernel[1]) // stride[1] + 1, (w + 1 - kernel[2]) // stride[2] + 1) if pad_br else None
        for fmt in ("bf16", "fp8"):
            pc = prepare_conv_weight(weight, fmt, torch.randn(cout, device="cuda", generator=g), stride, padding)
            if fmt == "fp8":
                xx, xs = quantize_fp8_activation(x)
                hh = None if head is None else (head / xs).clamp(-448, 448).to(torch.float8_e4m3fn)
            else:
                xx, xs, hh = x.bfloat16(), None, None if head is None else head.bfloat16()
            kw = dict(head=hh, x_scale=xs, out_hw=out_hw, replicate_first=(nh == 0 and kernel[0] > 1))
            ref = causal_conv3d_ref(xx, pc, **kw, out_dtype=torch.float32)
            if res:
                kw["residual"] = torch.randn(ref.shape, device="cuda", generator=g).bfloat16().contiguous(memory_format=CL)
                ref = causal_conv3d_ref(xx, pc, **kw, out_dtype=torch.float32)
            # check 0: every Hopper candidate with TMA weight tiles (the pointer forms passed in GPU run 1)
            cfgs = [c for c in conv_configs(fmt, cin, cout, 0, True) if c.get("B_TMA")] if i == 0 else [None]
            # fp8: Hopper's fp8 MMA accumulates in reduced precision between promotions (run 1: ~1e-3)
            tol = 1e-4 if fmt == "bf16" else 1e-2
            for cfg in cfgs:
                try:
                    got = causal_conv3d(xx, pc, **kw, out_dtype=torch.float32, config=cfg)
                    e = _rel(got, ref)
                    ok = e < tol
                except Exception as ex:
                    e, ok = float("nan"), False
                    log(f"  check {i} {fmt} {cfg}: {type(ex).__name__}: {str(ex)[:300]}")
                fails += not ok
                log(f"  check {i} {fmt} cin={cin} cout={cout} k={kernel} s={stride} out={tuple(ref.shape)} "
                    f"cfg={cfg if cfg else 'tuned'}: rel {e:.2e} {'ok' if ok else 'FAIL'}")
            if fmt == "fp8":
                cfg0 = conv_configs(fmt, cin, cout, 0)[0]  # pinned: no second tuning of each check shape
                e = _rel(causal_conv3d(xx, pc, **kw, out_dtype=torch.float32, fp8_acc_k=32, config=cfg0), ref)
                fails += not e < 1e-4
                log(f"  check {i} fp8 tuned, accumulator promoted every 32 products: rel {e:.2e} "
                    f"{'ok' if e < 1e-4 else 'FAIL'}")
    # int64: a 4K chunk of 4 frames + 2 head frames x 128 channels (6.4e9 elements in the clip)
    h, w, c = 2160, 3840, 128
    x = torch.randn(1, c, 4, h, w, device="cuda", dtype=torch.bfloat16, generator=g).contiguous(memory_format=CL)
    head = torch.randn(1, c, 2, h, w, device="cuda", dtype=torch.bfloat16, generator=g).contiguous(memory_format=CL)
    pc = prepare_conv_weight(torch.randn(c, c, 3, 3, 3, device="cuda", generator=g) * 0.03, "bf16")
    y = causal_conv3d(x, pc, head=head, out_dtype=torch.bfloat16)
    ms = kernel_ms(lambda: causal_conv3d(x, pc, head=head))
    crop = slice(h - 9, h)  # last output frame reads x frames 1..3; output rows h-8.. need input rows h-9..
    ref = causal_conv3d_ref(x[:, :, 1:4, crop].contiguous(memory_format=CL), pc, out_dtype=torch.float32)
    e = _rel(y[:, :, 3:4, -8:], ref[:, :, :, 1:])
    del x, head, y
    torch.cuda.empty_cache()
    fails += not e < 1e-2
    log(f"  check int64 4K 128->128 (x {1 * c * 4 * h * w:.2e} elements): last frame's bottom rows rel {e:.2e} "
        f"{'ok' if e < 1e-2 else 'FAIL'}; {ms:.2f} ms, {2 * 4 * h * w * c * c * 27 / ms / 1e9:.0f} TFLOP/s")
    torch.backends.cudnn.allow_tf32 = True
    log(f"checks: {fails} failed")
    return fails


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip the remaining shapes after this long")
    ap.add_argument("--acc-shapes", default="", help="shapes where the fp8 accumulator promotion is also checked/timed")
    ap.add_argument("--no-checks", action="store_true", help="skip the edge checks")
    a = ap.parse_args()
    out = os.environ.get("OUT", "/tmp/out")
    log = RunLog("conv3d")
    import triton

    log.header(f"triton {triton.__version__}")
    start = time.perf_counter()
    if not a.no_checks:
        checks(log)
        log(f"({time.perf_counter() - start:.0f} s)")
        log.write(out)
    for name in a.shapes.split(","):
        if time.perf_counter() - start > a.budget_s:
            log(f"{name}: skipped (budget)")
            continue
        t0 = time.perf_counter()
        try:
            bench_shape(log, name, name in a.acc_shapes.split(","))
        except Exception as e:  # keep the other shapes
            log(f"{name}: FAILED {type(e).__name__}: {str(e)[:400]}")
        log(f"  ({time.perf_counter() - t0:.0f} s with tuning)")
        torch.cuda.empty_cache()
        log.write(out)
    log.write(out)


if __name__ == "__main__":
    main()
