#!/usr/bin/env bash
# vrs-certify end to end with and without the fused residual stages (certify.fused_blocks), on a ResNet-20
# trained briefly on Fashion-MNIST on the GPU (28x28: the 16-channel stage has 784 pixels, so the kernel's
# partial last tile is exercised). Same seed and images; the TSVs are compared by compare_certify.py.
# Everything lands in $OUT/fused_certify.tgz.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-fused}
DATA=${DATA:-.device-data/fashion-mnist}
IMAGES=${IMAGES:-100}
N=${N:-10000}
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/fused_certify.tgz" -C "$WORK" --exclude="*.ckpt" .' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
common=(data.root="$DATA" print_config=false paths.root_dir="$WORK")
timed() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "$name failed"; tail -n 30 "$WORK/$name.log"; }
  echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"
}
timed train python3 -m vrs.apps.train model=resnet20 trainer=gpu trainer.max_epochs=3 data.train_subset=20000 logger=csv \
  "${common[@]}" hydra.run.dir="$WORK/train"
for fused in true false; do
  timed "certify_fused_$fused" python3 -m vrs.apps.certify ckpt_path="$WORK/train/checkpoints/last.ckpt" certify=cohen \
    certify.n="$N" certify.skip=10 certify.max="$IMAGES" certify.fused_blocks="$fused" certify.progress=false logger=none \
    "${common[@]}" hydra.run.dir="$WORK/fused_$fused"
done
python3 benchmarks/compare_certify.py "$WORK/fused_true" "$WORK/fused_false" --out "$WORK/compare.json" | tee "$WORK/compare.txt"
grep -h '"fused_blocks"\|"fused_stages"\|"seconds_per_image"\|"acr"' "$WORK"/fused_*/summary.json
