import pytest
import torch
import torch.nn.functional as F

from tests.support import random_model
from vsrq.models.dit import DiTConfig, VSRDiT, WindowAttention, WindowLayout, _window_geometry


@pytest.mark.parametrize("shape", [(1, 3, 1, 16, 16), (2, 3, 5, 13, 21), (1, 3, 9, 24, 40)])
def test_output_shape_any_size(shape):
    model = random_model()
    with torch.no_grad():
        out = model(torch.rand(shape))
    b, c, t, h, w = shape
    assert out.shape == (b, c, t, 4 * h, 4 * w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [2, 4])
def test_untrained_model_is_the_residual_upsampler(scale):
    """Zero-initialised head and gates: a fresh model outputs exactly the bicubic-upsampled input."""
    model = VSRDiT(DiTConfig(dim=24, depth=2, heads=2, window=(2, 4, 4), scale=scale)).eval()
    x = torch.rand(1, 3, 3, 10, 12)
    with torch.no_grad():
        out = model(x)
    ref = F.interpolate(x[0].transpose(0, 1), scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[0].transpose(0, 1), ref)


def test_batch_elements_are_independent():
    model = random_model()
    x = torch.rand(2, 3, 4, 12, 12)
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_window_geometry_covers_grid():
    for grid in [(1, 5, 7), (8, 16, 16), (3, 9, 4)]:
        for shifted in (False, True):
            win, shift, after = _window_geometry(grid, (4, 8, 8), shifted)
            for n, w, s, a in zip(grid, win, shift, after):
                assert w <= n and 0 <= s < w and 0 <= a < w
                assert (n + a) % w == 0 and (s == 0 or (shifted and s == w // 2))


def _dense_window_attention(attn: WindowAttention, x: torch.Tensor, window, shifted: bool) -> torch.Tensor:
    """Reference: every token attends to the tokens of its window, the windows laid out as if half a
    window of padding came before the grid (the definition the cyclic shift must reproduce)."""
    from vsrq.models.dit import apply_rope, rope_3d

    b, t, h, w, c = x.shape
    heads, hd = attn.heads, c // attn.heads
    group = []
    for axis, n in enumerate((t, h, w)):
        win = min(window[axis], n)
        s = win // 2 if shifted and n > win else 0
        shape = [1, 1, 1]
        shape[axis] = n
        group.append(((torch.arange(n) + s) // win).view(shape).expand(t, h, w).reshape(-1))
    same = (group[0][:, None] == group[0][None]) & (group[1][:, None] == group[1][None]) & (group[2][:, None] == group[2][None])
    cos, sin = rope_3d((t, h, w), hd, 10000.0, x.device)
    q, k, v = attn.qkv(x.reshape(b, -1, c)).view(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=same)
    return attn.proj(out.transpose(1, 2).reshape(b, t, h, w, c))


@pytest.mark.parametrize("grid", [(3, 9, 7), (4, 8, 8), (2, 5, 12), (1, 3, 3)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_dense_reference(grid, shifted):
    """Cyclic shift + seam/padding masks give the same attention as explicit windows over the grid."""
    torch.manual_seed(1)
    attn = WindowAttention(24, 2)
    x = torch.randn(2, *grid, 24)
    layout = WindowLayout.make(grid, (2, 4, 4), shifted, 12, 10000.0, x.device)
    with torch.no_grad():
        got = layout.merge(attn(layout.partition(x), layout))
        want = _dense_window_attention(attn, x, (2, 4, 4), shifted)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_shifted_blocks_mix_across_windows():
    """A change in one window reaches tokens of the neighbouring window only through the shifted blocks."""
    cfg = DiTConfig(dim=24, depth=2, heads=2, window=(1, 4, 4), patch=(1, 1, 1), scale=2)
    model = random_model(cfg)
    x = torch.rand(1, 3, 1, 8, 8)
    y = x.clone()
    y[..., 0, 0] += 0.5  # top-left window
    with torch.no_grad():
        diff = (model(x) - model(y)).abs()[0, :, 0]
    assert diff[:, 8:, 8:].max() > 0  # bottom-right window output changed: information crossed windows


def test_padded_keys_are_masked():
    """A window that is mostly padding gives its real tokens the same result as a grid holding only them."""
    torch.manual_seed(0)
    attn = WindowAttention(24, 2)
    x = torch.randn(1, 1, 4, 5, 24)
    full_layout = WindowLayout.make((1, 4, 5), (1, 4, 4), False, 12, 10000.0, x.device)
    col_layout = WindowLayout.make((1, 4, 1), (1, 4, 4), False, 12, 10000.0, x.device)
    assert full_layout.mask is not None and col_layout.mask is None and full_layout.masked.tolist() == [1]
    with torch.no_grad():
        # with 4x4 windows the last column sits alone in a window padded with 3 empty columns
        full = full_layout.merge(attn(full_layout.partition(x), full_layout))
        alone = col_layout.merge(attn(col_layout.partition(x[:, :, :, 4:]), col_layout))
    torch.testing.assert_close(full[:, :, :, 4:], alone, atol=1e-5, rtol=1e-4)


def test_partition_merge_round_trip():
    x = torch.randn(2, 3, 9, 7, 5)
    for shifted in (False, True):
        layout = WindowLayout.make((3, 9, 7), (2, 4, 4), shifted, 12, 10000.0, x.device)
        torch.testing.assert_close(layout.merge(layout.partition(x)), x)


def test_config_round_trip_and_validation():
    cfg = DiTConfig(dim=48, depth=3, heads=2, window=(2, 4, 4))
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        DiTConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        DiTConfig(dim=50, heads=3)


def test_local_conv_starts_as_identity_and_reaches_past_windows():
    """Zero-initialised depthwise convs leave a fresh model the residual upsampler; trained (random)
    ones carry information between windows even without shifted blocks."""
    cfg = DiTConfig(dim=24, depth=1, heads=2, window=(1, 4, 4), patch=(1, 1, 1), scale=2, local_conv=(1, 3, 3))
    fresh = VSRDiT(cfg).eval()
    x = torch.rand(1, 3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), fresh.upsample_residual(x))
    model = random_model(cfg)
    y = x.clone()
    y[..., 3, 3] += 0.5  # inside the top-left window, next to its border

    def change(m: VSRDiT) -> torch.Tensor:
        """What the network (not the bicubic residual) changes in its output, for frame 0."""
        with torch.no_grad():
            return ((m(x) - m.upsample_residual(x)) - (m(y) - m.upsample_residual(y))).abs()[0, :, 0]

    # one unshifted block: only the convs carry the change into the bottom-right window
    assert change(model)[:, 8:, 8:].max() > 0
    assert change(random_model(DiTConfig(**{**cfg.to_dict(), "local_conv": (0, 0, 0)})))[:, 8:, 8:].max() == 0
    for bad in [(2, 3, 3), (0, 3, 3), (-1, 3, 3)]:  # even, or partly off: no silent "no convolution"
        with pytest.raises(ValueError):
            DiTConfig(dim=24, heads=2, local_conv=bad)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg


def test_rope_for_head_dims_not_a_multiple_of_six():
    """head_dim 128 (SeedVR2-sized): 3 x 21 pairs rotate, the one pair left over is untouched;
    multiples of 6 keep every pair rotating."""
    from vsrq.models.dit import rope_3d

    cos, sin = rope_3d((2, 3, 4), 128, 10000.0, torch.device("cpu"))
    assert cos.shape == (24, 128)
    spare = [63, 127]  # the last pair of each half
    assert torch.all(cos[:, spare] == 1) and torch.all(sin[:, spare] == 0)
    assert sin[:, :63].abs().sum(0).gt(0).all()  # every other pair turns somewhere on the grid
    cos6, sin6 = rope_3d((2, 3, 4), 24, 10000.0, torch.device("cpu"))
    assert sin6.abs().sum(0).gt(0).all()
    out = random_model(DiTConfig(dim=32, depth=2, heads=2, window=(2, 4, 4)))(torch.rand(1, 3, 2, 8, 8))
    assert torch.isfinite(out).all()


def test_norm_linear_hands_the_norm_to_layers_that_can_fuse_it() -> None:
    """norm_linear gives x itself to a layer with forward_normed (eps and the single modulation),
    and composes LayerNorm + modulate + layer when it declines or the modulation differs per sample."""
    from vsrq.models.dit import PreNorm, modulate, norm_linear

    class Fusing(torch.nn.Linear):
        def __init__(self, accept: bool) -> None:
            super().__init__(8, 4)
            self.accept, self.calls = accept, []

        def forward_normed(self, x, eps, shift, scale, activation=None):
            self.calls.append((eps, shift.shape, scale.shape))
            return torch.full((*x.shape[:-1], 4), 7.0) if self.accept else None

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    x = torch.randn(1, 3, 5, 8)
    one = PreNorm(norm, torch.randn(1, 8), torch.randn(1, 8))
    layer = Fusing(True)
    assert torch.equal(norm_linear(layer, one, x), torch.full((1, 3, 5, 4), 7.0))
    assert layer.calls == [(1e-6, (8,), (8,))]
    declining = Fusing(False)
    want = torch.nn.functional.linear(modulate(norm(x), one.shift, one.scale), declining.weight, declining.bias)
    assert torch.equal(norm_linear(declining, one, x), want) and len(declining.calls) == 1
    per_sample = PreNorm(norm, torch.randn(2, 8), torch.randn(2, 8))
    x2 = torch.randn(2, 3, 5, 8)
    layer = Fusing(True)
    want = torch.nn.functional.linear(modulate(norm(x2), per_sample.shift, per_sample.scale), layer.weight, layer.bias)
    assert torch.equal(norm_linear(layer, per_sample, x2), want) and layer.calls == []
    gelu = Fusing(False)
    want = torch.nn.functional.gelu(torch.nn.functional.linear(modulate(norm(x), one.shift, one.scale), gelu.weight,
                                                               gelu.bias), approximate="tanh")
    assert torch.equal(norm_linear(gelu, one, x, activation="gelu_tanh"), want)


def test_gated_residual_hands_gate_and_residual_to_layers_that_can_fuse_them() -> None:
    """gated_residual gives (x, the one gate vector, the residual) to a layer with forward_residual,
    and composes residual + gate * layer(x) when it declines or the gate differs per sample."""
    from vsrq.models.dit import gated_residual

    class Fusing(torch.nn.Linear):
        def __init__(self, accept: bool) -> None:
            super().__init__(8, 4)
            self.accept, self.calls = accept, []

        def forward_residual(self, x, gate, residual):
            self.calls.append((tuple(x.shape), tuple(gate.shape), tuple(residual.shape)))
            return torch.full(residual.shape, 7.0) if self.accept else None

    torch.manual_seed(0)
    x, res = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 4)
    gate = torch.randn(1, 4)
    layer = Fusing(True)
    assert torch.equal(gated_residual(layer, x, gate, res), torch.full((1, 3, 5, 4), 7.0))
    assert layer.calls == [((1, 3, 5, 8), (4,), (1, 3, 5, 4))]
    declining = Fusing(False)
    want = res + gate.view(1, 1, 1, 4) * torch.nn.functional.linear(x, declining.weight, declining.bias)
    assert torch.equal(gated_residual(declining, x, gate, res), want) and len(declining.calls) == 1
    x2, res2, gate2 = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 4), torch.randn(2, 4)
    layer = Fusing(True)
    want = res2 + gate2.view(2, 1, 1, 4) * torch.nn.functional.linear(x2, layer.weight, layer.bias)
    assert torch.equal(gated_residual(layer, x2, gate2, res2), want) and layer.calls == []


def test_block_forward_is_the_textbook_residual_form() -> None:
    """A block is x + g1 * attn(mod(norm(x))), then + g2 * mlp(mod(norm(.))), written out here with
    plain torch on a float32 block (the block routes both sums through gated_residual)."""
    from vsrq.models.dit import DiTBlock, WindowLayout, modulate

    torch.manual_seed(1)
    blk = DiTBlock(24, 2, 2.0)
    torch.nn.init.normal_(blk.adaln.weight, std=0.2)
    layout = WindowLayout.make((2, 4, 4), (2, 4, 4), False, 12, 10000.0, torch.device("cpu"))
    x = torch.randn(1, 1, 32, 24)
    cond = torch.randn(1, 24)
    s1, c1, g1, s2, c2, g2 = blk.shift_scale_gate(cond).chunk(6, dim=-1)
    h = x + g1.view(1, 1, 1, -1) * blk.attn(modulate(blk.norm1(x), s1, c1), layout)
    mlp = blk.mlp
    want = h + g2.view(1, 1, 1, -1) * mlp.fc2(torch.nn.functional.gelu(mlp.fc1(modulate(blk.norm2(h), s2, c2)), approximate="tanh"))
    assert torch.equal(blk(x, cond, layout), want)


def test_rope_is_the_textbook_rotation() -> None:
    """rope_3d's signed table with apply_rope equals x * cos + [-x2, x1] * sin with the plain sin of
    the same angles (the window-attention reference uses apply_rope itself, so it could not tell)."""
    from vsrq.models.dit import apply_rope, rope_3d

    grid, hd = (3, 4, 5), 24
    cos, signed = rope_3d(grid, hd, 10000.0, torch.device("cpu"))
    sin = signed[:, hd // 2:].repeat(1, 2)  # the second half holds +sin of the same angles
    assert torch.equal(signed[:, : hd // 2], -signed[:, hd // 2:])
    # the angles themselves: the first pair of the time axis turns by position * 1 (inverse frequency 1)
    t_pos = torch.arange(grid[0]).repeat_interleave(grid[1] * grid[2]).float()
    assert torch.allclose(torch.atan2(sin[:, 0], cos[:, 0]), torch.atan2(torch.sin(t_pos), torch.cos(t_pos)), atol=1e-6)
    x = torch.randn(2, 4, cos.shape[0], hd, generator=torch.Generator().manual_seed(3))
    x1, x2 = x.chunk(2, dim=-1)
    want = x * cos + torch.cat([-x2, x1], dim=-1) * sin
    assert torch.equal(apply_rope(x, cos, signed), want)
