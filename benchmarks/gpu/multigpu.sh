#!/usr/bin/env bash
# Multi-GPU scaling (issue 8): on a machine with N GPUs, for k = 1, 2 and 4 GPUs (those <= N; WORLDS=...):
#   train    vrs-train trainer=ddp trainer.devices=k, ResNet-110 on CIFAR-shaped synthetic data (3x32x32, 10
#            classes), the same per-GPU batch: the wall time of each training epoch (benchmarks/gpu/epoch_timer.py)
#   certify  vrs-certify certify.world_size=k on a ResNet-110 checkpoint (a short vrs-train run made here):
#            steady-state throughput (from the rows' per-image times, compilation excluded) and the wall time,
#            and whether the rows equal the k = 1 rows (same seed per image)
# Scaling efficiency: throughput_k / (k * throughput_1); epoch: T_1 / (k * T_k).
# Writes $OUT/multigpu.json, $OUT/multigpu.md and everything (logs, TSVs) in $OUT/multigpu.tgz.
#
#   OUT=$OUT bash benchmarks/gpu/multigpu.sh                      # both steps (fits 10 min on 2 H200s)
#   STEPS=certify bash benchmarks/gpu/multigpu.sh                 # one step per device call (4 GPUs)
#   DEVICE=cpu bash benchmarks/gpu/multigpu.sh                    # dry run with CPU processes, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-multigpu}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-train certify}
PY=${PY:-python3}
if [ "$DEVICE" = cuda ]; then
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NGPU:-0}" -ge 1 ] || { echo "multigpu.sh: no GPU found (nvidia-smi -L); DEVICE=cpu for a dry run" >&2; exit 2; }
  WORLDS=${WORLDS:-$(for k in 1 2 4 8; do [ "$k" -le "$NGPU" ] && echo -n "$k "; done)}
  MODEL=${MODEL:-resnet110}; IMAGES=${IMAGES:-100}; N0=${N0:-100}; N=${N:-100000}; CERT_BATCH=${CERT_BATCH:-2048}
  TRAIN_IMAGES=${TRAIN_IMAGES:-50000}; VAL_SIZE=${VAL_SIZE:-1000}; TRAIN_BATCH=${TRAIN_BATCH:-256}; EPOCHS=${EPOCHS:-3}
  TRAINER=(trainer=ddp trainer.precision=bf16-mixed +trainer.benchmark=true)
  CERTIFY=(certify.compile="${CERT_COMPILE:-auto}")
  TRAIN_LIMIT=${TRAIN_LIMIT:-150}; CERT_LIMIT=${CERT_LIMIT:-240}
else
  WORLDS=${WORLDS:-1 2}
  MODEL=${MODEL:-resnet20}; IMAGES=${IMAGES:-4}; N0=${N0:-20}; N=${N:-200}; CERT_BATCH=${CERT_BATCH:-100}
  TRAIN_IMAGES=${TRAIN_IMAGES:-320}; VAL_SIZE=${VAL_SIZE:-64}; TRAIN_BATCH=${TRAIN_BATCH:-32}; EPOCHS=${EPOCHS:-2}
  TRAINER=(trainer=ddp trainer.accelerator=cpu trainer.sync_batchnorm=false)
  CERTIFY=(certify.device=cpu)
  TRAIN_LIMIT=${TRAIN_LIMIT:-300}; CERT_LIMIT=${CERT_LIMIT:-300}
fi
mkdir -p "$OUT" "$WORK"
trap 'tar czf "$OUT/multigpu.tgz" --exclude="*.ckpt" -C "$WORK" . ; ls -la "$OUT"' EXIT
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "$DEVICE"
  nvidia-smi topo -m 2>/dev/null; } > "$WORK/device.txt"
echo "worlds: $WORLDS; model $MODEL; certify $IMAGES images, n0=$N0 n=$N; train $TRAIN_IMAGES images x $EPOCHS epochs"

# CIFAR-shaped synthetic data, the same for training and certification (num_test >= the certified images)
DATA=(data=synthetic data.synthetic.num_train="$TRAIN_IMAGES" data.val_size="$VAL_SIZE" data.synthetic.num_test="$(( IMAGES > 512 ? IMAGES : 512 ))")
QUIET=(print_config=false "~callbacks.progress_bar" "~callbacks.model_summary" +trainer.enable_progress_bar=false
       +trainer.enable_model_summary=false)
timed() {  # name, limit_s, command...: the command under `timeout`, its log in $WORK/<name>.log
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc $(( $(date +%s) - t0 )) s" | tee -a "$WORK/times.txt"
  [ $rc -eq 0 ] || tail -n 20 "$WORK/$name.log"
  return $rc
}

