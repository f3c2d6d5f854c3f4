"""Resumable, time-bounded training of the VSR DiT.

A GPU lease gives at most ~10 minutes per command, so training runs in slices: each call trains
until its time is up, saves everything in one safetensors file (weights, EMA weights, optimizer
moments, step) and the next call carries on from there. The batch of step s depends only on
(seed, s), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from vsrq.errors import VsrqError
from vsrq.models.dit import DiTConfig, VSRDiT
from vsrq.models.loader import save_checkpoint
from vsrq.train.data import crop_pair, draw_crop_plan
from vsrq.train.flow import plan_flow
from vsrq.train.losses import LossWeights, static_clip, vsr_loss


class PairStore(Protocol):
    """Training clips: LR/HR uint8 pairs (T, h, w, 3) and (T, s*h, s*w, 3)."""

    def __len__(self) -> int: ...

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def pair_motion(store: PairStore, index: int) -> tuple[dict | None, tuple[int, int] | None]:
    """The camera motion and HR size of pair `index` if the store knows them (synthetic camera
    clips), else (None, None): such clips train the warp loss with zero flow."""
    motion = getattr(store, "motion", None)
    return motion(index) if motion is not None else (None, None)


@dataclass
class TrainOptions:
    run_dir: Path
    model: dict = field(default_factory=dict)
    steps: int = 20000
    batch: int = 16
    crop: int = 48
    frames: int = 8
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup: int = 300
    ema: float = 0.999
    seed: int = 0
    minutes: float = 9.0
    log_every: int = 50
    save_every_s: float = 180.0
    workers: int = 4
    device: str = "auto"
    loss: dict = field(default_factory=dict)
    init: str = ""  # checkpoint whose weights start a new run (fine-tuning); ignored when resuming
    qat: str = ""  # quantization-aware training through this recipe's numerics (vsrq.quant.qat); "" = float

    def to_json(self) -> str:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return json.dumps(d)


class PackedPairs:
    """A packed training set (vsrq.train.data) as LR/HR pairs: every clip in each of its LR variants."""

    def __init__(self, root: Path, degradations: str = "all") -> None:
        from vsrq.train.data import ClipDataset
        from vsrq.train.degrade import is_light

        if degradations not in ("all", "light"):
            raise VsrqError(f"degradations must be 'all' or 'light', got {degradations!r}")
        self.clips = ClipDataset(root, crop=None, augment=False, cache=True)
        self.index = [(i, j) for i in range(len(self.clips)) for j in range(self.clips.num_variants(i))
                      if degradations == "all" or is_light(self.clips.meta[i]["lr"][j])]
        if not self.index:
            raise VsrqError(f"{root} has no pairs with {degradations} degradations")

    def __len__(self) -> int:
        return len(self.index)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.clips.load_clip(*self.index[index])

    def motion(self, index: int) -> tuple[dict | None, tuple[int, int] | None]:
        """The clip's camera motion (photo and art clips) and HR size; None for cuts of real video."""
        meta = self.clips.meta[self.index[index][0]]
        return meta.get("motion"), tuple(meta["hr_hw"])  # type: ignore[return-value]


class CropDataset(Dataset):
    """Training items of a PairStore; item = (pair index, seed), so a batch depends only on its plan.
    With `flow`, each item also carries its crop's forward flow (flow.plan_flow) and whether that flow
    is the clip's true motion (1.0) or a zero stand-in (0.0)."""

    def __init__(self, store: PairStore, crop: int, frames: int, scale: int, flow: bool = False) -> None:
        self.store, self.crop, self.frames, self.scale, self.flow = store, crop, frames, scale, flow

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item
        lr, hr = self.store.pair(index)
        plan = draw_crop_plan(lr.shape[0], lr.shape[1], lr.shape[2], self.crop, self.frames, np.random.default_rng(seed))
        pair = crop_pair(lr, hr, self.scale, self.crop, self.frames, None, plan=plan)
        if not self.flow:
            return pair
        motion, hr_hw = pair_motion(self.store, index)
        known = torch.tensor(float(motion is not None))
        return (*pair, plan_flow(plan, self.scale, hr_hw or hr.shape[1:3], motion), known)


def batch_plan(seed: int, step: int, n_clips: int, batch: int) -> list[tuple[int, int]]:
    """Which clips (and crop seeds) make step `step`'s batch: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, n_clips, size=batch)
    seeds = rng.integers(0, 2**62, size=batch)
    return [(int(i), int(s)) for i, s in zip(idx, seeds)]


class _StepSampler:
    def __init__(self, seed: int, start: int, stop: int, n_clips: int, batch: int) -> None:
        self.seed, self.start, self.stop, self.n, self.batch = seed, start, stop, n_clips, batch

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield batch_plan(self.seed, step, self.n, self.batch)

    def __len__(self) -> int:
        return self.stop - self.start


def lr_at(step: int, o: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to min_lr."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    p = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * p))


STATE = "state.safetensors"
STATIC_NOISE = 1.0  # code values of noise per frame in the static clips of the `static` loss


def save_state(run_dir: Path, model: VSRDiT, ema: VSRDiT, opt: torch.optim.Optimizer, step: int, o: TrainOptions) -> None:
    """Everything needed to resume, in one safetensors file written atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().float().cpu().contiguous()
    for k, v in ema.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().float().cpu().contiguous()
    names = [n for n, _ in model.named_parameters()]
    for name, p in zip(names, opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"opt.{name}.{key}"] = st[key].detach().float().cpu().contiguous()
    meta = {"step": str(step), "options": o.to_json(), "config": json.dumps(model.config.to_dict())}
    tmp = run_dir / f".{STATE}.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, run_dir / STATE)


