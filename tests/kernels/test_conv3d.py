"""The causal conv3d's reference (the CPU path) against F.conv3d on a materialised cat/pad, for
every conv kind of SeedVR2's VAE; the weight packing; the dispatch. The Triton kernel itself is
checked against this reference in the interpreter (_interp_conv3d.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsrq.kernels.conv3d import (
    causal_conv3d,
    causal_conv3d_ref,
    prepare_conv_weight,
    quantize_fp8_activation,
    triton_supported,
)

CL = torch.channels_last_3d

# name: kernel, stride, module padding, head ("head" / "rep" / "none"), bottom/right pad of one
KINDS = {
    "resnet_333_head": ((3, 3, 3), (1, 1, 1), (0, 1, 1), "head", False),
    "resnet_333_replicate_first": ((3, 3, 3), (1, 1, 1), (0, 1, 1), "rep", False),
    "shortcut_111": ((1, 1, 1), (1, 1, 1), (0, 0, 0), "none", False),
    "down_133_s122": ((1, 3, 3), (1, 2, 2), (0, 0, 0), "none", True),
    "down_333_s222_replicate_first": ((3, 3, 3), (2, 2, 2), (0, 0, 0), "rep", True),
    "down_333_s222_head1": ((3, 3, 3), (2, 2, 2), (0, 0, 0), "head", True),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def _materialised(x, head, mode, kernel, stride, padding, weight, bias, pad_br, residual=None):
    """The VAE's way: cat the head, F.pad for the encoder's bottom/right pad, then nn.Conv3d's math."""
    kt = kernel[0]
    if mode == "head":
        x = torch.cat([head, x], dim=2)
    elif mode == "rep" and kt > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, kt - 1, -1, -1), x], dim=2)
    if pad_br:
        x = F.pad(x, (0, 1, 0, 1))
    y = F.conv3d(x, weight, bias, stride=stride, padding=padding)
    return y if residual is None else y + residual


