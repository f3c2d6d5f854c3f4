"""Shared setup for the kernel tests: make the in-tree package importable and seed RNGs.

Nothing here touches TRITON_INTERPRET: the interpreter-mode checks run in a child
process (see test_triton_interp.py), so the flag cannot leak into other test folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
