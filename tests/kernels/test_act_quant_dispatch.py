"""Host-side logic of the activation kernels: which kernel runs, and the shared tuner.

No kernel runs here (those checks are in ``_interp_cases.py``); these are the decisions
made before a launch, which the interpreter cases only see one at a time.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vsrq.kernels import _triton as kt  # noqa: E402
from vsrq.kernels import act_quant as aq  # noqa: E402


@pytest.fixture(autouse=True)
def _compiled_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan as for a GPU (sm_80 here: no CUDA), also when the shell exports TRITON_INTERPRET."""
    monkeypatch.setattr(aq, "interpreting", lambda: False)


def _plan(k: int = 3072, dtype=torch.bfloat16, **kw) -> tuple[object, torch.Tensor]:
    x = torch.zeros(4, k, dtype=dtype)
    args = dict(bits=4, group_size=None, smooth=None, hadamard_block=0, lora_down=None, rowsum_group=None,
                clip_ratio=1.0)
    args.update(kw)
    return aq._plan(x, **args), x


@pytest.fixture
def tuning_home(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Tuning choices go to a temporary cache, never the user's."""
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path))
    kt._disk_choices.cache_clear()
    yield
    kt._disk_choices.cache_clear()


def test_tune_once_times_once_and_skips_failures(monkeypatch: pytest.MonkeyPatch, tuning_home) -> None:
    import triton.testing

    times = {"a": 3.0, "b": 1.0, "c": 2.0}
    calls: list[str] = []

    def fake_bench(fn, **_kw):
        fn()
        return times[calls[-1]]

    def launch(c: str) -> None:
        calls.append(c)
        if c == "bad":
            raise RuntimeError("does not compile")

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(kt, "_TUNED", {})
    assert kt.tune_once(("k",), ["a", "bad", "b", "c"], launch) == "b"
    n = len(calls)
    assert kt.tune_once(("k",), ["a", "bad", "b", "c"], launch) == "b"
    assert len(calls) == n, "a tuned key must not be timed again"
    assert kt._TUNED == {("k",): "b"}
    assert kt.tune_once(("one",), ["only"], launch) == "only" and len(calls) == n  # nothing to compare
    with pytest.raises(RuntimeError, match="no launch config"):
        kt.tune_once(("none",), ["bad"] * 2, launch)
    made: list[int] = []

    def make() -> list[str]:
        made.append(1)
        return ["a", "b"]

    assert kt.tune_once(("lazy",), make, launch) == "b" and kt.tune_once(("lazy",), make, launch) == "b"
    assert made == [1], "a candidate list given as a function is made once per key, not per call"


def test_tuned_choices_persist_across_processes(monkeypatch: pytest.MonkeyPatch, tuning_home) -> None:
    import triton.testing

    calls: list[str] = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **_kw: (fn(), {"x": 2.0, "y": 1.0}[calls[-1]])[1])
    monkeypatch.setattr(kt, "_TUNED", {})
    cands = [{"BLOCK": 64, "impl": "x"}, {"BLOCK": 128, "impl": "y"}]
    launch = lambda c: calls.append(c["impl"])  # noqa: E731
    assert kt.tune_once(("shape", 1), cands, launch) == cands[1]
    assert kt._tuning_file().is_file()
    monkeypatch.setattr(kt, "_TUNED", {})  # a new process: only the file remembers
    kt._disk_choices.cache_clear()
    n = len(calls)
    assert kt.tune_once(("shape", 1), cands, launch) == cands[1] and len(calls) == n, "remembered: no timing"
    monkeypatch.setattr(kt, "_TUNED", {})
    assert kt.tune_once(("shape", 1), cands[:1], launch) == cands[0] and len(calls) == n  # single: untimed
    monkeypatch.setattr(kt, "_TUNED", {})
    other = [{"BLOCK": 32, "impl": "x"}, {"BLOCK": 256, "impl": "y"}]  # the remembered one is gone: time again
    assert kt.tune_once(("shape", 1), other, launch) == other[1] and len(calls) > n


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, True),
        ({"group_size": 32}, True),
        ({"smooth": torch.ones(3072), "rowsum_group": 0}, True),
        ({"group_size": 64, "rowsum_group": 64}, True),
        ({"rowsum_group": 64}, False),  # per-token scales, row sums per 64: the two-pass kernel's
        ({"hadamard_block": 128}, False),
        ({"lora_down": torch.zeros(3072, 32, dtype=torch.bfloat16)}, False),
        ({"k": 16384}, True),
        ({"k": 16384 + 64}, False),
    ],
)
def test_tile_applies(kw: dict, want: bool) -> None:
    """The whole-row kernel serves every mode without rotation or low-rank branch up to its K limit,
    with row sums per row or per the scale's groups."""
    k = kw.pop("k", 3072)
    p, _ = _plan(k, **kw)
    assert aq.tile_applies(p) is want


def test_gemm_tuner_offers_tma_store_to_the_persistent_kernel_on_hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hopper candidates of impl="auto" are every implementation x config, plus the persistent
    kernel's configs with the TMA-store epilogue (GPU run 11); other archs get no TMA store."""
    from vsrq.kernels import qgemm as qg

    args = {"a": torch.zeros(4, 64, dtype=torch.int8), "group": 0, "c": torch.zeros(4, 8, dtype=torch.bfloat16)}
    monkeypatch.setattr(qg, "max_shared_memory", lambda dev: 227 * 1024)
    monkeypatch.setattr(qg, "_arch_of", lambda t: "sm90")
    cands = qg._candidates(qg.SM90_AUTO_IMPLS, args)
    stores = [(impl, c) for impl, c in cands if c.get("TMA_STORE")]
    n = len(qg.gemm_configs("sm90", False))
    assert len(cands) == len(qg.SM90_AUTO_IMPLS) * n + n
    assert {impl for impl, _ in stores} == {"persistent"} and len(stores) == n
    fp32_out = dict(args, c=torch.zeros(4, 8))
    assert not any(c.get("TMA_STORE") for _, c in qg._candidates(qg.SM90_AUTO_IMPLS, fp32_out))
    monkeypatch.setattr(qg, "_arch_of", lambda t: "sm80")
    assert not any(c.get("TMA_STORE") for _, c in qg._candidates(("ptr",), args))


def test_first_tuning_is_announced_once(monkeypatch: pytest.MonkeyPatch, tuning_home, caplog) -> None:
    """A cache miss that times candidates says so once per process (the first GPU run pauses for it)."""
    import logging

    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **_kw: (fn(), 1.0)[1])
    monkeypatch.setattr(kt, "_TUNED", {})
    monkeypatch.setattr(kt, "_ANNOUNCED", False)
    with caplog.at_level(logging.INFO, logger="vsrq.kernels"):
        kt.tune_once(("a",), ["x", "y"], lambda c: None)
        kt.tune_once(("b",), ["x", "y"], lambda c: None)
        kt.tune_once(("a",), ["x", "y"], lambda c: None)
    notes = [r for r in caplog.records if r.name == "vsrq.kernels"]
    assert len(notes) == 1 and "first run on this GPU" in notes[0].getMessage()
