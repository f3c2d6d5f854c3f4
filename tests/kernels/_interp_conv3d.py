"""Interpreter cases for the implicit-GEMM causal conv3d (vsrq/kernels/conv3d_triton.py).

Collected into ``_interp_cases.CASES`` (that module imports this one's ``CASES``) and run there
under TRITON_INTERPRET=1. Shapes are small and ragged on purpose: M not a multiple of the tile,
Cout not a multiple of BLOCK_N, odd H/W (the masked borders), every head mode, stride 2. Each
case compares against ``causal_conv3d_ref`` with an fp32 output (only the summation order
differs: <= 1e-5) and with a bf16 output (<= 1e-2).
"""

from __future__ import annotations

from typing import Callable

CASES: dict[str, Callable[[], str]] = {}

# kernel, stride, module padding, head mode ("head" frames / "rep" / "none"), out_hw "+1" = the
# encoder's bottom/right pad, residual, batch, Cin, Cout, T, H, W, head frames
_CONV = {
    "bf16_333_head2_res_ragged": dict(fmt="bf16", k=(3, 3, 3), s=(1, 1, 1), p=(0, 1, 1), mode="head", res=True,
                                      b=2, cin=32, cout=48, t=2, h=5, w=7, nh=2),
    "fp8_333_replicate_first": dict(fmt="fp8", k=(3, 3, 3), s=(1, 1, 1), p=(0, 1, 1), mode="rep",
                                    b=1, cin=32, cout=40, t=3, h=6, w=5),
    # the weight tiles through a TMA descriptor (Hopper's candidate form), Cout ragged against BLOCK_N
    "fp8_333_b_tma_head2_res": dict(fmt="fp8", k=(3, 3, 3), s=(1, 1, 1), p=(0, 1, 1), mode="head", res=True,
                                    b=1, cin=64, cout=40, t=2, h=5, w=6, nh=2, b_tma=True),
    "bf16_133_s122_b_tma": dict(fmt="bf16", k=(1, 3, 3), s=(1, 2, 2), p=(0, 0, 0), mode="none", br=True,
                                b=1, cin=32, cout=24, t=2, h=7, w=9, b_tma=True),
    "fp8_333_s222_head1_pad_br": dict(fmt="fp8", k=(3, 3, 3), s=(2, 2, 2), p=(0, 0, 0), mode="head", br=True,
                                      b=1, cin=32, cout=32, t=3, h=7, w=8, nh=1),
    "bf16_133_s122_pad_br": dict(fmt="bf16", k=(1, 3, 3), s=(1, 2, 2), p=(0, 0, 0), mode="none", br=True,
                                 b=2, cin=48, cout=24, t=2, h=9, w=6),
    "fp8_111_shortcut_res": dict(fmt="fp8", k=(1, 1, 1), s=(1, 1, 1), p=(0, 0, 0), mode="none", res=True,
                                 b=1, cin=16, cout=16, t=2, h=5, w=9),
    "bf16_333_cin16_head_strided_views": dict(fmt="bf16", k=(3, 3, 3), s=(1, 1, 1), p=(0, 1, 1), mode="head",
                                             b=2, cin=16, cout=32, t=2, h=4, w=6, nh=2, views=True),
}


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _conv_case(p: dict) -> str:
    import torch

    from vsrq.kernels.conv3d import causal_conv3d, causal_conv3d_ref, prepare_conv_weight, quantize_fp8_activation

    g = torch.Generator().manual_seed(p["cin"] * 7 + p["cout"] + p["h"] * p["w"])
    cl = torch.channels_last_3d
    b, cin, cout, t, h, w = p["b"], p["cin"], p["cout"], p["t"], p["h"], p["w"]
    weight = torch.randn(cout, cin, *p["k"], generator=g) * 0.1
    pc = prepare_conv_weight(weight, p["fmt"], torch.randn(cout, generator=g), p["s"], p["p"])
    nh = p.get("nh", 0)
    if p.get("views"):  # x and head as T-slices of one larger channels-last clip (strides, not copies)
        clip = torch.randn(b, cin, nh + t + 1, h, w, generator=g).contiguous(memory_format=cl)
        head, x = clip[:, :, :nh], clip[:, :, nh:nh + t]
        assert not x.is_contiguous(memory_format=cl)
    else:
        x = torch.randn(b, cin, t, h, w, generator=g).contiguous(memory_format=cl)
        head = torch.randn(b, cin, nh, h, w, generator=g).contiguous(memory_format=cl) if p["mode"] == "head" else None
    xs = None
    if p["fmt"] == "fp8":
        x, xs = quantize_fp8_activation(x)
        if head is not None:
            head = (head / xs).clamp(-448, 448).to(torch.float8_e4m3fn)
    kw = dict(head=head, replicate_first=p["mode"] == "rep", x_scale=xs)
    if p.get("br"):  # F.pad(x, (0, 1, 0, 1)) then no padding of its own
        kw["out_hw"] = ((h + 1 - p["k"][1]) // p["s"][1] + 1, (w + 1 - p["k"][2]) // p["s"][2] + 1)
    shape = causal_conv3d_ref(x, pc, **kw, out_dtype=torch.float32).shape
    if p.get("res"):
        kw["residual"] = torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
    if p.get("b_tma"):
        kw["config"] = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1, "B_TMA": 1}
    ref_kw = {k: v for k, v in kw.items() if k != "config"}
    out = []
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        ref = causal_conv3d_ref(x, pc, **ref_kw, out_dtype=dt)
        got = causal_conv3d(x, pc, **kw, out_dtype=dt)
        assert got.shape == ref.shape and got.dtype == dt, f"{got.shape}/{got.dtype} vs {ref.shape}"
        assert got.is_contiguous(memory_format=cl), "output not channels-last"
        assert torch.isfinite(got.float()).all(), "non-finite output"
        e = _rel(got.float(), ref.float())
        assert e <= tol, f"{dt}: rel err {e:.3g} > {tol}"
        out.append(f"{e:.1e}")
    return f"out {tuple(shape)} rel=" + "/".join(out)


for _n, _p in _CONV.items():
    CASES[f"conv3d[{_n}]"] = lambda _p=_p: _conv_case(_p)


def _streamed() -> str:
    """Two chunks (replicate_first, then the first chunk's last 2 frames as head) equal one pass
    over the whole clip: the VAE's causal chunking, through the kernel."""
    import torch

    from vsrq.kernels.conv3d import causal_conv3d, prepare_conv_weight

    g = torch.Generator().manual_seed(5)
    cl = torch.channels_last_3d
    pc = prepare_conv_weight(torch.randn(32, 32, 3, 3, 3, generator=g) * 0.1, "bf16", torch.randn(32, generator=g))
    clip = torch.randn(1, 32, 5, 5, 6, generator=g).contiguous(memory_format=cl)
    whole = causal_conv3d(clip, pc, replicate_first=True, out_dtype=torch.float32)
    a = causal_conv3d(clip[:, :, :3], pc, replicate_first=True, out_dtype=torch.float32)
    bb = causal_conv3d(clip[:, :, 3:], pc, head=clip[:, :, 1:3], out_dtype=torch.float32)
    e = _rel(torch.cat([a, bb], dim=2), whole)
    assert e <= 1e-6, f"chunked vs whole rel err {e:.3g}"
    return f"rel={e:.1e}"


CASES["conv3d[streamed_chunks_equal_whole_clip]"] = _streamed
