#!/usr/bin/env bash
# GPU experiment (device tool) for issue 4: VRS on Fashion-MNIST against fixed-sigma smoothing with the same
# multi-sigma base classifier. Stages (run one per device call; each packs $WORK into $OUT/<stage>.tgz):
#   train    vrs-train experiment=vrs_fmnist trainer=gpu      (stage 1 base classifier + stage 2 selector)
#   certify  vrs-certify on 500 test images (every 20th), n = 100,000, alpha = 0.001:
#            certify=vrs_c1 with lambda in {0, .25, .5, .75, 1}; certify=cohen with sigma in {.12, .25, .5, 1}
# The certify stage needs the train stage's run directory at $RUN (default gpu-artifacts/train/vrs).
set -euo pipefail
stage=${1:?usage: vrs_fmnist.sh train|certify}
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-work}
DATA=${DATA:-.device-data/fashion-mnist}
RUN=${RUN:-gpu-artifacts/train/vrs}
SELECTOR_EPOCHS=${SELECTOR_EPOCHS:-10}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/device.txt" || true
common=(data.root="$DATA" paths.root_dir="$WORK" print_config=false)
timed() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "$name failed"; tail -n 30 "$WORK/$name.log"; }
  echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"
}
case $stage in
  train)
    timed train python3 -m vrs.apps.train experiment=vrs_fmnist trainer=gpu "${common[@]}" hydra.run.dir="$WORK/vrs" \
      trainer.max_epochs="$SELECTOR_EPOCHS" +trainer.max_time=${SELECTOR_MAX_TIME:-00:00:06:00} callbacks.progress_bar=null
    rm -f "$WORK"/vrs/checkpoints/epoch_*.ckpt "$WORK"/vrs/base/checkpoints/epoch_*.ckpt
    rm -rf "$WORK"/vrs/wandb
    ;;
  certify)
    cert=(certify.skip=20 certify.n0=100 certify.n=100000 certify.alpha=0.001 certify.progress=false)
    timed cert_vrs python3 -m vrs.apps.certify -m ckpt_path="$RUN/checkpoints/last.ckpt" certify=vrs_c1 \
      certify.lam=0,0.25,0.5,0.75,1 "${cert[@]}" "${common[@]}" hydra.sweep.dir="$WORK/cert_vrs"
    timed cert_cohen python3 -m vrs.apps.certify -m ckpt_path="$RUN/base/checkpoints/last.ckpt" certify=cohen \
      certify.sigma=0.12,0.25,0.5,1.0 "${cert[@]}" "${common[@]}" hydra.sweep.dir="$WORK/cert_cohen"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
tar czf "$OUT/$stage.tgz" -C "$WORK" .
ls -la "$OUT"
