"""Interpreter cases for the VAE's channels-last kernels: per-frame GroupNorm statistics and apply
(vsrq/kernels/group_norm_triton.py), the bias + residual pass (vsrq/kernels/channel_bias_triton.py),
and a small SeedVR2 VAE run channels-last (these kernels inside) against its channel-first pass.

Collected into ``_interp_cases.CASES`` and run there under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from typing import Callable

CASES: dict[str, Callable[[], str]] = {}  # filled at the end of the file


def _group_norm_cl() -> str:
    """Channels-last statistics (shifted sums) and apply, written after two head frames of a
    buffer, against nn.GroupNorm per frame; far-from-zero data checks the shift."""
    import torch

    from vsrq.kernels.group_norm import group_norm_act

    torch.manual_seed(0)
    for b, c, t, h, w, g in ((2, 8, 3, 5, 7, 4), (1, 16, 2, 9, 11, 8)):
        x = torch.randn(b, c, t, h, w) * 3 + 10
        wt, bs = torch.randn(c), torch.randn(c)
        norm = torch.nn.GroupNorm(g, c, eps=1e-6)
        with torch.no_grad():
            norm.weight.copy_(wt)
            norm.bias.copy_(bs)
            want = torch.stack([torch.nn.functional.silu(norm(x[:, :, i])) for i in range(t)], dim=2)
        xcl = x.contiguous(memory_format=torch.channels_last_3d)
        got = group_norm_act(xcl, g, wt, bs, 1e-6)
        assert got.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        buf = torch.full((b, c, t + 2, h, w), 7.0, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        body = buf[:, :, 2:]
        assert group_norm_act(xcl.bfloat16(), g, wt, bs, 1e-6, out=body).data_ptr() == body.data_ptr()
        assert bool((buf[:, :, :2] == 7).all()), "head frames overwritten"
        err = float((body.float() - want).abs().max())
        assert err < 0.05, err
    return "matches nn.GroupNorm per frame, head frames untouched"


def _channel_bias() -> str:
    import torch

    from vsrq.kernels.channel_bias import add_channel_bias_, add_channel_bias_ref

    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        for res in (False, True):
            y = torch.randn(2, 12, 3, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            r = torch.randn(2, 12, 3, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last_3d) if res else None
            b = torch.randn(12)
            want = add_channel_bias_ref(y.clone(), b, r)
            got = add_channel_bias_(y, b, r)
            assert got.data_ptr() == y.data_ptr()
            tol = 0 if dtype == torch.float32 else 1e-2  # bf16: one rounding (the interpreter's may differ by an ulp)
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    return "equal to the reference (fp32 math, one rounding; bf16 within an ulp)"


def _vae_cl() -> str:
    """The small VAE, channels-last on the Triton kernels (GroupNorm, bias + residual) vs its
    channel-first reference pass: encode moments and decode."""
    import torch

    from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig

    torch.manual_seed(2)
    m = SeedVR2VAE(SeedVR2VAEConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_groups=8)).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    m.channels_last = False
    mean, logvar = m.encode_moments(video)
    dec = m.decode_raw(mean)
    m.channels_last = True
    mean_cl, logvar_cl = m.encode_moments(video)
    dec_cl = m.decode_raw(mean)
    torch.testing.assert_close(mean_cl, mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logvar_cl, logvar, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dec_cl, dec, rtol=1e-4, atol=1e-4)
    # bf16: the downsamplers run on the implicit-GEMM kernel in the channels-last pass
    m = m.bfloat16()
    vb = video.bfloat16()
    m.channels_last = False
    mean_b = m.encode_moments(vb)[0].float()
    m.channels_last = True
    mean_bcl = m.encode_moments(vb)[0].float()
    e = float((mean_bcl - mean_b).norm() / mean_b.norm())
    assert e < 2e-2, e
    return f"max |diff| decode {float((dec_cl - dec).abs().max()):.1e}; bf16 encode rel {e:.1e}"


def _vae_fp8() -> str:
    """conv_format "fp8" on the Triton path (GroupNorm writing e4m3 into the conv's input, the
    implicit-GEMM conv reading the cached e4m3 head in place, the upsampler's scaled chunk) against
    the same model on the reference path (torch GroupNorm, fp32 conv of the dequantized values)."""
    from unittest import mock

    import torch

    from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig

    torch.manual_seed(3)
    m = SeedVR2VAE(SeedVR2VAEConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_groups=8)).eval()
    m.conv_format = "fp8"
    video = torch.rand(1, 3, 5, 8, 16) * 2 - 1
    m.channels_last = True
    mean, _ = m.encode_moments(video)
    dec = m.decode_raw(mean)
    with mock.patch("vsrq.kernels.conv3d.can_run_triton", return_value=False), \
            mock.patch("vsrq.kernels.group_norm.can_run_triton", return_value=False):
        m.channels_last = False
        mean_ref, _ = m.encode_moments(video)
        dec_ref = m.decode_raw(mean)
    e_enc = float((mean - mean_ref).norm() / mean_ref.norm())
    e_dec = float((dec - dec_ref).norm() / dec_ref.norm())
    # The two GroupNorms' statistics differ by float noise, which can push a value across an e4m3
    # rounding boundary (one ulp: 6 %) that the small net then carries on: seeds give 2e-7 to 1.4e-2.
    # A wrong head, scale or layout gives O(1) (the fp8 model is 0.1-0.3 from bf16).
    assert e_enc < 5e-2 and e_dec < 5e-2, (e_enc, e_dec)
    return f"rel err encode {e_enc:.1e}, decode {e_dec:.1e}"


CASES["group_norm_cl[stats_apply_into_body]"] = _group_norm_cl
CASES["channel_bias[bf16_fp32_residual]"] = _channel_bias
CASES["seedvr2_vae[channels_last_vs_channel_first]"] = _vae_cl
CASES["seedvr2_vae[fp8_triton_vs_reference]"] = _vae_fp8


def _group_norm_e4m3() -> str:
    """The apply kernel's e4m3 output (rounded in-kernel, ties to even) equals torch's cast of the same
    fp32 values, ties included; values past the e4m3 range saturate at +-448."""
    import torch

    from vsrq.kernels.group_norm import frame_group_stats, group_norm_act_ref
    from vsrq.kernels.group_norm_triton import group_norm_act_cl_triton

    torch.manual_seed(4)
    x = torch.randn(2, 16, 3, 9, 11) * 4
    wt, bs = torch.rand(16) * 40, torch.randn(16)
    wt[0] = 400.0  # channel 0 saturates
    mean, rstd = frame_group_stats(x, 8, 1e-6)
    xcl = x.contiguous(memory_format=torch.channels_last_3d)

    def kernel(mean, rstd, wt, bs):
        out = torch.empty(x.shape, dtype=torch.float8_e4m3fn).contiguous(memory_format=torch.channels_last_3d)
        return group_norm_act_cl_triton(xcl, mean, rstd, wt, bs, False, out).float()

    want = group_norm_act_ref(x, mean, rstd, wt, bs, act=False).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    got = kernel(mean, rstd, wt, bs)
    assert bool((got == want).all()), f"{int((got != want).sum())} of {got.numel()} differ"
    assert float(got.abs().max()) == 448.0
    # identity statistics and affine: the values themselves, exact ties among them
    ties = torch.tensor([1.6875, -1.6875, 1.5625, -432.0, 432.0, 0.01953125, 3.0e-3, -7.5])
    x.view(-1)[: ties.numel()] = ties
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    ident = (torch.zeros_like(mean), torch.ones_like(rstd), torch.ones(16), torch.zeros(16))
    got = kernel(*ident)
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert bool((got == want).all()), (got.view(-1)[:8], want.view(-1)[:8])
    return "bit-equal to torch's e4m3 cast"


CASES["group_norm_cl[e4m3_out_equals_torch_cast]"] = _group_norm_e4m3
