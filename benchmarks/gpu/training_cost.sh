#!/usr/bin/env bash
# Issue 19: training cost per epoch of each training method against gaussian at the same batch (256 images a step),
# LeNet on Fashion-MNIST (55,000 training images), the methods at their MNIST settings (benchmarks/training_methods.py:
# smoothadv m=4, 10 PGD steps; macer k=16; consistency m=2), sigma 0.25, trainer=gpu (bf16-mixed; gaussian and
# consistency with the captured CUDA-graph step, macer too as its radius term is not deferred here, smoothadv eager).
# 3 epochs each; the first includes compilation and graph capture, the JSON keeps every epoch's seconds.
#   run: bash benchmarks/gpu/training_cost.sh   (device tool; writes $OUT/training_cost.json)
set -euo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/training-cost}
DATA=${DATA:-.device-data/fashion-mnist}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/src:$PWD/benchmarks/gpu:${PYTHONPATH:-}"
declare -A SETTINGS=(
  [gaussian]="training=gaussian"
  [smoothadv]="training=smoothadv training.m=4 training.steps=10 training.eps=1.0 training.warmup=1"
  [macer]="training=macer training.k=16 training.lam=16 training.gamma=8 training.beta=16"
  [consistency]="training=consistency training.m=2 training.lam=20 training.eta=0.5"
)
echo "{" > "$OUT/training_cost.json"
first=1
for m in gaussian consistency macer smoothadv; do
  export EPOCH_TIMES="$WORK/$m.json"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  python3 -m vrs.apps.train trainer=gpu data.root="$DATA" data.batch_size=256 optimizer.lr=0.01 ${SETTINGS[$m]} \
    trainer.max_epochs=3 test=false logger=csv print_config=false '~callbacks.progress_bar' \
    +callbacks.epoch_timer._target_=epoch_timer.EpochTimer hydra.run.dir="$WORK/$m" > "$WORK/$m.log" 2>&1
  t1=$(date +%s.%N)
  [ $first = 1 ] || echo "," >> "$OUT/training_cost.json"
  first=0
  printf '"%s": {"wall_s": %s, "epochs": %s}' "$m" "$(echo "$t1 - $t0" | bc)" "$(cat "$EPOCH_TIMES")" >> "$OUT/training_cost.json"
  grep -h "cuda_graph" "$WORK/$m.log" | head -2 || true
done
echo "}" >> "$OUT/training_cost.json"
nvidia-smi --query-gpu=name --format=csv,noheader >> "$OUT/training_cost.json.device" || true
python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/training_cost.json.device"
cat "$OUT/training_cost.json"
