"""SeedVR2's restorer around our DiT and VAE: padding, colour fix, determinism, block streaming,
loading from files (registry entries of several files, a DiT path with its companions)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from tests.support import tiny_seedvr2, tiny_seedvr2_files
from vsrq.errors import ModelError
from vsrq.models.loader import load_model
from vsrq.pipeline.colour_fix import adain_fix, colour_fix, wavelet_fix, wavelet_split
from vsrq.pipeline.seedvr2 import BlockStreamer, SeedVR2Restorer, SeedVR2Settings, pad_frames_4n1, pad_to_multiple


pytestmark = pytest.mark.usefixtures("offline_models")


def restorer(**settings) -> SeedVR2Restorer:
    return SeedVR2Restorer(*tiny_seedvr2(), SeedVR2Settings(**settings)).eval()


@pytest.mark.parametrize("t, want", [(1, 1), (2, 5), (4, 5), (5, 5), (6, 9), (9, 9), (10, 13)])
def test_frames_pad_to_4n_plus_1_by_repeating_the_last(t, want):
    x = torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1).expand(1, 2, t, 3, 3)
    y = pad_frames_4n1(x)
    assert y.shape[2] == want
    assert torch.equal(y[:, :, :t], x) and bool((y[:, :, t:] == t - 1).all())


def test_sides_pad_to_multiples_by_replication():
    x = torch.rand(1, 3, 2, 20, 33)
    y = pad_to_multiple(x, 16)
    assert y.shape[-2:] == (32, 48) and torch.equal(y[..., :20, :33], x)
    assert torch.equal(y[..., 25, :33], x[..., 19, :])


def test_wavelet_split_is_exact_and_the_fixes_take_colour_from_the_reference():
    torch.manual_seed(0)
    ref = torch.rand(3, 3, 40, 56)
    detail, base = wavelet_split(ref)
    torch.testing.assert_close(detail + base, ref)
    shifted = ref + torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)  # a colour cast, no change of detail
    torch.testing.assert_close(wavelet_fix(shifted, ref), ref, atol=1e-5, rtol=0)
    gained = ref * 1.5 - 0.3
    fixed = adain_fix(gained, ref)
    torch.testing.assert_close(fixed.mean((-2, -1)), ref.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std((-2, -1)), ref.std((-2, -1)), atol=1e-4, rtol=0)
    assert torch.equal(colour_fix(shifted, ref, "none"), shifted)
    with pytest.raises(ValueError, match="colour fix"):
        colour_fix(shifted, ref, "lab")


def test_restorer_output_size_range_and_seeded_determinism():
    r = restorer(scale=2.0)
    x = torch.rand(1, 3, 6, 20, 28)
    with torch.no_grad():
        a, b = r(x), r(x)
        r.settings = replace(r.settings, seed=1)
        c = r(x)
    assert a.shape == (1, 3, 6, 40, 56)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)  # the noise is seeded per call: a chunk does not depend on earlier ones
    assert not torch.equal(a, c)


def test_vae_tiles_keep_the_output_shape_and_really_tile():
    r = restorer(scale=2.0)
    x = torch.rand(1, 3, 5, 24, 40)
    with torch.no_grad():
        whole = r(x)
        r.settings = replace(r.settings, vae_tile=32, vae_tile_overlap=16)
        decode, seen = r.vae.decode, []
        r.vae.decode = lambda z: (seen.append(tuple(z.shape[2:4])), decode(z))[1]  # z: (B, T', h, w, C)
        tiled = r(x)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert len(seen) > 1 and all(8 * h <= 32 and 8 * w <= 32 for h, w in seen), seen  # tiles, not the frame
    # the blended tiles decode close to the whole latent (nearer than another latent's decode is)
    lat = torch.randn(1, 2, 6, 10, 16, generator=torch.Generator().manual_seed(0))
    other = torch.randn(1, 2, 6, 10, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = r.decode(lat)
        r.settings = replace(r.settings, vae_tile=0)
        w, o = r.decode(lat), r.decode(other)
    assert float((t - w).abs().mean()) < 0.8 * float((o - w).abs().mean())


def test_block_by_block_run_through_the_streamer_gives_the_same_result():
    """On the CPU the streamer's copies are the host tensors themselves, so this checks the block-wise
    call order (embed, each block, head); the CUDA path (pinned copies on a side stream) was checked on
    the H100: bit-identical output (docs/PERF.md)."""
    dit, _, text = tiny_seedvr2()
    x = torch.randn(1, 2, 6, 8, 33)
    t = torch.tensor([1000.0])
    with torch.no_grad():
        want = dit(x, text, t)
        streamer = BlockStreamer(dit.blocks, torch.device("cpu"))
        state = dit.embed(x, text, t)
        streamer.run(lambda i: dit.run_block(i, state))
        got = dit.head(state)
    torch.testing.assert_close(got, want)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(tmp_path, monkeypatch, files, name="tiny-seedvr2", weights_ref=None) -> None:
    reg = tmp_path / "models.toml"
    reg.write_text(
        f'[models.{name}]\narch = "seedvr2"\nprecision = "fp32"\nweights = "{weights_ref or files["weights"]}"\n'
        + (f'sha256 = "{_sha(files["weights"])}"\n' if weights_ref is None or weights_ref.startswith("hf://") else "")
        + 'config = { scale = 2 }\n'
        f'files.vae = {{ weights = "{files["vae"]}", sha256 = "{_sha(files["vae"])}" }}\n'
        f'files.text = {{ weights = "cache:seedvr2/pos_emb.pt", sha256 = "{_sha(files["text"])}", fetch = "from the SeedVR repository" }}\n')
    monkeypatch.setenv("VSRQ_MODELS", str(reg))


def test_registry_entry_of_three_files_loads_the_same_model(tmp_path, monkeypatch):
    files = tiny_seedvr2_files(tmp_path / "parts")
    cached = tmp_path / "vsrq-cache" / "seedvr2" / "pos_emb.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(files["text"].read_bytes())
    _registry(tmp_path, monkeypatch, files)
    loaded = load_model("tiny-seedvr2")
    assert loaded.precision == "fp32" and loaded.scale == 2 and loaded.module.arch == "seedvr2"
    x = torch.rand(1, 3, 5, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), restorer(scale=2.0)(x))


def test_offline_with_files_missing_names_every_one_and_how_to_get_it(tmp_path, monkeypatch):
    files = tiny_seedvr2_files(tmp_path / "parts")
    _registry(tmp_path, monkeypatch, files, weights_ref="hf://someone/seedvr2-tiny@v1/dit.safetensors")
    with pytest.raises(ModelError) as err:
        load_model("tiny-seedvr2")
    msg = str(err.value)
    assert "\n" not in msg and "needs 2 file(s)" in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download someone/seedvr2-tiny dit.safetensors --revision v1" in msg
    assert str(tmp_path / "vsrq-cache" / "seedvr2" / "pos_emb.pt") in msg and "from the SeedVR repository" in msg


def test_wrong_checksum_of_a_companion_file_is_refused(tmp_path, monkeypatch):
    files = tiny_seedvr2_files(tmp_path / "parts")
    cached = tmp_path / "vsrq-cache" / "seedvr2" / "pos_emb.pt"
    cached.parent.mkdir(parents=True)
    torch.save(torch.zeros(7, 24), cached)  # not the registered file
    _registry(tmp_path, monkeypatch, files)
    with pytest.raises(ModelError, match=r"\(text\).*sha256"):
        load_model("tiny-seedvr2")


def test_a_dit_path_finds_its_vae_and_text_beside_it(tmp_path):
    files = tiny_seedvr2_files(tmp_path / "ckpts")
    loaded = load_model(str(files["weights"]))
    assert loaded.module.arch == "seedvr2"
    files["text"].unlink()
    files["vae"].unlink()
    with pytest.raises(ModelError, match=r"SeedVR2 DiT; it needs vae .* and text"):
        load_model(str(files["weights"]))


def test_pickled_text_embedding_with_code_is_refused(tmp_path):
    files = tiny_seedvr2_files(tmp_path / "ckpts")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, files["text"])
    with pytest.raises(ModelError, match="refusing to unpickle"):
        load_model(str(files["weights"]))


def test_out_of_memory_in_a_seedvr2_chunk_is_one_line_of_advice(monkeypatch):
    """Halving frame tiles (the vsrq DiT's retry) would change SeedVR2's attention windows; it says what to use."""
    from pathlib import Path

    from vsrq.errors import VsrqError
    from vsrq.models.loader import LoadedModel
    from vsrq.pipeline.upscale import ChunkUpscaler, UpscaleOptions

    loaded = LoadedModel("tiny", restorer(scale=2.0), "fp32", Path("-"))
    up = ChunkUpscaler(loaded, UpscaleOptions(device="cpu", chunk=5, overlap=1))

    def oom(_x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(up.net, "forward", oom)
    with pytest.raises(VsrqError, match=r"out of memory on cpu; try --max-vram .*--vae-tile 512.*--offload") as err:
        up(torch.rand(1, 3, 5, 16, 24))
    assert "\n" not in str(err.value)


def test_vae_tile_overlap_is_a_quarter_in_16_pixel_steps_and_never_zero_from_the_minimum():
    from vsrq.pipeline.seedvr2 import MIN_VAE_TILE, vae_tile_overlap

    assert vae_tile_overlap(MIN_VAE_TILE) == 16 and vae_tile_overlap(128) == 32 and vae_tile_overlap(512) == 64
    assert all(vae_tile_overlap(t) >= 16 for t in range(MIN_VAE_TILE, 2048, 16))


def test_streamer_points_a_block_back_at_its_host_tensors_after_an_error():
    """An out-of-memory error mid-block must not leave the block on its lent copy (the retry at a
    smaller tile reruns it). Lent copies are clones here, so they are distinct tensors on the CPU."""
    import torch.nn as nn

    class CloningStreamer(BlockStreamer):
        def _upload(self, i):
            return {k: v.clone() for k, v in self.host[i].items()}

    blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    streamer = CloningStreamer(blocks, torch.device("cpu"))
    host = [{k: v.data_ptr() for k, v in h.items()} for h in streamer.host]
    seen = []

    def step(i):
        seen.append(blocks[i].weight.data_ptr() != host[i]["weight"])
        if i == 1:
            raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="out of memory"):
        streamer.run(step)
    assert seen == [True, True]  # each block ran on its lent copy
    assert all(blocks[i].weight.data_ptr() == host[i]["weight"] and blocks[i].bias.data_ptr() == host[i]["bias"]
               for i in range(2))
