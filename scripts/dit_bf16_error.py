"""Relative error of SeedVR2's DiT in bf16 against fp32, on the golden tiny configs (CPU, seconds).

Why: changes to the DiT's elementwise spelling (fused norms, addcmul, RoPE) move its bf16 rounding; the golden
tests pin fp32 only. Compare two commits by running this in a worktree of each:
    python scripts/dit_bf16_error.py [REPO_ROOT]   (default: this checkout)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    sys.path[:0] = [str(root), str(root / "tests" / "models" / "seedvr2")]
    golden = importlib.import_module("test_dit")
    for name in ("3b-tiny", "7b-tiny"):
        model, x, txt, t, _ = golden.load_golden(name)
        with torch.no_grad():
            ref = model(x, txt, t)
            got = model.to(torch.bfloat16)(x.bfloat16(), txt.bfloat16(), t).float()
        print(f"{name}: bf16 vs fp32 relative error {float((got - ref).norm() / ref.norm()):.3e}")


if __name__ == "__main__":
    main()
