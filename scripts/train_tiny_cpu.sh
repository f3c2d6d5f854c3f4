#!/usr/bin/env bash
# CPU training of vsrq-tiny in 30-minute resumable slices (how the interim shipped model was made,
# when no GPU was lent). Run from anywhere; DATA is the packed set (python -m vsrq.train.data build).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/train2}
mkdir -p runs
for i in $(seq 1 8); do
  nice -n 10 python -m vsrq train --data "$DATA" --run runs/tiny --steps 3000 --minutes 30 \
    --batch 8 --crop 32 --frames 8 --lr 1e-3 --workers 1 --export runs/tiny/vsrq-tiny-fp16.safetensors >> runs/tiny.log 2>&1
  grep -q '"done": true' runs/tiny.log && break
done
