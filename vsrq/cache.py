"""Where vsrq keeps files between runs: $VSRQ_CACHE, else ~/.cache/vsrq (never inside the repository).

Downloaded packages for training data, the record of verified model checksums and the GPU
kernel tuning choices live there; deleting it only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("VSRQ_CACHE", "~/.cache/vsrq")).expanduser()
