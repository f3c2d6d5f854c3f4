"""Host-side logic of the activation kernels: single-pass dispatch, chunk widths, the tuner.

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


@pytest.mark.parametrize(
    ("k", "cap", "want"),
    [(3072, 512, 512), (2560, 512, 512), (4096, 1024, 1024), (200, 256, 32), (96, 64, 32), (131, 64, 32),
     (64, 512, 64), (3072, 64, 64)],
)
def test_row_chunk_pads_little_and_unrolls_little(k: int, cap: int, want: int) -> None:
    assert aq.row_chunk(k, cap) == want


def _plan(k: int = 3072, dtype=torch.bfloat16, **kw) -> tuple[object, torch.Tensor]:
    x = torch.zeros(4, k, dtype=dtype)
    args = dict(bits=4, group_size=None, smooth=None, hadamard_block=0, lora_down=None, rowsum_group=None,
                clip_ratio=1.0)
    args.update(kw)
    return aq._plan(x, **args), x


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, True),
        ({"lora_down": torch.zeros(3072, 32, dtype=torch.bfloat16), "smooth": torch.ones(3072)}, True),
        ({"rowsum_group": 64}, True),
        ({"k": 4096}, True),
        ({"k": 4097}, False),
        ({"group_size": 64}, False),
        ({"hadamard_block": 128}, False),
        # fp32 x with a low-rank dot (>= 16 rows): 16 x 3072 words over 16 warps is over budget
        ({"dtype": torch.float32, "lora_down": torch.zeros(3072, 32, dtype=torch.bfloat16)}, False),
        ({"dtype": torch.float32}, True),
    ],
)
def test_single_pass_fits(kw: dict, want: bool) -> None:
    k = kw.pop("k", 3072)
    dtype = kw.pop("dtype", torch.bfloat16)
    p, x = _plan(k, dtype, **kw)
    assert aq.single_pass_fits(p, x) is want
    assert aq._use_single_pass(p, None, x) is False  # the single-pass kernel only when forced (measured slower)


def test_forcing_single_pass_where_it_cannot_run_raises() -> None:
    for kw in ({"group_size": 64}, {"k": 8192}):
        k = kw.pop("k", 3072)
        p, x = _plan(k, **kw)
        with pytest.raises(ValueError, match="single-pass"):
            aq._use_single_pass(p, True, x)
    p, x = _plan(3072, hadamard_block=128)
    assert aq._use_single_pass(p, True, x) is True  # supported when asked for
    assert aq._use_single_pass(p, False, x) is False


def test_packed_words_only_for_even_aligned_16bit_rows() -> None:
    x = torch.zeros(3, 10, dtype=torch.bfloat16)
    w, code = aq._packed_words(x)
    assert code == 1 and w.dtype == torch.int32 and w.shape == (3, 5)
    assert aq._packed_words(x.half())[1] == 2
    assert aq._packed_words(torch.zeros(3, 11, dtype=torch.bfloat16))[1] == 0
    assert aq._packed_words(x.float())[1] == 0
    assert aq._packed_words(torch.zeros(3, 12, dtype=torch.bfloat16)[:, 1:11])[1] == 0  # 2-byte offset


def test_candidates_fit_the_register_budget_at_the_bench_shapes() -> None:
    for arch in ("sm90", "sm80"):
        for k in (2560, 3072, 4096):
            p, x = _plan(k, smooth=torch.ones(k), lora_down=torch.zeros(k, 32, dtype=torch.bfloat16))
            p.arch = arch
            assert all(aq._row_fits(p, c, x) for c in aq.row_configs(arch, True)[:2]), (arch, k)
            p, x = _plan(k, smooth=torch.ones(k))
            p.arch = arch
            assert all(aq._row_fits(p, c, x) for c in aq.row_configs(arch, False)), (arch, k)


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
    assert kt.tuned_items() == [(("k",), "b")]
    assert kt.tune_once(("one",), ["only"], launch) == "only" and len(calls) == n  # nothing to compare
    with pytest.raises(RuntimeError, match="no launch config"):
        kt.tune_once(("none",), ["bad"] * 2, launch)


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