def _out_hw(h, w, kernel, stride, pad_br):
    if not pad_br:
        return None
    return ((h + 1 - kernel[1]) // stride[1] + 1, (w + 1 - kernel[2]) // stride[2] + 1)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("residual", [False, True])
def test_bf16_reference_matches_materialised_conv(name: str, residual: bool) -> None:
    kernel, stride, padding, mode, pad_br = KINDS[name]
    b, cin, cout, t, h, w = 2, 8, 12, 3, 7, 6
    nh = 1 if name.endswith("head1") else 2
    weight, bias = torch.randn(cout, cin, *kernel) * 0.2, torch.randn(cout)
    x = torch.randn(b, cin, t, h, w).contiguous(memory_format=CL)
    head = torch.randn(b, cin, nh, h, w) if mode == "head" else None
    pc = prepare_conv_weight(weight, "bf16", bias, stride, padding)
    expect = _materialised(_bf16(x), None if head is None else _bf16(head), mode, kernel, stride, padding,
                           _bf16(weight), bias, pad_br)
    res = torch.randn(expect.shape) if residual else None
    if res is not None:
        expect = expect + res
    got = causal_conv3d_ref(x, pc, head=head, replicate_first=mode == "rep", residual=res,
                            out_hw=_out_hw(h, w, kernel, stride, pad_br), out_dtype=torch.float32)
    assert got.shape == expect.shape
    assert got.is_contiguous(memory_format=CL)
    assert _rel(got, expect) < 1e-5


@pytest.mark.parametrize("name", sorted(KINDS))
def test_fp8_reference_is_the_dequantized_conv(name: str) -> None:
    kernel, stride, padding, mode, pad_br = KINDS[name]
    b, cin, cout, t, h, w = 1, 16, 8, 3, 6, 7
    weight, bias = torch.randn(cout, cin, *kernel) * 0.2, torch.randn(cout)
    x_real = torch.randn(b, cin, t, h, w).contiguous(memory_format=CL)
    head_real = torch.randn(b, cin, 2, h, w) if mode == "head" else None
    pc = prepare_conv_weight(weight, "fp8", bias, stride, padding)
    xq, xs = quantize_fp8_activation(x_real)
    hq = None if head_real is None else (head_real / xs).to(torch.float8_e4m3fn)
    wdq = pc.w.float().view(cout, *kernel, cin).permute(0, 4, 1, 2, 3) * pc.scale.view(cout, 1, 1, 1, 1)
    expect = _materialised(xq.float() * xs, None if hq is None else hq.float() * xs, mode, kernel, stride,
                           padding, wdq, bias, pad_br)
    out_hw = _out_hw(h, w, kernel, stride, pad_br)
    got = causal_conv3d_ref(xq, pc, head=hq, replicate_first=mode == "rep", x_scale=xs, out_hw=out_hw,
                            out_dtype=torch.float32)
    assert _rel(got, expect) < 1e-5
    # and e4m3 on both operands stays near the fp32 conv of the unquantized values
    exact = _materialised(x_real, head_real, mode, kernel, stride, padding, weight, bias, pad_br)
    assert _rel(got, exact) < 0.08


def test_weight_packing_order_and_scales() -> None:
    weight = torch.randn(6, 5, 3, 2, 4)
    pc = prepare_conv_weight(weight, "bf16", stride=(1, 2, 2), padding=(0, 1, 1))
    assert pc.w.shape == (6, 3 * 2 * 4 * 5) and pc.w.dtype == torch.bfloat16
    n, c, t, h, w = 4, 3, 2, 1, 2
    assert pc.w[n, ((t * 2 + h) * 4 + w) * 5 + c] == weight[n, c, t, h, w].bfloat16()  # Cin fastest
    assert torch.equal(pc.dequantized(), _bf16(weight))
    assert (pc.kernel, pc.stride, pc.padding, pc.cin, pc.cout) == ((3, 2, 4), (1, 2, 2), (1, 1), 5, 6)
    q = prepare_conv_weight(weight, "fp8")
    assert q.w.dtype == torch.float8_e4m3fn
    amax = weight.abs().flatten(1).amax(1)
    assert torch.allclose(q.scale, amax / 448)
    assert torch.allclose(q.w.float().abs().amax(1), torch.full((6,), 448.0))
    assert _rel(q.dequantized(), weight) < 0.05
    with pytest.raises(ValueError):
        prepare_conv_weight(weight, "int4")
    with pytest.raises(ValueError):
        prepare_conv_weight(weight, "bf16", padding=(1, 1, 1))


def test_streamed_chunks_equal_one_pass() -> None:
    """The VAE's causal chunking: replicate_first for chunk 0, then the cached last 2 frames as head."""
    pc = prepare_conv_weight(torch.randn(8, 8, 3, 3, 3), "bf16", torch.randn(8))
    clip = torch.randn(1, 8, 7, 5, 4).contiguous(memory_format=CL)
    whole = causal_conv3d(clip, pc, replicate_first=True, out_dtype=torch.float32)
    parts = [causal_conv3d(clip[:, :, :4], pc, replicate_first=True, out_dtype=torch.float32),
             causal_conv3d(clip[:, :, 4:], pc, head=clip[:, :, 2:4], out_dtype=torch.float32)]
    assert _rel(torch.cat(parts, dim=2), whole) < 1e-6


def test_dispatch_on_cpu_is_the_reference_and_unsupported_shapes_run() -> None:
    x = torch.randn(1, 16, 2, 5, 5).contiguous(memory_format=CL)
    for cout in (16, 3):  # conv_out's 3 channels: not a kernel shape, still served
        pc = prepare_conv_weight(torch.randn(cout, 16, 3, 3, 3), "bf16", torch.randn(cout))
        assert triton_supported(pc) == (cout == 16)
        got = causal_conv3d(x, pc, replicate_first=True)
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
        assert torch.equal(got, causal_conv3d_ref(x, pc, replicate_first=True))
    assert not triton_supported(prepare_conv_weight(torch.randn(16, 3, 3, 3, 3), "bf16"))  # conv_in's Cin = 3


def test_argument_errors() -> None:
    pc = prepare_conv_weight(torch.randn(8, 8, 3, 3, 3), "fp8")
    xq, xs = quantize_fp8_activation(torch.randn(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match="x_scale"):
        causal_conv3d(xq, pc)
    with pytest.raises(ValueError, match="float8"):
        causal_conv3d(torch.randn(1, 8, 2, 4, 4), pc, x_scale=xs)
    with pytest.raises(ValueError, match="not both"):
        causal_conv3d(xq, pc, x_scale=xs, head=xq, replicate_first=True)
    with pytest.raises(ValueError, match="channels"):
        causal_conv3d(torch.randn(1, 4, 2, 4, 4).to(torch.float8_e4m3fn), pc, x_scale=xs)
    with pytest.raises(ValueError, match="empty"):
        causal_conv3d(xq[:, :, :1], pc, x_scale=xs)  # one frame, no head: no output frame


def test_cudnn_fallback_matches_reference() -> None:
    """The CUDA fallback for shapes the kernel does not take (bf16 F.conv3d on a materialised Xpad,
    fp8 dequantized first) is the same conv; run here on the CPU, where F.conv3d takes bf16 too."""
    from vsrq.kernels.conv3d import _cudnn, _geometry

    x = torch.randn(1, 3, 3, 6, 5).contiguous(memory_format=CL)
    head = torch.randn(1, 3, 2, 6, 5).contiguous(memory_format=CL)
    for fmt in ("bf16", "fp8"):
        pc = prepare_conv_weight(torch.randn(3, 3, 3, 3, 3) * 0.3, fmt, torch.randn(3))
        xx, xs = (quantize_fp8_activation(x) if fmt == "fp8" else (x.bfloat16(), None))
        hh = (head / xs).to(torch.float8_e4m3fn) if fmt == "fp8" else head.bfloat16()
        res = torch.randn(1, 3, 3, 6, 5)
        g = _geometry(xx, pc, hh, False, None)
        got = _cudnn(xx, pc, hh, False, xs, res, g, torch.float32)
        ref = causal_conv3d_ref(xx, pc, head=hh, x_scale=xs, residual=res, out_dtype=torch.float32)
        assert got.is_contiguous(memory_format=CL)
        assert _rel(got, ref) < 2e-2
