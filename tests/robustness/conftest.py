"""A random-weight model registered once for the whole module (the CLI cases only need *a* model)."""

from __future__ import annotations

import pytest

from tests.support import random_checkpoint


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """Like tests/cli's `test_model`, but made once per module: 40-odd CLI runs share it."""
    d = tmp_path_factory.mktemp("model")
    ckpt = random_checkpoint(d / "random-tiny.safetensors")
    reg = d / "models.toml"
    reg.write_text(f'default = "random-tiny"\n[models.random-tiny]\narch = "vsrq-dit"\nprecision = "fp32"\nweights = "{ckpt}"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSRQ_MODELS", str(reg))
        mp.setenv("VSRQ_CACHE", str(d / "cache"))
        yield "random-tiny"