for step in $STEPS; do
  case $step in
    train)
      for k in $WORLDS; do
        rm -rf "$WORK/train_$k"
        EPOCH_TIMES="$WORK/train_$k.epochs.json" PYTHONPATH="benchmarks/gpu${PYTHONPATH:+:$PYTHONPATH}" \
          timed "train_$k" "$TRAIN_LIMIT" $PY -m vrs.apps.train "${DATA[@]}" model="$MODEL" noise=fixed noise.sigma=0.25 \
          data.batch_size="$TRAIN_BATCH" "${TRAINER[@]}" trainer.devices="$k" trainer.max_epochs="$EPOCHS" \
          logger=csv seed=0 "${QUIET[@]}" +callbacks.epoch_timer._target_=epoch_timer.EpochTimer \
          paths.output_dir="$WORK/train_$k" hydra.run.dir="$WORK/train_$k"
      done ;;
    certify)
      CKPT=${CKPT:-$WORK/ckpt/checkpoints/last.ckpt}
      if [ ! -f "$CKPT" ]; then  # a ResNet-110 after a few steps: speed does not depend on the weights
        timed ckpt "$TRAIN_LIMIT" $PY -m vrs.apps.train "${DATA[@]}" model="$MODEL" noise=fixed noise.sigma=0.25 \
          "${TRAINER[@]}" trainer.devices=1 trainer.max_epochs=1 +trainer.limit_train_batches=4 \
          +trainer.limit_val_batches=1 +trainer.limit_test_batches=1 logger=csv seed=0 "${QUIET[@]}" \
          paths.output_dir="$WORK/ckpt" hydra.run.dir="$WORK/ckpt" || exit 1
      fi
      for k in $WORLDS; do
        rm -rf "$WORK/certify_$k"
        timed "certify_$k" "$CERT_LIMIT" $PY -m vrs.apps.certify ckpt_path="$CKPT" "${DATA[@]}" "${CERTIFY[@]}" \
          certify.n0="$N0" certify.n="$N" certify.batch_size="$CERT_BATCH" certify.max="$IMAGES" \
          certify.world_size="$k" certify.out_dir="$WORK/certify_$k" certify.progress=false logger=none \
          print_config=false seed=0 hydra.run.dir="$WORK/certify_$k/hydra"
      done ;;
    *) echo "multigpu.sh: unknown step '$step' (train, certify)" >&2; exit 2 ;;
  esac
done

# ---- the table ---------------------------------------------------------------------------------------------
WORK="$WORK" OUT="$OUT" WORLDS="$WORLDS" $PY - <<'EOF'
import json, os, statistics
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])
worlds = [int(k) for k in os.environ["WORLDS"].split()]
device = (work / "device.txt").read_text().splitlines()[0] if (work / "device.txt").exists() else "?"


def tsv(path):
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def without_time(rows):
    return [tuple(v for c, v in r.items() if c != "time") for r in rows]


results = {"device": device, "certify": {}, "train": {}}
ref_rows = None
for k in worlds:
    d = work / f"certify_{k}"
    if (d / "summary.json").exists() and (d / "certify.tsv").exists():
        summary, rows = json.loads((d / "summary.json").read_text()), tsv(d / "certify.tsv")
        # a fresh run: rank r certified the images at positions r, r + k, ... (vrs.apps.certify); its steady
        # time is the sum of its rows' per-image times, and the slowest rank finishes the run
        busy = [sum(float(r["time"]) for r in rows[rank::k]) for rank in range(k)]
        ref_rows = without_time(rows) if k == 1 else ref_rows
        results["certify"][k] = {
            "images": len(rows), "steady_images_per_s": len(rows) / max(busy), "rank_busy_s": busy,
            "wall_s": summary["wall_seconds_this_run"], "wall_images_per_s": len(rows) / summary["wall_seconds_this_run"],
            "rows_equal_k1": None if ref_rows is None else without_time(rows) == ref_rows, "acr": summary["acr"]}
    e = work / f"train_{k}.epochs.json"
    if e.exists():
        t = json.loads(e.read_text())
        steady = t["epoch_seconds"][1:] or t["epoch_seconds"]  # the first epoch pays for cuDNN autotuning
        metrics = {}
        csvs = list((work / f"train_{k}").rglob("metrics.csv"))
        if csvs:
            import csv
            for row in csv.DictReader(open(csvs[0])):
                metrics.update({c: float(v) for c, v in row.items() if c.startswith("test/") and v})
        results["train"][k] = {"epoch_seconds": t["epoch_seconds"], "steady_epoch_s": statistics.median(steady),
                               "train_batches_per_rank": t["train_batches"], **metrics}
for kind, key, better in (("certify", "steady_images_per_s", "rate"), ("train", "steady_epoch_s", "time")):
    base = results[kind].get(1)
    for k, r in results[kind].items():
        if base:
            r["efficiency"] = (r[key] / (k * base[key]) if better == "rate" else base[key] / (k * r[key]))

(out / "multigpu.json").write_text(json.dumps(results, indent=2))
md = [f"Device: {device}", "", "| GPUs | certify img/s (steady) | efficiency | wall s (with start-up, compile) | "
      "rows = 1-GPU rows | DDP epoch s | epoch efficiency | test/acc |", "|---|---|---|---|---|---|---|---|"]
for k in worlds:
    c, t = results["certify"].get(k, {}), results["train"].get(k, {})
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    md.append(f"| {k} | {f(c.get('steady_images_per_s'), '.3f')} | {f(c.get('efficiency'), '.1%')} | "
              f"{f(c.get('wall_s'), '.1f')} | {c.get('rows_equal_k1', '-')} | {f(t.get('steady_epoch_s'), '.2f')} | "
              f"{f(t.get('efficiency'), '.1%')} | {f(t.get('test/acc'), '.3f')} |")
(out / "multigpu.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
cp "$OUT/multigpu.json" "$OUT/multigpu.md" "$WORK/" 2>/dev/null || true
