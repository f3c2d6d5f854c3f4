"""The capability protocols (vsrq.models.interfaces) against the real classes: each satisfies the
ones it should and no others, and their members are found the way Python 3.12+ looks them up."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.support import TINY, random_model, tiny_seedvr2
from vsrq.models import interfaces as ifc
from vsrq.models.interfaces import (DEFAULT_CHUNK, FoldableModel, ManagedRestorer, NormFusingLinear, PartlyQuantized,
                                    ResidualFusingLinear, VSRModel)
from vsrq.models.seedvr2.dit import SeedVR2DiT
from vsrq.pipeline.seedvr2 import SeedVR2Restorer
from vsrq.quant.qlinear import QuantLinear

MODEL_PROTOCOLS = (VSRModel, FoldableModel, ManagedRestorer, PartlyQuantized)
LAYER_PROTOCOLS = (NormFusingLinear, ResidualFusingLinear)


def _members(proto: type) -> list[str]:
    return [n for n in vars(proto) if not n.startswith("_")] + list(vars(proto).get("__annotations__", {}))


def _satisfies(obj: object) -> set[type]:
    return {p for p in MODEL_PROTOCOLS + LAYER_PROTOCOLS if isinstance(obj, p)}


@pytest.fixture(scope="module")
def restorer() -> SeedVR2Restorer:
    return SeedVR2Restorer(*tiny_seedvr2()).eval()


def test_vsr_dit_is_a_foldable_model() -> None:
    model = random_model()
    assert _satisfies(model) == {VSRModel, FoldableModel}
    assert _satisfies(random_model().fold_modulation_()) == {VSRModel, FoldableModel}
    assert not ifc.is_folded(model) and ifc.is_folded(random_model(TINY).fold_modulation_())
    assert ifc.preferred_chunk(model) == DEFAULT_CHUNK == (8, 2)


def test_seedvr2_restorer_is_a_managed_partly_quantized_model(restorer: SeedVR2Restorer) -> None:
    assert _satisfies(restorer) == {VSRModel, ManagedRestorer, PartlyQuantized}
    assert ifc.preferred_chunk(restorer) == restorer.preferred_chunk == (21, 4)
    assert not ifc.is_folded(restorer)
    net, arch, _ = restorer.quantized_checkpoint()
    assert net is restorer.dit and arch == "seedvr2-dit"


def test_seedvr2_dit_claims_nothing() -> None:
    """The restorer's DiT is written as its quantized part: a plain network to write_checkpoint."""
    dit = tiny_seedvr2()[0]
    assert isinstance(dit, SeedVR2DiT) and _satisfies(dit) == set()


def test_quant_linear_fuses_norm_and_residual_and_plain_linear_does_not() -> None:
    q = QuantLinear(64, 8)
    assert _satisfies(q) == {NormFusingLinear, ResidualFusingLinear}
    assert ifc.normed_forward(q) == q.forward_normed and ifc.residual_forward(q) == q.forward_residual
    lin = torch.nn.Linear(64, 8)
    assert _satisfies(lin) == set()
    assert ifc.normed_forward(lin) is None and ifc.residual_forward(lin) is None


def test_protocol_members_are_not_module_attributes(restorer: SeedVR2Restorer) -> None:
    """From Python 3.12 isinstance looks protocol members up with inspect.getattr_static, which
    misses submodules, parameters and buffers: every member must be found that way on the real
    classes too, whatever Python runs the tests."""
    cases = [(random_model(), (VSRModel, FoldableModel)), (restorer, (VSRModel, ManagedRestorer, PartlyQuantized)),
             (QuantLinear(64, 8), LAYER_PROTOCOLS)]
    for obj, protos in cases:
        for proto in protos:
            for name in _members(proto):
                inspect.getattr_static(obj, name)  # raises AttributeError where isinstance would fail on 3.12
