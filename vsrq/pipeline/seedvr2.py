"""SeedVR2's one-step restoration of a chunk of frames, as one module the upscale pipeline can run.

What happens to a chunk (B, 3, T, h, w) in [0, 1]:
  1. resize to the output size (bicubic); the DiT restores a blurry video *at output resolution*
  2. pad: sides to multiples of 16 (replicate; the official code crops instead, we keep every
     pixel), frames to 4n+1 by repeating the last one (the VAE compresses time 4x after frame 0)
  3. VAE encode -> latent (B, T', H/8, W/8, 16), spatially tiled with blended seams if asked
  4. one DiT step at t=1000: input = noise ++ latent ++ ones (33 channels); the DiT predicts the
     velocity v, and the clean latent is noise - v (lerp schedule, v-prediction, Euler endpoint)
  5. VAE decode (tiled if asked), colour fix against the resized input, crop the padding.

The noise comes from a generator seeded per call, so a chunk's output does not depend on what ran
before it: resumed and uninterrupted jobs give the same frames. Block offload keeps the DiT's
blocks in (pinned) host memory and streams each to the GPU just before it runs, for small cards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import InputError
from vsrq.models.seedvr2.vae import CONV_FORMATS as VAE_PRECISIONS
from vsrq.pipeline.colour_fix import COLOUR_FIXES, colour_fix
from vsrq.pipeline.resize import resize_images
from vsrq.pipeline.tiling import tiled_apply

log = logging.getLogger(__name__)

TIMESTEP = 1000.0  # one step from pure noise: the trailing-uniform schedule with a single step
COLOUR_FIX_FRAMES = 4  # frames colour-fixed at a time (bounds the fp32 copies the fix makes)


MIN_VAE_TILE = 64  # smallest VAE tile side the CLI accepts: its blended overlap is then >= 16 pixels


def vae_tile_overlap(tile: int, cap: int = 64) -> int:
    """The blended overlap of VAE tiles of side `tile`: a quarter of it in 16-pixel steps, at most `cap`
    (16 pixels from MIN_VAE_TILE up, so no tiling is left with hard seams)."""
    return min(cap, tile // 4 // 16 * 16)


@dataclass
class SeedVR2Settings:
    """Knobs of a run; the CLI maps its options onto these."""

    scale: float = 2.0
    colour_fix: str = "wavelet"
    vae_tile: int = 0  # output pixels per VAE tile side (0: whole frame)
    vae_tile_overlap: int = 64
    seed: int = 0
    offload_blocks: bool = False
    compile: bool = False  # CUDA: torch.compile each DiT block (fuses its norm/RoPE/modulation glue; ~20-40 s once per size)
    vae_precision: str = "bf16"  # "fp8": the VAE's GroupNorm-fed and upsampler convs in e4m3 (faster, less exact: docs/PERF.md)

    def fingerprint(self) -> dict:
        """What a resumed job must share with the interrupted one (offload moves no output bit)."""
        extra = {"vae precision": self.vae_precision} if self.vae_precision != "bf16" else {}  # old journals stay valid
        return {"scale": self.scale, "colour fix": self.colour_fix, "vae tile": [self.vae_tile, self.vae_tile_overlap], "seed": self.seed,
                **extra}

    def __post_init__(self) -> None:
        if self.colour_fix not in COLOUR_FIXES:
            raise ValueError(f"colour fix must be one of {', '.join(COLOUR_FIXES)}, got {self.colour_fix!r}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.vae_precision not in VAE_PRECISIONS:
            raise ValueError(f"VAE precision must be one of {', '.join(VAE_PRECISIONS)}, got {self.vae_precision!r}")
        if self.vae_tile < 0 or (self.vae_tile and self.vae_tile <= self.vae_tile_overlap):
            raise ValueError(f"VAE tile {self.vae_tile} must be 0 or larger than its overlap {self.vae_tile_overlap}")


@dataclass(frozen=True)
class RestorerConfig:
    """What ChunkUpscaler reads from a model's `config`: its scale and the LR pixel alignment of tiles."""

    scale: float
    pixel_align: tuple[int, int] = (1, 1)


