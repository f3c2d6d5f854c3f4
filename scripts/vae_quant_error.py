"""How much error low-precision conv formats would cause in SeedVR2's VAE (CPU, fake quantization).

Why: on an H100 (random weights of the real shapes, scripts/profile_vae.py `accuracy`) the bf16 VAE is
0.017 / 0.022 (encode / decode) relative error against fp32 and the fp8 (e4m3) conv path 0.16 / 0.21.
Before building an int8 conv path this measures, on the CPU, whether int8 with finer scales would be
closer to bf16 than e4m3 is. Exactly the convs of `SeedVR2VAE.fp8_convs()` get their input and weight
fake-quantized (rounded to the format, then the conv in fp32); everything else stays fp32:

  bf16          input and weight rounded to bf16 (the rounding-only baseline)
  e4m3          as the GPU fp8 path: weights as `prepare_conv_weight` packs them (per output channel,
                amax / 448); GroupNorm-fed convs' inputs e4m3 at scale 1, the upsamplers' convs a
                per-call power-of-two scale >= amax / 448
  int8-pixel    int8 activations, one scale per input pixel (amax over channels); int8 weights per output channel
  int8-tensor   int8 activations, one scale per conv call; weights per output channel
  int8-channel  int8 activations, one scale per input channel (amax over b,t,h,w); weights per output channel
  bf16-vae      the whole VAE cast to bf16 (no fake quantization), as the GPU bf16 figure; its convs
                take bf16 operands, accumulate in fp32 and round the output to bf16 (as cuDNN does; torch's
                own bf16 conv3d on this CPU took 500 s for a tiny clip)

As `accuracy`: the weights are rounded to bf16 once (the GPU reference is an fp32 copy of the bf16 model),
encode error is on the posterior mean of a random video in [-1, 1], decode error on a decode of a
N(0,1) DiT latent; relative error = ||a - b|| / ||b||. Then one GroupNorm+SiLU-fed 3x3x3 conv in
isolation, to separate per-conv error from amplification through the network. Random weights, small
sizes: the figures say how the formats compare, not what a trained model at 1080p does.

Usage: python scripts/vae_quant_error.py [--size 112x64] [--frames 9]
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vsrq.models.seedvr2.vae as vae_mod
from vsrq.kernels.conv3d import FP8_MAX, prepare_conv_weight
from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig, Upsample
from vsrq.quant.pack import fake_quant_activation, fake_quant_weight

Quant = Callable[[Tensor], Tensor]


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).float()


def e4m3(x: Tensor) -> Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def e4m3_pow2(x: Tensor) -> Tensor:
    """The upsamplers' activations on the GPU: a power-of-two scale >= amax / 448 over the call."""
    scale = torch.exp2(torch.ceil(torch.log2(x.abs().amax().clamp_min(1e-30) / FP8_MAX)))
    return e4m3(x / scale) * scale


def e4m3_weight(w: Tensor) -> Tensor:
    return prepare_conv_weight(w, "fp8").dequantized()


def int8(x: Tensor, share: str) -> Tensor:
    """The project's int8 activation quantizer (`fake_quant_activation`: symmetric, round half up, as the
    kernels run it) with one scale per input pixel, per input channel or per tensor."""
    if share == "pixel":  # (B, C, T, H, W): the C values of each position share a scale
        return fake_quant_activation(x.movedim(1, -1), bits=8).movedim(-1, 1)
    if share == "channel":
        rows = x.movedim(1, 0)
        return fake_quant_activation(rows.reshape(rows.shape[0], -1), bits=8).reshape(rows.shape).movedim(0, 1)
    return fake_quant_activation(x.reshape(1, -1), bits=8).reshape(x.shape)


def int8_weight(w: Tensor) -> Tensor:
    """Per output channel, the project's weight quantizer (`fake_quant_weight`)."""
    return fake_quant_weight(w.flatten(1), bits=8).reshape(w.shape)


# format -> (quant of a GroupNorm-fed conv's input, of an upsampler conv's input, of a weight)
FORMATS: dict[str, tuple[Quant, Quant, Quant]] = {
    "bf16": (bf16, bf16, bf16),
    "e4m3": (e4m3, e4m3_pow2, e4m3_weight),
    "int8-pixel": ((lambda x: int8(x, "pixel")),) * 2 + (int8_weight,),
    "int8-tensor": ((lambda x: int8(x, "tensor")),) * 2 + (int8_weight,),
    "int8-channel": ((lambda x: int8(x, "channel")),) * 2 + (int8_weight,),
}


