#!/usr/bin/env bash
# GPU training of vsrq-tiny in resumable slices (H100; run from the repo root with data/train2
# carried, and runs/gpu carried when resuming). Each slice exports the EMA weights to
# $OUT/vsrq-tiny-fp16-<step>.safetensors so every intermediate model can be evaluated on the CPU.
# SLICES="4.2 3.2" runs two slices of 4.2 and 3.2 minutes in one call.
set -euo pipefail
OUT=${OUT:-runs/gpu-out}
LOSS=${LOSS:-'{"temporal": 1.0}'}
mkdir -p "$OUT"
nvidia-smi -L 2>/dev/null || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for minutes in ${SLICES:-8.3}; do
  PYTHONUNBUFFERED=1 python3 -m vsrq train --data data/train2 --run runs/gpu --steps "${STEPS:-9000}" \
    --minutes "$minutes" --batch 64 --crop 32 --frames 8 --lr "${LR:-4e-4}" --workers 12 \
    --loss "$LOSS" --export "$OUT/vsrq-tiny-fp16.safetensors" 2>&1 | tee -a "$OUT/train.log"
  step=$(grep '^{"start_step"' "$OUT/train.log" | tail -1 | python3 -c "import json, sys; print(json.load(sys.stdin)['step'])")
  mv "$OUT/vsrq-tiny-fp16.safetensors" "$OUT/vsrq-tiny-fp16-$step.safetensors"
done
cp runs/gpu/log.jsonl runs/gpu/state.safetensors "$OUT/"
