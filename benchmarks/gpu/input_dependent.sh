#!/usr/bin/env bash
# GPU experiment (device tool) for issue 18: benchmarks/input_dependent.py --size gpu in device calls of at most 10
# minutes. Each call continues the run in $WORK (a fixed path: the run's configs name it), stops before the budget runs
# out, and packs $WORK (no per-epoch checkpoints) into $OUT/input_dependent.tgz. On a fresh machine, carry the last
# call's input_dependent.tgz into the repository root: it is unpacked first.
#   OUT=$OUT bash benchmarks/gpu/input_dependent.sh        # repeat until it prints "input_dependent: complete"
# SIZE (gpu), BUDGET (seconds, 520), DATA (.device-data/fashion-mnist), ARGS (more input_dependent.py options).
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/input_dependent}; DATA=${DATA:-.device-data/fashion-mnist}
SIZE=${SIZE:-gpu}; BUDGET=${BUDGET:-520}
mkdir -p "$OUT"
if [ ! -d "$WORK" ] && [ -f input_dependent.tgz ]; then
  mkdir -p "$(dirname "$WORK")" && tar xzf input_dependent.tgz -C "$(dirname "$WORK")"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} python3 benchmarks/input_dependent.py --size "$SIZE" --out "$WORK" \
  --data-root "$DATA" --time-budget "$BUDGET" ${ARGS:-}
rc=$?
tar czf "$OUT/input_dependent.tgz" -C "$(dirname "$WORK")" --exclude='epoch_*.ckpt' --exclude=wandb "$(basename "$WORK")"
cp "$WORK/experiment.json" "$OUT/" 2>/dev/null || true
[ -f "$WORK/report/report.md" ] && cp "$WORK/report/report.md" "$OUT/"
ls -la "$OUT"
exit $rc
