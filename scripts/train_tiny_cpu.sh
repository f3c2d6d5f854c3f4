#!/usr/bin/env bash
# CPU training of vsrq-tiny in 30-minute resumable slices (no GPU was lent this session).
cd /work/main
for i in $(seq 1 8); do
  nice -n 10 /work/venv/bin/python -m vsrq train --data /work/data/train2 --run runs/tiny --steps 3000 --minutes 30 \
    --batch 8 --crop 32 --frames 8 --lr 1e-3 --workers 1 --export runs/tiny/vsrq-tiny-fp16.safetensors >> runs/tiny.log 2>&1
  grep -q '"done": true' runs/tiny.log && break
done
