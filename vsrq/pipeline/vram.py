"""`--max-vram`: pick SeedVR2's chunk length, VAE tile and block offload from a measured estimate.

The estimate is measured, not guessed: two small probe runs of each stage on the user's GPU, with
the user's model, give the bytes each stage needs beyond the weights as a + b * (its work unit):
pixels per VAE call (the VAE runs 4 frames or 1 latent at a time, so its need grows with the
tile, not the clip) and tokens for the DiT (which sees the whole chunk). Full-frame float buffers
of the chunk (resize, colour fix, tile accumulators) are counted from their shapes. The plan is the
first that fits, trying in order: weights on the GPU before offload, longer chunks before larger
tiles (temporal context matters more than seam-free VAE tiles).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from vsrq.errors import VsrqError

GIB = 1024 ** 3
CHUNKS = (21, 17, 13, 9, 5)
TILES = (0, 1024, 768, 512, 384, 256)  # output pixels per VAE tile side; 0 = whole frame
FRAME_BUFFERS = 6  # float32 copies of the chunk at output size alive at once (resize, colour fix, accumulators)


@dataclass(frozen=True)
class Linear:
    """bytes = a + b * units."""

    a: float
    b: float

    def __call__(self, units: float) -> float:
        return self.a + self.b * units

    @staticmethod
    def fit(u1: float, y1: float, u2: float, y2: float) -> Linear:
        b = max(0.0, (y2 - y1) / (u2 - u1))
        return Linear(max(0.0, y1 - b * u1), b)


@dataclass(frozen=True)
class MemoryProfile:
    """What one model needs on one GPU: weights and per-stage working memory."""

    dit_weights: int  # the DiT on the GPU
    dit_streamed: int  # the DiT's share on the GPU with block offload (all but the blocks, plus two blocks)
    other_weights: int  # VAE, text
    encode: Linear  # per pixel of a VAE tile
    decode: Linear  # per pixel of a VAE tile
    dit: Linear  # per token


@dataclass(frozen=True)
class Plan:
    chunk: int
    vae_tile: int
    offload: bool
    predicted: float  # bytes
    budget: float

    def describe(self) -> str:
        tile = f"VAE tiles of {self.vae_tile} px" if self.vae_tile else "whole-frame VAE"
        return (f"--max-vram {self.budget / GIB:.1f} GiB: chunks of {self.chunk} frames, {tile}"
                f"{', DiT blocks offloaded' if self.offload else ''} (predicted peak {self.predicted / GIB:.1f} GiB)")


def predict(profile: MemoryProfile, size: tuple[int, int], chunk: int, tile: int, offload: bool) -> float:
    """Predicted peak bytes for output `size` (w, h) in chunks of `chunk` frames."""
    w, h = (v + (-v) % 16 for v in size)
    t = chunk if chunk == 1 else chunk + (-(chunk - 1)) % 4
    tile_px = min(tile, h) * min(tile, w) if tile else h * w
    tokens = ((t - 1) // 4 + 1) * (h // 16) * (w // 16)
    frames = FRAME_BUFFERS * 3 * t * h * w * 4
    weights = (profile.dit_streamed if offload else profile.dit_weights) + profile.other_weights
    work = max(profile.encode(tile_px), profile.decode(tile_px), profile.dit(tokens))
    return weights + work + frames


def choose(profile: MemoryProfile, size: tuple[int, int], budget_gib: float, chunk: int | None) -> Plan:
    """The first plan that fits (see the module docstring for the order); `chunk` fixes the length."""
    budget = budget_gib * GIB
    chunks = (chunk,) if chunk else CHUNKS
    smallest = None
    for offload in (False, True):
        for c in chunks:
            for tile in TILES:
                need = predict(profile, size, c, tile, offload)
                if need <= budget:
                    return Plan(c, tile, offload, need, budget)
                smallest = need if smallest is None else min(smallest, need)
    raise VsrqError(f"--max-vram {budget_gib:g} GiB is too little for {size[0]}x{size[1]} output: the smallest plan "
                    f"(chunks of {chunks[-1]}, VAE tiles of {TILES[-1]} px, DiT blocks offloaded) needs about "
                    f"{smallest / GIB:.1f} GiB; use a smaller --scale or a larger budget")


def tensor_bytes(tensors) -> int:
    """Bytes held by tensors (parameters, buffers), as stored."""
    return sum(t.numel() * t.element_size() for t in tensors)


class CudaMemory:
    """The allocator readings a probe needs; tests pass a scripted stand-in (no GPU in CI)."""

    def start(self, device: torch.device) -> int:
        """Settle the allocator, reset the peak; returns the bytes allocated before the stage."""
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)

    def peak(self, device: torch.device) -> int:
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)


PROBE_SIDES = (128, 256)  # square probe frames (output pixels), 5 frames each


@torch.inference_mode()
def measure_profile(restorer, device: torch.device, dtype: torch.dtype, memory: CudaMemory | None = None) -> MemoryProfile:
    """Probe each stage at two small sizes on `device` (the model must be placed there)."""
    if memory is None:
        if device.type != "cuda":
            raise VsrqError("--max-vram needs a CUDA device")
        memory = CudaMemory()
    blocks = restorer.dit.blocks
    block_bytes = [tensor_bytes(list(b.parameters()) + list(b.buffers())) for b in blocks]
    dit_all = tensor_bytes(list(restorer.dit.parameters()) + list(restorer.dit.buffers()))
    other = tensor_bytes(list(restorer.vae.parameters()) + list(restorer.vae.buffers())) + tensor_bytes([restorer.text])
    # one unmeasured pass first: what the VAE makes once (channels-last weights, packed conv weights,
    # kernel tuning) must not land in the first probe's peak and bend the fitted slope
    warm = torch.rand(1, 3, 5, PROBE_SIDES[0], PROBE_SIDES[0], device=device, dtype=dtype) * 2 - 1
    restorer.decode(restorer.encode(warm))
    del warm
    probes = {}
    for side in PROBE_SIDES:
        video = torch.rand(1, 3, 5, side, side, device=device, dtype=dtype) * 2 - 1
        row = {}
        for stage in ("encode", "dit", "decode"):
            base = memory.start(device)
            if stage == "encode":
                latent = restorer.encode(video)
            elif stage == "dit":
                clean = restorer.denoise(latent)
            else:
                restorer.decode(clean)
            row[stage] = memory.peak(device) - base
        probes[side] = (row, latent.shape[1] * (side // 16) ** 2)
        del video, latent, clean
    (r1, tok1), (r2, tok2) = (probes[side] for side in PROBE_SIDES)
    return MemoryProfile(
        dit_weights=dit_all,
        dit_streamed=dit_all - sum(block_bytes) + 2 * max(block_bytes),
        other_weights=other,
        encode=Linear.fit(PROBE_SIDES[0] ** 2, r1["encode"], PROBE_SIDES[1] ** 2, r2["encode"]),
        decode=Linear.fit(PROBE_SIDES[0] ** 2, r1["decode"], PROBE_SIDES[1] ** 2, r2["decode"]),
        dit=Linear.fit(tok1, r1["dit"], tok2, r2["dit"]),
    )


def apply_memory_plan(model, opts, size: tuple[int, int], say) -> object:
    """Measure, choose and apply a plan to a loaded SeedVR2 model; returns the UpscaleOptions to use."""
    from dataclasses import replace

    from vsrq.pipeline.device import pick_device, pick_dtype
    from vsrq.pipeline.seedvr2 import SeedVR2Restorer

    restorer = model.module
    if not isinstance(restorer, SeedVR2Restorer):  # the probes run its stages (encode, denoise, decode)
        raise VsrqError("--max-vram applies to SeedVR2 models only")
    dev = pick_device(opts.device)
    if dev.type != "cuda":
        raise VsrqError("--max-vram needs a CUDA device (--device cuda)")
    dtype = pick_dtype(dev)
    # bytes of the weights once placed (float tensors take `dtype`; packed low-bit ones keep theirs)
    weights = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
                  for t in list(restorer.parameters()) + list(restorer.buffers()))
    # probe with the weights where they may end up: streamed when they alone would crowd the budget
    probe_offload = weights > 0.8 * opts.max_vram * GIB
    # probe untiled: the fit is per pixel of one VAE call, so the probe's calls must be whole frames
    restorer.settings = replace(restorer.settings, offload_blocks=probe_offload, vae_tile=0)
    restorer.place(dev, dtype)
    profile = measure_profile(restorer, dev, dtype)
    plan = choose(profile, size, opts.max_vram, None if opts.auto_chunk else opts.chunk)
    restorer.settings = replace(restorer.settings, vae_tile=plan.vae_tile, offload_blocks=plan.offload)
    say(plan.describe())
    return replace(opts, chunk=plan.chunk, overlap=min(opts.overlap, plan.chunk // 2))
