#!/usr/bin/env bash
# Issue 21 on the GPU (device tool), one call of at most 10 minutes:
#  1. the fused residual-stage kernels' own tests (tests/test_fused_blocks.py runs its CUDA cases here);
#  2. benchmarks/certify_sampling.py, against `fixed` in one process, at n = 100,000 and sigma = 0.25, on
#       a LeNet (the CPU benchmark's network, width 32, fp32): the 200 Fashion-MNIST test images, every mode;
#       a ResNet-110 (the GPU shape), bf16 through the fused kernels (--fused-blocks): 50 images, the modes
#       fixed, radius_target and sound (the time a mode takes there, not the counts, is what this shape adds);
#     each trained here briefly at sigma = 0.25 (the sample counts need a trained network, not a good one).
# Results (JSON, logs, times) land in $OUT. IMAGES, R110_IMAGES, N, EPOCHS override the sizes.
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/gpu-sampling}; DATA=${DATA:-.device-data/fashion-mnist}
IMAGES=${IMAGES:-200}; R110_IMAGES=${R110_IMAGES:-50}; N=${N:-100000}; EPOCHS=${EPOCHS:-4}
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
timed train_lenet python3 -m vrs.apps.train model=lenet trainer.max_epochs="$EPOCHS" "${common[@]}" \
  hydra.run.dir="$WORK/train_lenet"
timed sampling_lenet python3 benchmarks/certify_sampling.py --ckpt "$WORK/train_lenet/checkpoints/last.ckpt" \
  --data-root "$DATA" --images "$IMAGES" --n "$N" --n0 100 --batch-size 4096 --device cuda \
  --out "$OUT/certify_sampling_lenet_n$N.json"
timed train_resnet110 python3 -m vrs.apps.train model=resnet110 trainer.max_epochs=1 data.train_subset=20000 \
  "${common[@]}" hydra.run.dir="$WORK/train_resnet110"
timed sampling_resnet110 python3 benchmarks/certify_sampling.py --ckpt "$WORK/train_resnet110/checkpoints/last.ckpt" \
  --data-root "$DATA" --images "$R110_IMAGES" --skip 200 --n "$N" --n0 100 --batch-size 2048 --device cuda \
  --precision bf16 --fused-blocks --modes fixed,radius_target,sound --out "$OUT/certify_sampling_resnet110_n$N.json"
cat "$OUT/times.txt"