def load_state(run_dir: Path, model: VSRDiT, ema: VSRDiT, opt: torch.optim.Optimizer) -> int:
    path = run_dir / STATE
    if not path.exists():
        return 0
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    dev = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    step = int(meta["step"])
    for name, p in zip([n for n, _ in model.named_parameters()], opt.param_groups[0]["params"]):
        if f"opt.{name}.exp_avg" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[f"opt.{name}.exp_avg"].to(dev),
                "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].to(dev),
            }
    return step


def init_weights(model: VSRDiT, path: Path) -> None:
    """Copy a float checkpoint's weights into `model` (same config required), for fine-tuning."""
    from vsrq.models.loader import read_checkpoint

    tensors, meta = read_checkpoint(path)
    if meta.get("vsrq.quant"):
        raise VsrqError(f"{path}: a quantized checkpoint; --init needs a float one")
    try:
        config = DiTConfig.from_dict(json.loads(meta.get("vsrq.config", "{}")))
    except ValueError as exc:
        raise VsrqError(f"{path}: unreadable model config ({exc})") from exc
    if config != model.config:
        raise VsrqError(f"{path}: its model config differs from the run's (--config)")
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise VsrqError(f"{path}: its tensors do not fit the model ({str(exc).splitlines()[0]})") from exc


def train(store: PairStore, o: TrainOptions, log=print) -> dict:
    """Train until `o.steps` or `o.minutes` run out, whichever first; returns a summary."""
    started = time.perf_counter()
    o.run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if o.device == "auto" and torch.cuda.is_available() else ("cpu" if o.device == "auto" else o.device))
    torch.manual_seed(o.seed)
    config = DiTConfig.from_dict(o.model)
    model = VSRDiT(config).to(device)
    ema = VSRDiT(config).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    if o.qat:  # same parameters and keys, quantized forward: state, EMA and export stay as they are
        from vsrq.quant.qat import prepare_qat
        from vsrq.quant.recipe import load_recipe

        recipe = load_recipe(o.qat)
        prepare_qat(model, recipe)
        prepare_qat(ema, recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = load_state(o.run_dir, model, ema, opt)
    if step == 0 and o.init:
        init_weights(model, Path(o.init))
        ema.load_state_dict(model.state_dict())
    start_step = step
    weights = LossWeights(**o.loss)
    loader = DataLoader(
        CropDataset(store, o.crop, o.frames, config.scale, flow=bool(weights.warp)),
        batch_sampler=_StepSampler(o.seed, step, o.steps, len(store), o.batch),
        num_workers=o.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    logf = open(o.run_dir / "log.jsonl", "a")
    last_save = time.perf_counter()
    running: dict[str, torch.Tensor] = {}
    counted = 0
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    model.train()
    try:
        for lr_clip, hr_clip, *rest in loader:
            lr_clip = lr_clip.to(device, non_blocking=True)
            hr_clip = hr_clip.to(device, non_blocking=True)
            flow, known = ((rest[0].to(device, non_blocking=True), rest[1].to(device, non_blocking=True))
                           if rest else (None, None))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, o)
            static_pred = None
            with amp:
                pred = model(lr_clip)
                if weights.static:  # half the batch again, as a static scene through fresh noise
                    gen = torch.Generator(device=device).manual_seed(o.seed * 1_000_003 + step)
                    static_pred = model(static_clip(lr_clip[: max(1, len(lr_clip) // 2)], STATIC_NOISE, gen))
            loss, parts = vsr_loss(pred.float(), hr_clip, weights, static_pred, flow, known)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                decay = min(o.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, model_params, 1 - decay)
            step += 1
            for k, v in {"loss": loss.detach(), **parts}.items():
                running[k] = running[k] + v if k in running else v.clone()
            counted += 1
            if step % o.log_every == 0:
                rec = {"step": step, "lr": lr_at(step, o), "elapsed_s": round(time.perf_counter() - started, 1),
                       **{k: float(v) / counted for k, v in running.items()}}
                running, counted = {}, 0
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            now = time.perf_counter()
            if now - last_save > o.save_every_s:
                save_state(o.run_dir, model, ema, opt, step, o)
                last_save = now
            if now - started > o.minutes * 60:
                break
    finally:
        logf.close()
    save_state(o.run_dir, model, ema, opt, step, o)
    return {"start_step": start_step, "step": step, "done": step >= o.steps, "seconds": time.perf_counter() - started}


def export_weights(run_dir: Path, out: Path, precision: str = "fp16") -> None:
    """Write the EMA weights of a run as a vsrq checkpoint (the shipped model)."""
    with safe_open(str(run_dir / STATE), framework="pt", device="cpu") as fh:
        meta = fh.metadata()
        state = {k[4:]: fh.get_tensor(k) for k in fh.keys() if k.startswith("ema.")}
    model = VSRDiT(DiTConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(state)
    extra = {"vsrq.train_step": meta["step"]}
    qat = json.loads(meta.get("options", "{}")).get("qat", "")
    if qat:  # float weights trained to be quantized with this recipe (`vsrq quantize --method` it)
        extra["vsrq.qat"] = qat
    save_checkpoint(model, out, arch="vsrq-dit", precision=precision, extra_meta=extra)
