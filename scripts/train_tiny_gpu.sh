#!/usr/bin/env bash
# GPU training of a vsrq DiT in resumable slices (H100; run from the repo root with the training
# set carried, and runs/<name> carried when resuming). Each slice exports the EMA weights to
# $OUT/<name>-<step>.safetensors so every intermediate model can be evaluated on the CPU.
#   NAME=tiny DATA=data/train3 CONFIG='{"dim": 96, ...}' SLICES="4.2 3.2" STEPS=8000 bash scripts/train_tiny_gpu.sh
# Other settings: LR, LOSS (JSON), BATCH, WORKERS, DEGRADATIONS (all|light), INIT (float weights to start from),
# QAT (a recipe to train through, vsrq.quant.qat).
# Several runs may share the GPU at once (small models leave it idle): start each with its own NAME
# and WORKERS, in the background, and `wait`.
set -euo pipefail
NAME=${NAME:-vsrq-tiny-fp16}
OUT=${OUT:-runs/gpu-out}
DATA=${DATA:-data/train2}
LOSS=${LOSS:-'{"temporal": 1.0}'}
CONFIG=${CONFIG:-'{"dim": 96, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "patch": [1, 2, 2], "window": [4, 8, 8], "scale": 4}'}
mkdir -p "$OUT"
log="$OUT/$NAME.log"
for minutes in ${SLICES:-8.3}; do
  PYTHONUNBUFFERED=1 python3 -m vsrq train --data "$DATA" --run "runs/$NAME" --config "$CONFIG" --steps "${STEPS:-9000}" \
    --minutes "$minutes" --batch "${BATCH:-64}" --crop 32 --frames 8 --lr "${LR:-4e-4}" --workers "${WORKERS:-12}" \
    ${INIT:+--init "$INIT"} ${QAT:+--qat "$QAT"} --degradations "${DEGRADATIONS:-all}" --loss "$LOSS" --export "$OUT/$NAME.safetensors" >>"$log" 2>&1
  step=$(grep '^{"start_step"' "$log" | tail -1 | python3 -c "import json, sys; print(json.load(sys.stdin)['step'])")
  mv "$OUT/$NAME.safetensors" "$OUT/$NAME-$step.safetensors"
done
cp "runs/$NAME/log.jsonl" "$OUT/$NAME.jsonl"
cp "runs/$NAME/state.safetensors" "$OUT/$NAME-state.safetensors"
