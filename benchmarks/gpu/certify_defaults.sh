#!/usr/bin/env bash
# vrs-certify with its default speed settings on CUDA (certify.compile=auto = max-autotune, batch 2048, bf16,
# channels_last), Cohen and VRS (C1), on the Fashion-MNIST checkpoints of docs/results.md; the Cohen TSV is
# compared with the uncompiled run of docs/results.md (same seed and images). Packed into $OUT/defaults.tgz.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-defaults}
DATA=${DATA:-.device-data/fashion-mnist}
RUN=${RUN:-gpu-artifacts/train/vrs}
IMAGES=${IMAGES:-100}
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/defaults.tgz" -C "$WORK" .' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
common=(data.root="$DATA" certify.skip=20 certify.max="$IMAGES" certify.progress=false logger=none print_config=false
        paths.root_dir="$WORK")
timed() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "$name failed"; tail -n 30 "$WORK/$name.log"; }
  echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"
  tail -n 3 "$WORK/$name.log"
}
timed cohen python3 -m vrs.apps.certify ckpt_path="$RUN/base/checkpoints/last.ckpt" certify=cohen certify.sigma=0.25 \
  "${common[@]}" hydra.run.dir="$WORK/cohen"
timed vrs python3 -m vrs.apps.certify ckpt_path="$RUN/checkpoints/last.ckpt" certify=vrs_c1 certify.lam=0.5 \
  "${common[@]}" hydra.run.dir="$WORK/vrs"
if [ -n "${BASELINE:-}" ] && [ -f "$BASELINE/certify.tsv" ]; then
  python3 benchmarks/compare_certify.py "$WORK/cohen" "$BASELINE" --out "$WORK/diff_compiled_vs_eager.json"
fi
