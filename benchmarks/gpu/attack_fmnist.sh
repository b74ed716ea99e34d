#!/usr/bin/env bash
# GPU experiment (device tool) for issue 5: empirical robustness of VRS (lambda grid) against fixed-sigma smoothing
# with the same base classifier (the VRS checkpoint of vrs_fmnist.sh; defense.sigma=s uses its base classifier).
# 500 test images (every 20th); EOT-PGD L2 and Linf; sigma_down against the selector; PREDICT n=1000 (abstain =
# wrong). Results packed into $OUT/attack.tgz whatever happens.
set -uo pipefail
OUT=${OUT:-gpu-out}; WORK=${WORK:-/tmp/gpu-attack}; DATA=${DATA:-.device-data/fashion-mnist}
RUN=${RUN:-gpu-artifacts/train/vrs}
STEPS=${STEPS:-10}; EOT=${EOT:-4}
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/attack.tgz" -C "$WORK" --exclude="*.ckpt" . ; ls -la "$OUT"' EXIT
common=(ckpt_path="$RUN/checkpoints/last.ckpt" data.root="$DATA" paths.root_dir="$WORK" print_config=false
        attack.skip=20 attack.max=500 attack.batch_size=250 attack.steps="$STEPS" attack.eot="$EOT"
        defense.precision=bf16 predict.n=1000)
timed() { local name=$1; shift; local t0=$(date +%s)
  "$@" > "$WORK/$name.log" 2>&1; echo "$name: rc=$? $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"; }
l2=(attack=eot_pgd attack.norm=l2 'attack.eps=[0.25,0.5,1.0]')
linf=(attack=eot_pgd attack.norm=linf 'attack.eps=[0.00784313725490196,0.01568627450980392,0.03137254901960784]')
timed l2_vrs python3 -m vrs.apps.attack -m "${common[@]}" "${l2[@]}" defense.lam=0,0.25,0.5,0.75,1 hydra.sweep.dir="$WORK/l2_vrs"
timed l2_fixed python3 -m vrs.apps.attack -m "${common[@]}" "${l2[@]}" defense.sigma=0.12,0.25,0.5,1.0 hydra.sweep.dir="$WORK/l2_fixed"
timed linf_vrs python3 -m vrs.apps.attack -m "${common[@]}" "${linf[@]}" defense.lam=0,0.25,0.5,0.75,1 hydra.sweep.dir="$WORK/linf_vrs"
timed linf_fixed python3 -m vrs.apps.attack -m "${common[@]}" "${linf[@]}" defense.sigma=0.12,0.25,0.5,1.0 hydra.sweep.dir="$WORK/linf_fixed"
timed sigma_down python3 -m vrs.apps.attack -m "${common[@]}" attack=sigma_down 'attack.eps=[0.5,1.0]' defense.lam=0.25,0.5,1 hydra.sweep.dir="$WORK/sigma_down"
