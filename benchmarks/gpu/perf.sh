#!/usr/bin/env bash
# GPU performance run (device tool): training and certification throughput, ours against the reference
# loops, in one call. Each benchmark gets a time limit; results are packed into $OUT/perf.tgz whatever happens.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-perf}
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/perf.tgz" -C "$WORK" . ; ls -la "$OUT"' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
bench() {  # name, limit_s, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1; echo "$name: rc=$? $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"
  tail -n 25 "$WORK/$name.log"
}
for b in ${BENCHES:-certify train}; do
  case $b in
    train) bench train_throughput "${TRAIN_LIMIT:-270}" python3 benchmarks/train_throughput.py --device cuda \
             --compile reduce-overhead --out "$WORK/train_throughput.json" ;;
    certify) bench certify_throughput "${CERT_LIMIT:-270}" python3 benchmarks/certify_throughput.py --device cuda \
             --images 20 --out "$WORK/certify_throughput.json" ;;
    forward) bench forward_sweep "${FORWARD_LIMIT:-270}" python3 benchmarks/forward_sweep.py --device cuda \
             ${FORWARD_CONFIGS:+--configs "$FORWARD_CONFIGS"} --out "$WORK/forward_sweep.json" ;;
    profile) bench train_profile "${PROFILE_LIMIT:-300}" python3 benchmarks/train_profile.py --device cuda \
             --out-dir "$WORK/train_profile" ;;
    attack) bench attack_throughput "${ATTACK_LIMIT:-120}" python3 benchmarks/attack_throughput.py --device cuda \
             --out "$WORK/attack_throughput.json" ;;
  esac
done
