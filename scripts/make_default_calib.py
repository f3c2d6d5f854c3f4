"""Build the built-in calibration set shipped in the package (vsrq/quant/calib_default.safetensors).

Eight LR clips (8 frames, 48x48) cut from the training set's degraded clips (never from the
held-out evaluation clips), so `vsrq quantize` works with no --calib on a fresh machine.
Usage: python scripts/make_default_calib.py /work/data/train
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vsrq.train.data import ClipDataset

root = Path(sys.argv[1])
ds = ClipDataset(root, crop=192, augment=False)  # clips whose LR side is at least 48
rng = np.random.default_rng(0)
picks = rng.choice(len(ds), size=8, replace=False)
clips = []
for i in picks:
    lr, _ = ds.load_clip(int(i), int(rng.integers(ds.num_variants(int(i)))))
    t0 = int(rng.integers(0, lr.shape[0] - 8 + 1))
    y0, x0 = (int(rng.integers(0, d - 48 + 1)) for d in lr.shape[1:3])
    clips.append(lr[t0:t0 + 8, y0:y0 + 48, x0:x0 + 48])
out = Path(__file__).resolve().parents[1] / "vsrq" / "quant" / "calib_default.safetensors"
save_file({"clips": torch.from_numpy(np.stack(clips))}, str(out), metadata={"source": "vsrq training set LR clips", "layout": "N,T,H,W,3 uint8 RGB"})
print(out, out.stat().st_size)
