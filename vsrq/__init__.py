"""vsrq: video super-resolution with low-bit (W4A4) one-step diffusion transformers."""

__version__ = "0.1.0"
