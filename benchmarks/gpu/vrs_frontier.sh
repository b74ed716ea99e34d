#!/usr/bin/env bash
# GPU experiment (device tool) for issue 17 section 3: benchmarks/vrs_frontier.py --size gpu in device calls of at
# most 10 minutes. Each call continues the run in $WORK (a fixed path: the run's configs name it), stops cleanly
# before the budget runs out, and packs $WORK (no per-epoch checkpoints, no W&B files) into $OUT/frontier.tgz.
# On a fresh machine, carry the last call's frontier.tgz into the repository root: it is unpacked first.
#   OUT=$OUT bash benchmarks/gpu/vrs_frontier.sh            # repeat until it prints "vrs_frontier: complete"
# SIZE (gpu), BUDGET (seconds, 520), DATA (.device-data/fashion-mnist), ARGS (more vrs_frontier.py options).
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/frontier}; DATA=${DATA:-.device-data/fashion-mnist}
SIZE=${SIZE:-gpu}; BUDGET=${BUDGET:-520}
mkdir -p "$OUT"
if [ ! -d "$WORK" ] && [ -f frontier.tgz ]; then
  mkdir -p "$(dirname "$WORK")" && tar xzf frontier.tgz -C "$(dirname "$WORK")"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
python3 benchmarks/vrs_frontier.py --size "$SIZE" --out "$WORK" --data-root "$DATA" --time-budget "$BUDGET" ${ARGS:-}
rc=$?
tar czf "$OUT/frontier.tgz" -C "$(dirname "$WORK")" --exclude='epoch_*.ckpt' --exclude=wandb "$(basename "$WORK")"
cp "$WORK/experiment.json" "$OUT/" 2>/dev/null || true
[ -f "$WORK/report/report.md" ] && cp "$WORK/report/report.md" "$OUT/"
ls -la "$OUT"
exit $rc
