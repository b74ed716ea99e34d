#!/usr/bin/env bash
# Issue 21's ResNet-110 shape alone (one device call, ~3 minutes): a ResNet-110 trained briefly at sigma = 0.25
# (R110_EPOCHS on 20,000 Fashion-MNIST images), its test accuracy, a check that the fused bf16 path classifies like
# the plain fp32 one (20 images, n = 10,000, mode fixed), then certify_sampling.py on R110_IMAGES images at
# n = 100,000: fixed, radius_target and sound, each mode warmed up untimed on one image first.
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/gpu-sampling}; DATA=${DATA:-.device-data/fashion-mnist}
R110_IMAGES=${R110_IMAGES:-50}; R110_EPOCHS=${R110_EPOCHS:-3}; N=${N:-100000}
mkdir -p "$OUT" "$WORK"
source "$(dirname "$0")/timed.sh"
ckpt="$WORK/train_resnet110/checkpoints/last.ckpt"
timed train_resnet110 python3 -m vrs.apps.train model=resnet110 trainer.max_epochs="$R110_EPOCHS" \
  data.train_subset=20000 data.root="$DATA" print_config=false paths.root_dir="$WORK" logger=csv noise.sigma=0.25 \
  trainer=gpu hydra.run.dir="$WORK/train_resnet110"
grep -h "test/acc" "$WORK"/train_resnet110/csv/metrics.csv | head -1; tail -n 1 "$WORK"/train_resnet110/csv/metrics.csv
certify=(python3 benchmarks/certify_sampling.py --ckpt "$ckpt" --data-root "$DATA" --skip 200 --n0 100 \
  --batch-size 2048 --device cuda)
timed check_fp32 "${certify[@]}" --images 20 --n 10000 --modes fixed --out "$OUT/check_fp32.json"
timed check_bf16_fused "${certify[@]}" --images 20 --n 10000 --precision bf16 --fused-blocks --modes fixed \
  --out "$OUT/check_bf16_fused.json"
timed sampling_resnet110 "${certify[@]}" --images "$R110_IMAGES" --n "$N" --precision bf16 --fused-blocks \
  --modes fixed,radius_target,sound --out "$OUT/certify_sampling_resnet110_n$N.json"
grep -h '^fixed\|^check\|clean_accuracy' "$OUT"/check_*.log | cut -c1-300
grep -h '^fixed\|^radius\|^sound' "$OUT/sampling_resnet110.log" | cut -c1-400
