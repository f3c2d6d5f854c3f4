"""Which device and dtype a model runs in: bf16 on CUDA (where supported), fp32 on the CPU."""

from __future__ import annotations

import torch

from vsrq.errors import VsrqError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(choice: str = "auto") -> torch.device:
    choice = choice.lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VsrqError(f"--device {choice}: no CUDA GPU is visible to torch {torch.__version__} here; use --device cpu")
        return torch.device(choice)
    if choice == "cpu":
        return torch.device("cpu")
    raise VsrqError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {choice!r}")


def pick_dtype(device: torch.device) -> torch.dtype:
    """Half precision where the hardware is built for it; fp32 on CPUs, where bf16 is slow without AMX."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
