"""--max-vram's choice from a memory profile (the profile itself is measured on a GPU; here it is given)."""

import pytest

from vsrq.errors import VsrqError
from vsrq.pipeline.vram import GIB, Linear, MemoryProfile, choose, predict

PROFILE = MemoryProfile(dit_weights=int(6.3 * GIB), dit_streamed=int(0.6 * GIB), other_weights=int(0.5 * GIB),
                        encode=Linear(0.2 * GIB, 9000.0), decode=Linear(0.3 * GIB, 16000.0), dit=Linear(0.1 * GIB, 80000.0))


def test_fit_recovers_a_line_and_never_goes_negative():
    line = Linear.fit(100, 1100, 300, 3100)
    assert line(200) == pytest.approx(2100) and line.a == pytest.approx(100)
    assert Linear.fit(100, 500, 300, 400).b == 0  # noise that shrinks with size is not extrapolated downwards


def test_predictions_grow_with_chunk_and_tile_and_shrink_with_offload():
    size = (1920, 1080)
    assert predict(PROFILE, size, 21, 0, False) > predict(PROFILE, size, 9, 0, False)
    assert predict(PROFILE, size, 21, 0, False) > predict(PROFILE, size, 21, 512, False)
    assert predict(PROFILE, size, 21, 512, True) < predict(PROFILE, size, 21, 512, False)


def test_the_plan_fits_the_budget_keeping_weights_resident_then_long_chunks_then_big_tiles():
    big = choose(PROFILE, (1920, 1080), 80, None)
    assert (big.chunk, big.vae_tile, big.offload) == (21, 0, False)
    order = [(off, c, t) for off in (False, True) for c in (21, 17, 13, 9, 5) for t in (0, 1024, 768, 512, 384, 256)]
    for budget in (40, 20, 12, 10, 8, 4):
        plan = choose(PROFILE, (1920, 1080), budget, None)
        assert plan.predicted <= budget * GIB and "GiB" in plan.describe()
        for earlier in order[: order.index((plan.offload, plan.chunk, plan.vae_tile))]:
            assert predict(PROFILE, (1920, 1080), earlier[1], earlier[2], earlier[0]) > budget * GIB  # nothing preferred fits
    small = choose(PROFILE, (1920, 1080), 4, None)
    assert small.offload  # the weights alone (6.8 GiB) do not fit in 4 GiB
    fixed = choose(PROFILE, (1920, 1080), 12, 9)
    assert fixed.chunk == 9


def test_a_budget_below_the_smallest_plan_is_one_clear_error():
    with pytest.raises(VsrqError, match="too little for 1920x1080.*smallest plan"):
        choose(PROFILE, (1920, 1080), 0.5, None)


class ScriptedMemory:
    """Allocator readings of a made-up GPU: each stage needs a + b * units beyond the weights."""

    def __init__(self, needs):
        self.needs, self.calls, self.stage = needs, [], None

    def start(self, device):
        self.calls.append("start")
        return 1000  # bytes already allocated (the weights): the profile must subtract them

    def peak(self, device):
        stage, units = self.stage
        a, b = self.needs[stage]
        return 1000 + a + b * units


def test_measure_profile_probes_each_stage_twice_and_fits_the_lines(monkeypatch):
    import torch

    from tests.pipeline.test_seedvr2 import restorer
    from vsrq.pipeline.vram import measure_profile

    r = restorer()
    needs = {"encode": (5e5, 40.0), "dit": (2e5, 900.0), "decode": (7e5, 60.0)}
    mem = ScriptedMemory(needs)
    seen: list[str] = []
    for name in ("encode", "denoise", "decode"):  # tell the scripted allocator which stage runs, on what
        orig = getattr(r, name)

        def wrapped(x, _orig=orig, _name=name):
            seen.append(_name)
            if _name == "encode":  # video (B, 3, T, H, W): pixels per frame
                mem.stage = ("encode", x.shape[-1] * x.shape[-2])
            elif _name == "denoise":
                mem.stage = ("dit", x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2))  # latent (B, T', h, w, C): 2x2 patches
            else:
                mem.stage = ("decode", (8 * x.shape[2]) * (8 * x.shape[3]))
            return _orig(x)

        monkeypatch.setattr(r, name, wrapped)
    profile = measure_profile(r, torch.device("cpu"), torch.float32, memory=mem)
    assert mem.calls == ["start"] * 6  # three stages at each of the two probe sizes
    assert seen == ["encode", "decode"] + ["encode", "denoise", "decode"] * 2  # an unmeasured VAE pass first (lazy state)
    for stage, line in (("encode", profile.encode), ("dit", profile.dit), ("decode", profile.decode)):
        a, b = needs[stage]
        assert line.a == pytest.approx(a) and line.b == pytest.approx(b), stage
    weights = sum(t.numel() * t.element_size() for t in list(r.dit.parameters()) + list(r.dit.buffers()))
    assert profile.dit_weights == weights and 0 < profile.dit_streamed <= weights


def test_measure_profile_and_the_plan_need_cuda():
    import torch

    from tests.pipeline.test_seedvr2 import restorer
    from vsrq.pipeline.vram import apply_memory_plan, measure_profile

    with pytest.raises(VsrqError, match="CUDA"):
        measure_profile(restorer(), torch.device("cpu"), torch.float32)

    class Loaded:
        module = torch.nn.Linear(2, 2)  # not a SeedVR2 model

    with pytest.raises(VsrqError, match="SeedVR2 models only"):
        apply_memory_plan(Loaded(), None, (64, 64), print)