def pad_frames_4n1(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> T' = 4n+1 >= T frames by repeating the last (one frame stays one)."""
    t = x.shape[2]
    target = 1 if t == 1 else max(5, t + (-(t - 1)) % 4)
    if target == t:
        return x
    return torch.cat([x, x[:, :, -1:].expand(-1, -1, target - t, -1, -1)], dim=2)


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Replicate-pad the last two dims of (B, C, T, H, W) up to multiples of m."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if not ph and not pw:
        return x
    b, c, t = x.shape[:3]
    flat = F.pad(x.transpose(1, 2).reshape(b * t, c, h, w), (0, pw, 0, ph), mode="replicate")
    return flat.view(b, t, c, h + ph, w + pw).transpose(1, 2)


def resize_frames(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, T, h, w) to (H, W) = size with the pipelines' one resize (`resize_images`)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize_images(x.transpose(1, 2), size).transpose(1, 2)


class BlockStreamer:
    """Keeps a module list's tensors in (pinned) host memory and lends each block to the GPU for its turn.

    The next block's copy is issued on a side stream while the current one computes, so the
    transfer mostly hides behind the block's compute; at most two blocks are on the GPU at once.
    """

    def __init__(self, blocks: nn.ModuleList, device: torch.device) -> None:
        self.blocks, self.device = blocks, device
        self.host: list[dict[str, torch.Tensor]] = []
        for block in blocks:
            block.to("cpu")
            tensors = {}
            for name, p in self._named(block).items():
                tensors[name] = p.data.pin_memory() if device.type == "cuda" else p.data
                p.data = tensors[name]
            self.host.append(tensors)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @staticmethod
    def _named(block: nn.Module) -> dict[str, torch.Tensor]:
        return dict(list(block.named_parameters()) + list(block.named_buffers()))

    def _upload(self, i: int) -> dict[str, torch.Tensor]:
        if self.stream is None:
            return {k: v.to(self.device) for k, v in self.host[i].items()}
        with torch.cuda.stream(self.stream):
            return {k: v.to(self.device, non_blocking=True) for k, v in self.host[i].items()}

    def run(self, step) -> None:
        """Call step(i) for every block i in order, with block i's tensors on the GPU meanwhile."""
        ready = self._upload(0)
        for i, block in enumerate(self.blocks):
            if self.stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
            current, named = ready, self._named(block)
            if i + 1 < len(self.blocks):
                ready = self._upload(i + 1)
            for k, v in current.items():
                named[k].data = v
            try:
                step(i)
                if self.stream is not None:
                    for v in current.values():  # the side stream must not reuse this memory too early
                        v.record_stream(torch.cuda.current_stream(self.device))
            finally:  # also after an out-of-memory error: the block must point at its host copy again
                for k, v in self.host[i].items():
                    named[k].data = v
            del current


def compile_blocks(dit: nn.Module) -> None:
    """torch.compile every DiT block's forward (once; blocks of one kind share the compiled code).

    Measured on an H100 at 1080p (docs/PERF.md): the DiT step 1.8x faster in bf16, 2.0x in W4A4,
    because the eager blocks spend most of their time in small norm, RoPE and layout kernels."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for block in dit.blocks:
        if not hasattr(block, "_vsrq_eager_forward"):
            block._vsrq_eager_forward = block.forward
            block.forward = torch.compile(block.forward, dynamic=False)


def uncompile_blocks(dit: nn.Module) -> None:
    """Back to the eager forwards (streamed blocks swap their tensors, which compiled code must not see)."""
    for block in dit.blocks:
        if hasattr(block, "_vsrq_eager_forward"):
            block.forward = block._vsrq_eager_forward
            del block._vsrq_eager_forward


class SeedVR2Restorer(nn.Module):
    """DiT + VAE + the text embedding, run as SeedVR2's one-step restorer (see module docstring)."""

    arch = "seedvr2"
    quant_part = "dit"  # vsrq quantize: which submodule is quantized and written
    quant_keep = ("vid_in", "txt_in", "emb_in", "vid_out", "vae")  # kept 16-bit: small or outside the DiT
    preferred_chunk = (21, 4)  # frames per chunk (4n+1: no padding) and cross-faded overlap

    def __init__(self, dit: nn.Module, vae: nn.Module, text: torch.Tensor, settings: SeedVR2Settings | None = None) -> None:
        super().__init__()
        self.dit, self.vae = dit, vae
        self.register_buffer("text", text, persistent=False)
        self.settings = settings or SeedVR2Settings()
        self._streamer: BlockStreamer | None = None

    def quantized_checkpoint(self) -> tuple[nn.Module, str, dict]:
        """What `vsrq quantize` writes: the DiT alone, as a vsrq SeedVR2 DiT checkpoint (the VAE and
        text embedding stay the source model's files)."""
        from vsrq.models.seedvr2.load import DIT_ARCH

        return self.dit, DIT_ARCH, self.dit.cfg.to_dict()

    @property
    def config(self) -> RestorerConfig:
        s = Fraction(self.settings.scale).limit_denominator(64)
        # a tile origin on a multiple of `align` LR pixels lands on a multiple of 16 output pixels
        align = int(16 / s) if (16 / s).denominator == 1 else 16
        return RestorerConfig(scale=self.settings.scale, pixel_align=(1, max(1, align)))

    def place(self, device: torch.device, dtype: torch.dtype) -> SeedVR2Restorer:
        """Move to `device` in `dtype`; with block offload the DiT's blocks stay in host memory."""
        self.to(dtype=dtype)
        if self.settings.offload_blocks and device.type == "cuda":
            if self.settings.compile:
                log.warning("--compile is not used with DiT block offload (streamed blocks run eager)")
            uncompile_blocks(self.dit)
            blocks = self.dit.blocks
            for name, child in self.named_children():
                if name != "dit":
                    child.to(device)
            for name, child in self.dit.named_children():
                if name != "blocks":
                    child.to(device)
            for name, buf in self.dit.named_buffers(recurse=False):
                setattr(self.dit, name, buf.to(device))
            self.text = self.text.to(device)
            self._streamer = BlockStreamer(blocks, device)
        else:
            self.to(device)
            self._streamer = None
            if self.settings.compile and device.type == "cuda":
                compile_blocks(self.dit)
        return self

    # -- the stages, exposed for the benchmark and for tiling ----------------------------------

    def _generator(self, offset: int) -> torch.Generator:
        """A CPU generator: its numbers are the same on every device and GPU model, so a job resumed
        on another device continues with the same noise (draws are a few MB, moved after); the
        arithmetic itself still differs between devices and dtypes."""
        return torch.Generator(device="cpu").manual_seed(self.settings.seed + offset)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] (H, W multiples of 16, T = 4n+1) -> latent (B, T', H/8, W/8, 16).

        The latent is a sample of the VAE posterior (as the official inference draws it), from a
        generator seeded per call."""
        s = self.settings
        self.vae.conv_format = s.vae_precision
        gen = self._generator(1)
        enc = lambda v: self.vae.encode(v, sample=True, generator=gen).permute(0, 4, 1, 2, 3)  # noqa: E731 - channels first for tiling
        lat = tiled_apply(enc, video, scale=Fraction(1, 8), tile=s.vae_tile, overlap=s.vae_tile_overlap, align=16)
        return lat.permute(0, 2, 3, 4, 1).to(video.dtype)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, T', h, w, 16) -> video (B, 3, T, 8h, 8w) in about [-1, 1]."""
        s = self.settings
        self.vae.conv_format = s.vae_precision
        dec = lambda z: self.vae.decode(z.permute(0, 2, 3, 4, 1))  # noqa: E731
        tile, overlap = s.vae_tile // 8, s.vae_tile_overlap // 8
        return tiled_apply(dec, latent.permute(0, 4, 1, 2, 3), scale=8, tile=tile, overlap=overlap, align=2).to(latent.dtype)

    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """The one DiT step: clean latent from the LR latent (B, T', h, w, 16)."""
        gen = self._generator(0)
        noise = torch.randn(latent.shape, generator=gen, dtype=torch.float32).to(latent.device, latent.dtype)
        ones = torch.ones_like(latent[..., :1])
        x = torch.cat([noise, latent, ones], dim=-1)
        t = torch.full((latent.shape[0],), TIMESTEP, device=latent.device)
        if self._streamer is None:
            v = self.dit(x, self.text.to(x.dtype), t)
        else:
            state = self.dit.embed(x, self.text.to(x.dtype), t)
            self._streamer.run(lambda i: self.dit.run_block(i, state))
            v = self.dit.head(state)
        return noise - v.to(noise.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, h, w) in [0, 1] -> (B, 3, T, round(h*scale), round(w*scale)) in [0, 1]."""
        b, _, t, h, w = x.shape
        size = (round(h * self.settings.scale), round(w * self.settings.scale))
        if min(size) < 16:  # clamping each side alone would distort the picture
            raise InputError(f"output {size[1]}x{size[0]} is under 16 pixels on a side: use a larger --scale")
        up = resize_frames(x.float(), size).clamp(0, 1).mul(2).sub(1)
        video = pad_to_multiple(pad_frames_4n1(up), 16).to(next(self.dit.parameters()).dtype)
        restored = self.decode(self.denoise(self.encode(video)))
        del video
        out = torch.empty(b, 3, t, *size, device=x.device, dtype=torch.float32)
        for s in range(0, t, COLOUR_FIX_FRAMES):  # a few frames at a time: the wavelet fix makes ~10 copies
            e = min(t, s + COLOUR_FIX_FRAMES)
            frames = restored[:, :, s:e, : size[0], : size[1]].transpose(1, 2).reshape(-1, 3, *size).float()
            ref = up[:, :, s:e].transpose(1, 2).reshape(-1, 3, *size)
            fixed = colour_fix(frames, ref, self.settings.colour_fix)
            out[:, :, s:e] = fixed.view(b, e - s, 3, *size).transpose(1, 2).add(1).div(2).clamp(0, 1)
        return out
