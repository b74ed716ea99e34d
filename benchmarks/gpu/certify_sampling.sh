#!/usr/bin/env bash
# Issue 21 on the GPU (device tool), one call of at most 10 minutes:
#  1. the fused residual-stage kernels' own tests (tests/test_fused_blocks.py runs its CUDA cases here);
#  2. benchmarks/certify_sampling.py, against `fixed` in one process, at n = 100,000 and sigma = 0.25, on
#       a LeNet (the CPU benchmark's network, width 32, fp32): the issue's 200 Fashion-MNIST test images, every mode;
#       a ResNet-110 (the issue's GPU shape), bf16 through the fused kernels: certify_sampling_resnet110.sh;
#     each trained here briefly at sigma = 0.25 (the sample counts need a trained network, not a good one).
# Results (JSON, logs, times) land in $OUT. IMAGES, R110_IMAGES, N, EPOCHS override the sizes.
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/gpu-sampling}; DATA=${DATA:-.device-data/fashion-mnist}
IMAGES=${IMAGES:-200}; R110_IMAGES=${R110_IMAGES:-50}; N=${N:-100000}; EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
source "$(dirname "$0")/timed.sh"
common=(data.root="$DATA" print_config=false paths.root_dir="$WORK" logger=csv noise.sigma=0.25 trainer=gpu)
timed fused_tests python3 -m pytest -q -p no:cacheprovider tests/test_fused_blocks.py
timed train_lenet python3 -m vrs.apps.train model=lenet trainer.max_epochs="$EPOCHS" "${common[@]}" \
  hydra.run.dir="$WORK/train_lenet"
timed sampling_lenet python3 benchmarks/certify_sampling.py --ckpt "$WORK/train_lenet/checkpoints/last.ckpt" \
  --data-root "$DATA" --images "$IMAGES" --n "$N" --n0 100 --batch-size 4096 --device cuda \
  --out "$OUT/certify_sampling_lenet_n$N.json"
R110_IMAGES="$R110_IMAGES" N="$N" OUT="$OUT" WORK="$WORK" DATA="$DATA" \
  bash "$(dirname "$0")/certify_sampling_resnet110.sh"  # appends to times.txt
cat "$OUT/times.txt"
