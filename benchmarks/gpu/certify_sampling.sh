#!/usr/bin/env bash
# Issue 21 on the GPU (device tool), one call of at most 10 minutes:
#  1. the fused residual-stage kernels' own tests (tests/test_fused_blocks.py runs its CUDA cases here);
#  2. benchmarks/certify_sampling.py, every mode against `fixed` in one process, at the issue's full setting
#     (200 Fashion-MNIST test images, n = 100,000, sigma = 0.25) on
#       a LeNet (the CPU benchmark's network, width 32) and
#       a ResNet-110 (the GPU shape) through the fused kernels (--fused-blocks),
#     each trained here for a few epochs at sigma = 0.25 (the sample counts need a trained network, not a good one).
# Results (JSON, logs, times) land in $OUT. IMAGES, N, EPOCHS override the sizes.
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/gpu-sampling}; DATA=${DATA:-.device-data/fashion-mnist}
IMAGES=${IMAGES:-200}; N=${N:-100000}; EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
timed() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed"; tail -n 30 "$OUT/$name.log"; }
  echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
}
common=(data.root="$DATA" print_config=false paths.root_dir="$WORK" logger=csv noise.sigma=0.25 trainer=gpu)
timed fused_tests python3 -m pytest -q -p no:cacheprovider tests/test_fused_blocks.py
for model in lenet resnet110; do
  timed "train_$model" python3 -m vrs.apps.train model=$model trainer.max_epochs="$EPOCHS" "${common[@]}" \
    hydra.run.dir="$WORK/train_$model"
  fused=(); [ $model = resnet110 ] && fused=(--fused-blocks)
  timed "sampling_$model" python3 benchmarks/certify_sampling.py --ckpt "$WORK/train_$model/checkpoints/last.ckpt" \
    --data-root "$DATA" --images "$IMAGES" --n "$N" --n0 100 --batch-size 4096 --device cuda "${fused[@]}" \
    --out "$OUT/certify_sampling_${model}_n$N.json"
done
cat "$OUT/times.txt"
