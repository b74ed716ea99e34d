#!/usr/bin/env bash
# What varies between certification runs on the GPU (docs/reliability.md): the same checkpoint, images and
# seed certified twice in bf16, once with another batch size, and twice in true fp32; then every pair of
# TSVs compared with benchmarks/compare_certify.py. Results packed into $OUT/repro.tgz.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-repro}
DATA=${DATA:-.device-data/fashion-mnist}
CKPT=${CKPT:-gpu-artifacts/train/vrs/base/checkpoints/last.ckpt}
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/repro.tgz" -C "$WORK" .' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
common=(ckpt_path="$CKPT" data.root="$DATA" certify.sigma=0.25 certify.skip=20 certify.max=${IMAGES:-200}
        certify.n0=100 certify.n=${N:-10000} certify.alpha=0.001 certify.progress=false seed=0 logger=none
        print_config=false paths.root_dir="$WORK")
run() {  # name, overrides...
  local name=$1; shift
  python3 -m vrs.apps.certify "${common[@]}" "$@" hydra.run.dir="$WORK/$name" > "$WORK/$name.log" 2>&1 \
    || { echo "$name failed"; tail -n 20 "$WORK/$name.log"; }
}
run bf16_a certify.precision=bf16
run bf16_b certify.precision=bf16
run bf16_batch4096 certify.precision=bf16 certify.batch_size=4096
run fp32_a certify.precision=fp32
run fp32_b certify.precision=fp32
for pair in "bf16_a bf16_b" "bf16_a bf16_batch4096" "fp32_a fp32_b" "fp32_a bf16_a"; do
  set -- $pair
  python3 benchmarks/compare_certify.py "$WORK/$1" "$WORK/$2" --out "$WORK/diff_${1}_vs_${2}.json"
done
