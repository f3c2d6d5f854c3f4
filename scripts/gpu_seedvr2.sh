#!/usr/bin/env bash
# SeedVR2 on the GPU machine (H100), random weights of the real shapes (the Hub files cannot be
# fetched there): STEP=bench times VAE encode / DiT / VAE decode, bf16 vs W4A4, at 720p and 1080p
# output; STEP=upscale writes random official-layout files (fp16 safetensors DiT, VAE, text) and runs
# `vsrq upscale --max-vram` on data/gpu/bbb270.mp4 (see gpu_smoke.sh for how it is made) to 1080p,
# with and without the memory plan. Run from the repo root with .whl/ holding an `av` wheel.
set -uo pipefail
OUT=${OUT:-runs/gpu-seedvr2}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps .whl/av-*.whl 2>&1 | grep -v WARNING | tail -1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
STEP=${STEP:-bench}
if [ "$STEP" = bench ]; then
  python3 -m vsrq bench --model "${MODEL:-seedvr2-3b}" --random-weights --sizes "${SIZES:-720p,1080p}" --frames "${FRAMES:-21}" \
    --precisions "${PRECISIONS:-fp,w4a4}" --repeat "${REPEAT:-3}" --vae-tile "${VAE_TILE:-0}" ${COMPILE:+--compile} --json > "$OUT/bench.json"
  python3 - "$OUT/bench.json" <<'PY'
import json, sys
from vsrq.bench_seedvr2 import format_seedvr2_report
print("\n".join(format_seedvr2_report(json.load(open(sys.argv[1])))))
PY
fi
if [ "$STEP" = upscale ]; then
  python3 - <<'PY'
import json, torch
from safetensors.torch import save_file
from vsrq.models.seedvr2.dit import SeedVR2DiT, SeedVR2DiTConfig
from vsrq.models.seedvr2.vae import SeedVR2VAE, SeedVR2VAEConfig
torch.manual_seed(0)
import os; os.makedirs("/tmp/sv", exist_ok=True)
with torch.device("cuda"):
    dit = SeedVR2DiT(SeedVR2DiTConfig.preset("3b")).half()
    vae = SeedVR2VAE(SeedVR2VAEConfig.preset("seedvr2")).half()
save_file({k: v.cpu().contiguous() for k, v in dit.state_dict().items()}, "/tmp/sv/seedvr2_ema_3b_fp16.safetensors")
save_file({k: v.cpu().contiguous() for k, v in vae.state_dict().items()}, "/tmp/sv/ema_vae_fp16.safetensors")
torch.save(torch.randn(58, 5120, dtype=torch.bfloat16), "/tmp/sv/pos_emb.pt")
print("files written")
PY
  for args in "--max-vram ${VRAM:-12}" "" ; do
    /usr/bin/time -f "%e s wall, %M KiB host peak" python3 -m vsrq upscale data/gpu/bbb270.mp4 "$OUT/up.mp4" -y --device cuda \
      --model /tmp/sv/seedvr2_ema_3b_fp16.safetensors --scale 4 $args 2>&1 | tail -3
  done
fi
if [ "$STEP" = offload ]; then  # DiT step at 1080p with the blocks resident vs streamed from pinned host memory
  python3 - <<'PY'
import torch
from vsrq.bench import median_ms
from vsrq.bench_seedvr2 import random_restorer
from vsrq.pipeline.seedvr2 import SeedVR2Settings
dev = torch.device("cuda")
r = random_restorer("3b", dev, torch.bfloat16, SeedVR2Settings(scale=2.0))
lat = torch.randn(1, 6, 136, 240, 16, device=dev, dtype=torch.bfloat16)
for offload in (False, True):
    r.settings.offload_blocks = offload
    r.place(dev, torch.bfloat16)
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        ref = r.denoise(lat) if not offload else ref
        out = r.denoise(lat)
        ms = median_ms(lambda: r.denoise(lat), dev, warmup=1, repeat=3)
    print(f"offload={offload}: DiT {ms:.0f} ms, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
          f"resident {torch.cuda.memory_allocated() / 2**30:.2f} GiB, max |diff| vs resident {float((out - ref).abs().max()):.3g}")
PY
fi