def fake_quant(vae: SeedVR2VAE, fmt: str) -> Callable[[], None]:
    """Route `fp8_convs()` through fake-quantized fp32 convs (vae.py's `_apply_conv` runs every CPU
    conv, on the whole input buffer with its cached head frames); returns the undo."""
    q_norm, q_up, q_w = FORMATS[fmt]
    up = {id(m.conv) for m in vae.modules() if isinstance(m, Upsample)}
    targets = {id(c): (q_up if id(c) in up else q_norm) for c in vae.fp8_convs()}
    weights = {id(c): q_w(c.weight.detach().float()) for c in vae.fp8_convs()}
    orig = vae_mod._apply_conv

    def apply(conv: nn.Module, x: Tensor, stream: vae_mod._Stream, residual: Tensor | None = None) -> Tensor:
        qx = targets.get(id(conv))
        if qx is None:
            return orig(conv, x, stream, residual)
        assert isinstance(conv, nn.Conv3d)
        y = F.conv3d(qx(x.float()), weights[id(conv)], conv.bias, conv.stride, conv.padding)
        return y if residual is None else y.add_(residual)

    vae_mod._apply_conv = apply

    def undo() -> None:
        vae_mod._apply_conv = orig
    return undo


def bf16_convs() -> Callable[[], None]:
    """For a bf16 VAE: every conv from bf16 operands, fp32 accumulation, bf16 output; returns the undo."""
    orig = vae_mod._apply_conv

    def apply(conv: nn.Module, x: Tensor, stream: vae_mod._Stream, residual: Tensor | None = None) -> Tensor:
        assert isinstance(conv, nn.Conv3d)
        y = bf16_conv(conv, x)
        return y if residual is None else y.add_(residual)

    vae_mod._apply_conv = apply

    def undo() -> None:
        vae_mod._apply_conv = orig
    return undo


def bf16_conv(conv: nn.Conv3d, x: Tensor) -> Tensor:
    b = None if conv.bias is None else conv.bias.float()
    y = F.conv3d(x.float(), conv.weight.float(), b, conv.stride, conv.padding)
    return y.to(torch.bfloat16)


def single_conv(channels: int, log: Callable[[str], None]) -> None:
    """One GroupNorm+SiLU-fed 3x3x3 conv (default init) on a normalised random input, each format."""
    g = torch.Generator().manual_seed(2)
    conv = nn.Conv3d(channels, channels, 3, padding=(0, 1, 1))
    x = F.silu(F.group_norm(torch.randn(1, channels, 6, 32, 56, generator=g), 32, eps=1e-6))
    with torch.no_grad():
        ref = conv(x)
        row = []
        for fmt, (q_norm, _, q_w) in FORMATS.items():
            row.append(f"{fmt} {rel(F.conv3d(q_norm(x), q_w(conv.weight), conv.bias, padding=(0, 1, 1)), ref):.2e}")
        cb = copy.deepcopy(conv).bfloat16()
        row.append(f"bf16-vae {rel(bf16_conv(cb, x.bfloat16()), ref):.2e}")
    log(f"single conv {channels}->{channels} 3x3x3 on SiLU(GroupNorm(randn)) (1,{channels},6,32,56): " + ", ".join(row))


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="112x64", help="video WxH (multiples of 8)")
    ap.add_argument("--frames", type=int, default=9, help="video frames, 4n+1")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; video (1,3,{args.frames},{h},{w}), "
        f"latent (1,{(args.frames - 1) // 4 + 1},{h // 8},{w // 8},16); random weights (seed 0, default init, rounded to bf16)")

    torch.manual_seed(0)
    vae = SeedVR2VAE(SeedVR2VAEConfig.preset("seedvr2")).to(torch.bfloat16).float().eval()
    vae.channels_last = False
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, (args.frames - 1) // 4 + 1, h // 8, w // 8, 16, generator=g)
    video = torch.rand(1, 3, args.frames, h, w, generator=g) * 2 - 1

    t0 = time.perf_counter()
    ref_enc, ref_dec = vae.encode_moments(video)[0], vae.decode(z)
    log(f"fp32 reference: {time.perf_counter() - t0:.0f} s")

    results: dict[str, tuple[float, float]] = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        undo = fake_quant(vae, fmt)
        try:
            results[fmt] = (rel(vae.encode_moments(video)[0], ref_enc), rel(vae.decode(z), ref_dec))
        finally:
            undo()
        log(f"{fmt}: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    vb = copy.deepcopy(vae).to(torch.bfloat16)
    undo = bf16_convs()
    try:
        results["bf16-vae"] = (rel(vb.encode_moments(video.bfloat16())[0], ref_enc),
                               rel(vb.decode(z.bfloat16()), ref_dec))
    finally:
        undo()
    del vb
    log(f"bf16-vae: {time.perf_counter() - t0:.0f} s")

    e1, d1 = results["bf16"]
    log("")
    log(f"{'variant':<14} {'encode rel':>11} {'decode rel':>11} {'enc / bf16':>11} {'dec / bf16':>11}")
    for fmt, (e, d) in results.items():
        log(f"{fmt:<14} {e:>11.2e} {d:>11.2e} {e / e1:>11.1f} {d / d1:>11.1f}")
    log("")
    for c in (128, 256):
        single_conv(c, log)


if __name__ == "__main__":
    main()
