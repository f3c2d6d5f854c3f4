"""Training data for vsrq: degradations (degrade.py) and clip sources, packing and Dataset (data.py).

The training loop itself lives elsewhere; this package only produces and reads data.
"""

from .degrade import MILD, DegradeParams, decode_clip, degrade, degrade_mild, degrade_random, encode_clip, sample_degrade_params

__all__ = [
    "MILD",
    "DegradeParams",
    "decode_clip",
    "degrade",
    "degrade_mild",
    "degrade_random",
    "encode_clip",
    "sample_degrade_params",
]
