#!/usr/bin/env bash
# GPU run (device tool): the default Fashion-MNIST classifier at sigma=0.25 (issue 2's accuracy check)
# and the multi-sigma base classifier that VRS builds on. Runs in $WORK; logs and the last checkpoints are
# packed into $OUT/train_fmnist.tgz (the device tool brings back at most 8 files).
set -euo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-work}
DATA=${DATA:-.device-data/fashion-mnist}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)" >> "$WORK/device.txt"
run() {  # name, overrides...
  local name=$1; shift
  local t0=$(date +%s)
  python3 -m vrs.apps.train trainer=gpu data.root="$DATA" paths.root_dir="$WORK" print_config=false \
    hydra.run.dir="$WORK/$name" callbacks.progress_bar=null "$@" > "$WORK/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - t0 )) s" >> "$WORK/times.txt"
}
run fixed_0.25 noise=fixed noise.sigma=0.25
run multi experiment=multi_fmnist
tail -n 12 "$WORK"/*.log
cat "$WORK/times.txt"
rm -f "$WORK"/*/checkpoints/epoch_*.ckpt
tar czf "$OUT/train_fmnist.tgz" -C "$WORK" .
