"""SeedVR2 DiT: golden outputs (checked against the official code by scripts/parity/seedvr2_dit.py),
key map, preset detection, bf16 autocast and the block-by-block API."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vsrq.errors import ModelError
from vsrq.models.seedvr2.dit import (
    WIN_REGULAR,
    WIN_SHIFTED,
    SeedVR2DiT,
    SeedVR2DiTConfig,
    apply_rope,
    axis_windows,
    make_windows,
    pad_grid,
    rms_norm,
    rope_inv_freqs,
    to_windows,
    window_sizes,
    window_tokens,
)
from vsrq.models.seedvr2.dit_keys import (
    check_dit_state,
    dit_state_from_official,
    expected_dit_shapes,
    infer_dit_preset,
)

GOLDEN = Path(__file__).parent / "golden"


def load_golden(name: str):
    with safe_open(str(GOLDEN / f"seedvr2_dit_{name}.safetensors"), framework="pt") as f:
        cfg = SeedVR2DiTConfig.from_dict(json.loads(f.metadata()["config"]))
        t = {k: f.get_tensor(k) for k in f.keys()}
    state = {k[len("model.") :]: v.float() for k, v in t.items() if k.startswith("model.")}
    model = SeedVR2DiT(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model, t["input.x"].float(), t["input.txt"].float(), t["input.t"], t["output"]


def tiny(name: str = "3b-tiny", seed: int = 0) -> SeedVR2DiT:
    torch.manual_seed(seed)
    model = SeedVR2DiT(SeedVR2DiTConfig.preset(name)).eval()
    with torch.no_grad():  # nn.Linear's default init gives a near-zero output; widen it a bit
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
    return model


def inputs(cfg: SeedVR2DiTConfig, b: int = 1, thw=(5, 6, 10), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *thw, cfg.vid_in_channels, generator=g)
    txt = torch.randn(5, cfg.txt_in_dim, generator=g)
    return x, txt


@pytest.mark.parametrize("name", ["3b-tiny", "7b-tiny"])
def test_golden_output(name):
    model, x, txt, t, want = load_golden(name)
    with torch.no_grad():
        got = model(x, txt, t)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["3b-tiny", "7b-tiny"])
def test_block_by_block_equals_forward(name):
    model = tiny(name)
    x, txt = inputs(model.cfg, b=2)
    t = torch.tensor([1000.0, 250.0])
    with torch.no_grad():
        want = model(x, txt, t)
        state = model.embed(x, txt, t)
        for i, block in enumerate(model.blocks):
            state = model.run_block(i, state, copy.deepcopy(block))  # e.g. a block just moved in
        got = model.head(state)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_batch_is_per_video_and_text_may_be_batched():
    model = tiny("3b-tiny")
    x, txt = inputs(model.cfg, b=2)
    t = torch.tensor([1000.0, 300.0])
    with torch.no_grad():
        both = model(x, txt, t)
        one = model(x[1:], txt[None], t[1:])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_smoke():
    model = tiny("3b-tiny")
    x, txt = inputs(model.cfg)
    with torch.no_grad():
        ref = model(x, txt, 1000.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, txt, 1000.0)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_linear_layers_are_plain_nn_linear():
    model = SeedVR2DiT(SeedVR2DiTConfig.preset("3b-tiny"))
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"blocks.0.attn.proj_qkv.vid", "blocks.0.attn.proj_qkv.txt", "blocks.1.attn.proj_qkv.all",
            "blocks.1.mlp.all.proj_in_gate", "vid_in.proj", "txt_in", "emb_in.proj_out"} <= names
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n in names)


# ----------------------------------------------------------------------- windows
def official_rule_slices(n: int, w: int, shifted: bool) -> list[tuple[int, int]]:
    """The official window slices along one axis, written out from its formula."""
    if not shifted:
        return [(i * w, min((i + 1) * w, n)) for i in range(math.ceil(n / w))]
    s = 0.5 if w < n else 0
    count = math.ceil((n - s) / w) + 1 if s else 1
    out = [(max(int((i - s) * w), 0), min(int((i - s + 1) * w), n)) for i in range(count)]
    return [(a, b) for a, b in out if b > a]


@pytest.mark.parametrize("shifted", [False, True])
def test_window_cut_matches_official_rule(shifted):
    for n in range(1, 40):
        for w in range(1, 45):
            got = axis_windows(n, w, shifted).bounds()
            assert got == official_rule_slices(n, w, shifted), (n, w, shifted)


def test_window_sizes_720p():
    assert window_sizes((21, 45, 80), (4, 3, 3)) == (6, 15, 27)  # 720p: 3 x 3 spatial windows
    assert window_sizes((5, 21, 23), (4, 3, 3)) == (2, 19, 21)  # the parity grid: partial windows


@pytest.mark.parametrize("method", [WIN_REGULAR, WIN_SHIFTED])
@pytest.mark.parametrize("grid", [(2, 9, 14), (5, 21, 23)])
def test_window_tokens_is_windows_then_text_per_window(grid, method):
    """The one-buffer assembly equals the plain composition: pad, cut into windows, then append
    every window's copy of the text (a wrong permutation or text slot changes values here)."""
    axes = make_windows(grid, (4, 3, 3), method)
    nwin = math.prod(a.count for a in axes)
    b, heads, d, n_txt = 2, 3, 8, 5
    g = torch.Generator().manual_seed(0)
    vid = torch.randn(b, math.prod(grid), heads, d, generator=g)
    txt = torch.randn(b, n_txt, heads, d, generator=g)
    windows = to_windows(pad_grid(vid.reshape(b, *grid, heads, d), axes), axes)
    text = txt.transpose(1, 2)[:, None].expand(b, nwin, heads, n_txt, d).reshape(b * nwin, heads, n_txt, d)
    assert torch.equal(window_tokens(vid, txt, grid, axes), torch.cat([windows, text], dim=2))
    assert torch.equal(window_tokens(vid, None, grid, axes), windows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotates_pairs_and_leaves_the_rest(dtype):
    """Pair (2i, 2i+1) turns by the angle of frequency i (in fp32); channels past 2F pass; the input stays."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 3, 16, generator=g).to(dtype)
    ang = torch.randn(30, 6, generator=g)  # 12 of 16 channels rotated, 4 pass through
    before = x.clone()
    got = apply_rope(x, ang.cos(), ang.sin())
    assert torch.equal(x, before)
    assert torch.equal(got[..., 12:], x[..., 12:])
    for i in (0, 5):
        x0, x1 = x[..., 2 * i].float(), x[..., 2 * i + 1].float()
        c, s = ang.cos()[:, i, None], ang.sin()[:, i, None]
        assert torch.equal(got[..., 2 * i], (x0 * c - x1 * s).to(dtype))
        assert torch.equal(got[..., 2 * i + 1], (x1 * c + x0 * s).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_the_fp32_formula(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 64, generator=g) * 3).to(dtype)
    w = torch.rand(64, generator=g).to(dtype)
    xf = x.float()
    want = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(rms_norm(x, 1e-6), want.to(dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rms_norm(x, 1e-6, w), (want * w.float()).to(dtype), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------- key map
def official_like_state(cfg: SeedVR2DiTConfig) -> dict[str, torch.Tensor]:
    sd = SeedVR2DiT(cfg).state_dict()
    for i in range(cfg.num_layers):
        sd[f"blocks.{i}.attn.rope.rope.freqs"] = rope_inv_freqs(cfg).clone()
    return sd


@pytest.mark.parametrize("name", ["3b-tiny", "7b-tiny"])
def test_key_map_roundtrip(name):
    cfg = SeedVR2DiTConfig.preset(name)
    sd = {k: v.half() for k, v in official_like_state(cfg).items()}
    ours = dit_state_from_official(sd, cfg)
    check_dit_state(ours, cfg)
    assert all(v.dtype == torch.float32 for v in ours.values())
    assert not any("rope" in k for k in ours)


def test_key_map_errors_name_the_key():
    cfg = SeedVR2DiTConfig.preset("3b-tiny")
    good = dit_state_from_official(official_like_state(cfg), cfg)
    missing = dict(good)
    del missing["blocks.1.mlp.all.proj_in.weight"]
    with pytest.raises(ModelError, match=r"missing blocks\.1\.mlp\.all\.proj_in\.weight"):
        check_dit_state(missing, cfg)
    extra = dict(good, **{"blocks.2.mlp.txt.proj_in.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"unexpected key blocks\.2\.mlp\.txt\.proj_in\.weight"):
        check_dit_state(extra, cfg)
    bad = dict(good, **{"vid_out.proj.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelError, match=r"vid_out\.proj\.weight has shape \[3, 3\]"):
        check_dit_state(bad, cfg)
    wrong_rope = official_like_state(cfg)
    wrong_rope["blocks.0.attn.rope.rope.freqs"] = rope_inv_freqs(SeedVR2DiTConfig.preset("7b-tiny"))
    with pytest.raises(ModelError, match="rope"):
        dit_state_from_official(wrong_rope, cfg)


@pytest.mark.parametrize("name,params", [("3b", 3.39e9), ("7b", 8.24e9)])
def test_real_presets_on_meta(name, params):
    cfg = SeedVR2DiTConfig.preset(name)
    with torch.device("meta"):
        model = SeedVR2DiT(cfg)
        sd = model.state_dict()
        for i in range(cfg.num_layers):  # the official file also holds these buffers
            sd[f"blocks.{i}.attn.rope.rope.freqs"] = torch.empty(len(rope_inv_freqs(cfg)))
    assert infer_dit_preset(sd) == name
    assert infer_dit_preset({k: tuple(v.shape) for k, v in sd.items()}) == name
    check_dit_state(dit_state_from_official(sd, cfg, dtype=None), cfg)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.01  # fp16 files: 6.78 GB (3B), 16.48 GB (7B)


def test_real_preset_shapes():
    s3 = expected_dit_shapes(SeedVR2DiTConfig.preset("3b"))
    assert s3["blocks.0.attn.proj_qkv.vid.weight"] == (7680, 2560)
    assert s3["blocks.31.mlp.all.proj_in_gate.weight"] == (6912, 2560)
    assert "blocks.31.ada.all.attn_gate" in s3 and "blocks.9.ada.txt.mlp_gate" in s3
    assert s3["vid_out_ada.out_shift"] == (2560,) and "vid_out_ada.out_gate" not in s3
    s7 = expected_dit_shapes(SeedVR2DiTConfig.preset("7b"))
    assert s7["blocks.35.mlp.txt.proj_in.bias"] == (12288,)
    assert s7["emb_in.proj_out.weight"] == (18432, 3072)
    assert "vid_out_norm.weight" not in s7


def test_infer_preset_rejects_other_models():
    with pytest.raises(ModelError):
        infer_dit_preset({"foo.weight": (3, 3)})
    with pytest.raises(ModelError):
        infer_dit_preset({"emb_in.proj_hid.weight": (64, 64)})


def test_config_dict_roundtrip():
    for name in ("3b", "7b", "3b-tiny", "7b-tiny"):
        cfg = SeedVR2DiTConfig.preset(name)
        assert SeedVR2DiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SeedVR2DiTConfig.preset("3b").window_method(1) == WIN_SHIFTED
    assert SeedVR2DiTConfig.preset("7b").window_method(34) == WIN_REGULAR


def test_eager_kernels_refuse_the_cpu_and_the_model_falls_back():
    """Off the GPU (no interpreter) both eager kernels refuse with ValueError, and the model's norm_rope /
    window_tokens take the torch ops."""
    from vsrq.kernels._triton import interpreting
    from vsrq.kernels.head_norm_rope import head_norm_rope
    from vsrq.kernels.window_gather import window_gather
    from vsrq.models.seedvr2.dit import RMSNorm, norm_rope, window_tokens_torch

    if torch.cuda.is_available() or interpreting():
        pytest.skip("Triton can run here: the interpreter cases cover the kernels")
    q = torch.randn(1, 6, 2, 16).bfloat16()
    ang = torch.randn(6, 4)
    with pytest.raises(ValueError):
        head_norm_rope(q, torch.ones(16, dtype=torch.bfloat16), 1e-6, ang.cos(), ang.sin())
    norm = RMSNorm(16, 1e-6).bfloat16()
    assert torch.equal(norm_rope(q, norm, ang.cos(), ang.sin()), apply_rope(norm(q), ang.cos(), ang.sin()))
    grid = (1, 2, 3)
    axes = make_windows(grid, (4, 3, 3), WIN_REGULAR)
    with pytest.raises(ValueError):
        window_gather(q, None, grid, tuple((a.count, a.size, a.front) for a in axes))
    assert torch.equal(window_tokens(q, q[:, :2], grid, axes), window_tokens_torch(q, q[:, :2], grid, axes))
