"""The registry and weight resolution, tested against local files only (nothing is downloaded)."""

import hashlib
from pathlib import Path

import pytest
import torch

from tests.support import TINY, random_checkpoint, random_model
from vsrq.errors import ModelError
from vsrq.models.loader import load_model, read_checkpoint
from vsrq.models.registry import load_registry, model_availability, read_registry


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


pytestmark = pytest.mark.usefixtures("offline_models")


def write_registry(tmp_path: Path, body: str, monkeypatch) -> Path:
    reg = tmp_path / "models.toml"
    reg.write_text(body)
    monkeypatch.setenv("VSRQ_MODELS", str(reg))
    return reg


def test_packaged_registry_is_valid():
    models, default = load_registry()
    assert default in models
    for spec in models.values():
        assert spec.arch and spec.precision


def test_local_entry_loads_and_matches(tmp_path, monkeypatch):
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    write_registry(tmp_path, f'[models.mine]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\nsha256 = "{sha(ckpt)}"\n', monkeypatch)
    loaded = load_model("mine")
    x = torch.rand(1, 3, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), random_model()(x))
    assert loaded.scale == TINY.scale and model_availability(load_registry()[0]["mine"]) == "local"


def test_path_to_checkpoint_works_without_registry_entry(tmp_path):
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    assert load_model(str(ckpt)).module.config == TINY


def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    write_registry(tmp_path, f'[models.mine]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\nsha256 = "{"0" * 64}"\n', monkeypatch)
    with pytest.raises(ModelError, match="sha256"):
        load_model("mine")


@pytest.mark.parametrize("entry, message", [
    ('arch = "vsrq-dit"\nprecision = "fp32"\nweights = "x.safetensors"\ncolour = "red"', "unknown keys"),
    ('arch = "vsrq-dit"\nprecision = "fp8"\nweights = "x.safetensors"', "precision"),
    ('arch = "vsrq-dit"\nprecision = "w9a4"\nweights = "x.safetensors"', "wXaY"),
    ('arch = "vsrq-dit"\nprecision = "fp16"\nweights = "package:../../etc/passwd"', "plain file name"),
    ('arch = "vsrq-dit"\nprecision = "fp16"\nweights = "hf://a/b@main/c.safetensors"', "sha256"),
    ('arch = "vsrq-dit"\nprecision = "fp16"\nweights = "hf://nonsense"', "Hub reference"),
    ('precision = "fp16"\nweights = "x.safetensors"', "arch"),
    ('arch = "seedvr2"\nprecision = "fp16"\nweights = "x.safetensors"\nfiles = "oops"', "files must be a table"),
    ('arch = "seedvr2"\nprecision = "fp16"\nweights = "x.safetensors"\nfiles.vae = { path = "v.pth" }', "files.vae must be a table"),
    ('arch = "seedvr2"\nprecision = "fp16"\nweights = "cache:../x.safetensors"', "relative path inside the vsrq cache"),
])
def test_bad_entries_are_refused(tmp_path, entry, message):
    reg = tmp_path / "models.toml"
    reg.write_text(f"[models.bad]\n{entry}\n")
    with pytest.raises(ModelError, match=message):
        read_registry(reg)


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="unknown model 'nope'.*vsrq-tiny"):
        load_model("nope")


def test_pickle_and_corrupt_files_are_refused(tmp_path):
    pth = tmp_path / "m.pth"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(ModelError, match="only safetensors"):
        load_model(str(pth))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(str(bad))
    good = random_checkpoint(tmp_path / "good.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError):
        load_model(str(trunc))


def test_config_mismatch_with_registry_is_refused(tmp_path, monkeypatch):
    ckpt = random_checkpoint(tmp_path / "m.safetensors")
    write_registry(tmp_path, f'[models.mine]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\nconfig = {{ dim = 96 }}\n', monkeypatch)
    with pytest.raises(ModelError, match="dim=96"):
        load_model("mine")


def _fake_hub_cache(root: Path, repo: str, filename: str, src: Path, commit: str = "a" * 40) -> None:
    """The on-disk layout of the Hugging Face cache: blobs, a snapshot per commit, refs per branch."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    blob = repo_dir / "blobs" / sha(src)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(src.read_bytes())
    snap = repo_dir / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True)
    snap.symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("revision", ["main", "a" * 40])
def test_hub_weights_resolve_from_local_cache_offline(tmp_path, monkeypatch, revision):
    ckpt = random_checkpoint(tmp_path / "src.safetensors")
    _fake_hub_cache(tmp_path / "hf-hub", "someone/tiny-vsr", "weights/tiny.safetensors", ckpt)
    write_registry(tmp_path, f'[models.hubbed]\narch = "vsrq-dit"\nprecision = "fp32"\n'
                             f'weights = "hf://someone/tiny-vsr@{revision}/weights/tiny.safetensors"\nsha256 = "{sha(ckpt)}"\n', monkeypatch)
    assert model_availability(load_registry()[0]["hubbed"]) == "cached"
    loaded = load_model("hubbed")
    assert loaded.weights_path.name == "tiny.safetensors"
    assert "snapshots" in str(loaded.weights_path)


def test_hub_weights_missing_offline_say_what_to_fetch(tmp_path, monkeypatch):
    write_registry(tmp_path, '[models.hubbed]\narch = "vsrq-dit"\nprecision = "fp16"\n'
                             f'weights = "hf://someone/big-vsr@v1.0/big.safetensors"\nsha256 = "{"1" * 64}"\n', monkeypatch)
    assert model_availability(load_registry()[0]["hubbed"]) == "missing"
    with pytest.raises(ModelError, match=r"HF_HUB_OFFLINE.*hf://someone/big-vsr@v1.0/big.safetensors.*hf download someone/big-vsr big.safetensors --revision v1.0"):
        load_model("hubbed")


def test_checkpoint_metadata_round_trip(tmp_path):
    ckpt = random_checkpoint(tmp_path / "m.safetensors", precision="fp16")
    tensors, meta = read_checkpoint(ckpt)
    assert meta["vsrq.arch"] == "vsrq-dit" and meta["vsrq.precision"] == "fp16"
    assert all(t.dtype == torch.float16 for t in tensors.values())
