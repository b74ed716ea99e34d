"""Issue 19: the base classifier's training methods side by side, fixed sigma and as VRS's stage 1, in one script.

    python benchmarks/training_methods.py --size smoke --out /tmp/training_methods          # tests the script (digits)
    python benchmarks/training_methods.py --size cpu --out outputs/training_methods_cpu       # the issue's CPU size
    python benchmarks/training_methods.py --size gpu --out $OUT/tm --data-root .device-data/fashion-mnist \\
        --time-budget 540                                                                    # H100, repeated calls
    python benchmarks/training_methods.py --size cpu --estimate                              # the steps and seconds

It runs the real apps (`python -m vrs.apps.train|certify|attack|report`, one subprocess per step, Hydra multiruns
inside a step) into fixed folders under --out, resumable as benchmarks/vrs_frontier.py is (whose runner it uses):
a step whose folder holds `.done` is skipped; one cut off is rerun (certify and attack resume row by row, a training
run starts again). Rerun the same command until it prints "complete" (exit 0; 3 = stopped by --time-budget; 1 = a
step failed).

What it runs, for each training method M in gaussian, smoothadv, macer, consistency (`training=M`):
  train/M/g<k>/sigma_<s>/   vrs-train -m noise.sigma=<s...> training=M <M's settings>: one network per sigma
  train/vrs_M/              vrs-train experiment=vrs_fmnist_radius training=M: a multi-sigma base trained with M
                            (stage 1, sigma log-uniform on [0.12, 1]), then the VRS selector on it (stage 2, objective
                            radius, make demo's)
  cert/fixed/<job>/         vrs-certify certify=cohen on each fixed-sigma LeNet at its training sigma
  cert/vrs/<job>/           vrs-certify certify=vrs_c1 on each method's VRS checkpoint at each lambda
  atk/fixed/, atk/vrs/      vrs-attack attack=eot_pgd attack.norm=l2 (PREDICT on the adversarial input)
                            (one process per line above, a Hydra multirun over every method's checkpoints)
  report/                   vrs-report over train/, cert/, atk/ (the table: one row per run, labelled by method)
  summary.md, frontier.png  clean accuracy against ACR and against robust accuracy, one curve per method over
                            sigma, VRS on top of each method's base as points; the published ordering checked per sigma
                            (CIFAR-10 in the papers: Gaussian below SmoothAdv, MACER and Consistency in ACR at every
                            sigma)

Each method's settings are its paper's for MNIST (Jeong & Shin 2020's reproduction, LeNet; the presets
experiment=<M>_fmnist): SmoothAdv PGD 10 steps, eps 1.0, m = 4, batch 64; MACER k = 16, beta = 16, gamma = 8,
lambda 16 (sigma 0.25, 0.5; multi-sigma stage 1) and 6 (sigma 1.0), batch 256; Consistency m = 2, lambda 20,
eta 0.5, batch 128; Gaussian batch 256. Schedules scaled to the size's epochs [choice]: one optimizer for every
method (SGD lr 0.01, momentum 0.9, the MNIST protocol's rate; cosine over the epochs instead of their x0.1 every
30 of 90 epochs), SmoothAdv's eps warm-up over the first ninth of the epochs (their 10 of 90) and MACER's radius
term deferred for the first third (their 30 of 90). The smoke size shrinks m, steps and k to run in seconds.

Sizes (--size; --epochs overrides a size's epochs):
  smoke  data=digits, tiny nets, 2 epochs at lr 0.05, 2 sigmas, 4 images, tiny n: tests the script end to end
         (745 s wall, 290 s of CPU, on 2 cores shared at load 7-8; 13 app processes).
  cpu    sized for under an hour on 2 quiet cores: Fashion-MNIST (20,000 training images, 5 epochs), the base
         classifier an MLP (`model=mlp`, 784-256-256-10: ~7x the noisy samples/s of the width-8 LeNet here, as
         accurate under noise at this budget; docs/results.md, issue 18), sigma in {0.25, 0.5, 1.0}, SmoothAdv at
         m = 2 and 4 PGD steps, MACER at k = 8 (smaller than their papers'), certification of 200 test images
         (every 50th) at n = 10,000 (n0 = 100, alpha = 0.001), EOT-PGD L2 on 500 test images (every 20th) at
         eps {0.5, 1.0}, 10 steps x 1 EOT, m = 4, PREDICT n = 1,000 (VRS: the deployed sigma from 100 selector
         draws, `defense.deployed_n_h`). VRS on each method's base: stage 1 the
         method's multi-sigma MLP, stage 2 a SelectorCNN of width 8 with the `radius` objective (make demo's, the
         best measured in issue 17) for 1 epoch, at lambda {0.25, 0.5, 0.75}. Training runs two torch threads
         (one process at a time); certification and attacks run two single-threaded processes each (world_size 2):
         two single-threaded processes keep their speed when other jobs share the cores, where the two OpenMP
         threads of one process wait on each other (a SmoothAdv training 11x slower than on a quiet machine,
         measured 2026-12-07). Forward batches of 512 noisy images in certification (the CPU's auto).
  cpu-lenet  the first cpu size (session 10's run, docs/data/training_methods_cpu/): a width-8 LeNet on 10,000
         images for 3 epochs, SmoothAdv m = 2 and 2 steps, PREDICT n = 100, no VRS; 82 minutes on shared cores.
  gpu    trainer=gpu, all 55,000 training images, 10 epochs (selectors 10), LeNet width 32, the papers' settings,
         EOT-PGD 20 steps x 8 EOT with m = 8, PREDICT n = 1,000, the cpu size's images; VRS at lambda
         {0.25, 0.5, 0.75} on each method's base.
`--estimate` prints each step's estimated seconds (rates in RATES; +-50 %).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_runner import (QUIET, SEED, TRAIN_QUIET, Step, clean_json, eps_list, fmt, log_path,
                               machine, print_estimate, run_app, run_steps)

METHODS = ("gaussian", "smoothadv", "macer", "consistency")
VRS_LAMBDA_GRID = ("module.median.grid=[0.12,0.25,0.5,1.0]",)


@dataclass(frozen=True)
class Size:
    name: str
    data: tuple[str, ...]            # data overrides for every app
    trainer: tuple[str, ...]
    model: tuple[str, ...]
    epochs: int
    selector_epochs: int
    sigmas: tuple[float, ...]
    lams: tuple[float, ...]
    cert_images: tuple[int, int]     # (skip, max) of the test split
    n0: int
    n: int
    alpha: float
    atk_images: tuple[int, int]
    eps: tuple[float, ...]
    steps: int
    eot: int
    m: int
    predict_n: int
    attack_batch: int
    train_images: int                # for the estimate
    lr: float = 0.01                 # SGD learning rate of every base classifier (the MNIST protocol's)
    selector: tuple[str, ...] = ()   # extra overrides of the selector stage
    cert_vrs: tuple[str, ...] = ()
    deployed_n_h: int | None = None  # VRS attacks: selector draws of the deployed sigma in PREDICT (None: checkpoint's)
    small: dict = field(default_factory=dict)  # method -> overrides that shrink it (smoke, cpu)
    device: str = "cpu-lenet"  # RATES key of the estimate
    vrs: bool = True                 # also VRS on each method's base (stage 1 trained with the method)
    workers: int = 1                 # processes of each certification / attack (certify.world_size, attack.world_size)
    cert_batch: int | None = None    # certify.batch_size (None: the config's auto, 512 on a CPU)
    threads: int | None = None       # torch threads of each certify / attack process (OMP_NUM_THREADS; None: default)
    train_threads: int | None = None  # torch threads of each training process (None: torch's default)
    vrs_experiment: str = "vrs_fmnist_radius"  # VRS's preset on each base (its objective: radius, make demo's)


SIZES = {
    "smoke": Size("smoke", data=("data=digits",), trainer=("trainer=cpu",), model=("model.width=8", "model.hidden=32"),
                  epochs=2, selector_epochs=1, sigmas=(0.25, 0.5), lams=(0.5,), cert_images=(10, 4), n0=8, n=40,
                  alpha=0.001, atk_images=(10, 4), eps=(0.5,), steps=1, eot=1, m=2, predict_n=20, attack_batch=4,
                  train_images=1297, lr=0.05,
                  selector=("module.n_trf=2", "module.val_n_h=2", "module.val_lams=[0.5]", "module.median.n_h0=8",
                            "module.median.n_h=64", "module.diagnostics.enabled=false", "selector.net.width=8"),
                  cert_vrs=("certify.n_h0=8", "certify.n_h=32"),
                  small={"smoothadv": ("training.m=2", "training.steps=1"), "macer": ("training.k=4",)}),
    "cpu-lenet": Size("cpu-lenet", data=("data=fashion_mnist", "data.train_subset=10000"), trainer=("trainer=cpu",),
                      model=("model.width=8", "model.hidden=64"), epochs=3, selector_epochs=1, sigmas=(0.25, 0.5, 1.0),
                      lams=(0.5,), cert_images=(50, 200), n0=100, n=10_000, alpha=0.001, atk_images=(20, 500),
                      eps=(0.5, 1.0), steps=10, eot=1, m=4, predict_n=100, attack_batch=100, train_images=10_000,
                      small={"smoothadv": ("training.m=2", "training.steps=2"), "macer": ("training.k=8",)},
                      vrs=False, workers=2, threads=1, train_threads=1, cert_batch=512),
    "cpu": Size("cpu", data=("data=fashion_mnist", "data.train_subset=20000"), trainer=("trainer=cpu",),
                model=("model=mlp",), epochs=5, selector_epochs=1, sigmas=(0.25, 0.5, 1.0), lams=(0.25, 0.5, 0.75),
                cert_images=(50, 200), n0=100, n=10_000, alpha=0.001, atk_images=(20, 500), eps=(0.5, 1.0), steps=10,
                eot=1, m=4, predict_n=1000, attack_batch=100, train_images=20_000,
                selector=("selector.net.width=8", "+trainer.limit_val_batches=2"),
                small={"smoothadv": ("training.m=2", "training.steps=4"), "macer": ("training.k=8",)},
                workers=2, threads=1, train_threads=2, cert_batch=512, deployed_n_h=100, device="cpu-mlp"),
}
# the gpu size: the paper settings on the whole training set, LeNet at width 32, the eot_pgd budget, VRS on each base
SIZES["gpu"] = Size("gpu", data=("data=fashion_mnist",), trainer=("trainer=gpu",), model=(), epochs=10,
                    selector_epochs=10, sigmas=(0.25, 0.5, 1.0), lams=(0.25, 0.5, 0.75), cert_images=(50, 200), n0=100,
                    n=10_000, alpha=0.001, atk_images=(20, 500), eps=(0.5, 1.0), steps=20, eot=8, m=8, predict_n=1000,
                    attack_batch=250, train_images=55_000, device="h100")

# Seconds per unit, per device: training per (image, epoch) of gaussian (the others cost cost_factor times that), a
# noisy forward sample (cert) and forward + backward (grad) of the base classifier, the same of the selector
# (sel, sel_grad), a selector training image-epoch (sel_train, validation and diagnostics included), a process's
# start-up, an attacked (image, eps)'s fixed cost (atk_fixed), each job of an evaluation multirun (job: its workers'
# start-up, checkpoint loading and first batches; 11-33 s in the cpu size's run of 2026-12-07, 20 s taken).
# Certification and attacks divide by their workers.
# cpu-lenet: the width-8 LeNet on 2 quiet cores, one thread, measured 2026-12-07 (vrs-certify 0.78 s an image at
# n0 + n = 10,100 with channels_last and BatchNorm folded). cpu-mlp: model=mlp and SelectorCNNs of width 8, from
# benchmarks/cpu_unit_rates.py (vrs_frontier's RATES["cpu-mlp"]; train at two threads ~1.5x its one-thread rate).
# h100: docs/performance.md.
RATES = {"cpu-lenet": dict(start=8.0, job=20.0, train=3.0e-4, cert=7.7e-5, grad=3.0e-4, atk_fixed=0.015, sel=7.3e-5,
                           sel_grad=2.64e-4, sel_train=6.3e-3),
         "cpu-mlp": dict(start=8.0, job=20.0, train=9.0e-5, cert=1.11e-5, grad=2.48e-5, atk_fixed=0.005, sel=7.3e-5,
                         sel_grad=2.64e-4, sel_train=6.3e-3),
         "h100": dict(start=15.0, job=5.0, train=2.0e-5, cert=1.25e-6, grad=3.1e-6, atk_fixed=0.008, sel=1e-6,
                      sel_grad=3e-6, sel_train=2e-4)}

def paper_settings(method: str, sigma: float | None, epochs: int) -> list[str]:
    """The method's MNIST settings (module docstring) at `sigma` (None: multi-sigma stage 1), schedules scaled."""
    if method == "smoothadv":
        return ["training=smoothadv", "training.m=4", "training.steps=10", "training.eps=1.0",
                f"training.warmup={max(1, round(epochs / 9))}", "data.batch_size=64"]
    if method == "macer":
        lam = 6.0 if sigma is not None and sigma >= 1.0 else 16.0
        return ["training=macer", "training.k=16", f"training.lam={lam:g}", "training.gamma=8.0", "training.beta=16.0",
                f"training.deferred_epochs={epochs // 3}", "data.batch_size=256"]
    if method == "consistency":
        return ["training=consistency", "training.m=2", "training.lam=20.0", "training.eta=0.5", "data.batch_size=128"]
    return ["training=gaussian", "data.batch_size=256"]


def cost_factor(method: str, settings: list[str]) -> float:
    """Forward-backward passes per training image relative to gaussian, from the method's effective overrides."""
    def value(key: str, default: float) -> float:
        return next((float(o.split("=", 1)[1]) for o in reversed(settings) if o.startswith(f"training.{key}=")),
                    default)
    if method == "smoothadv":
        return value("m", 4) * (value("steps", 10) + 1)
    if method == "macer":
        return value("k", 16)
    if method == "consistency":
        return value("m", 2)
    return 1.0


def sized(size: Size, method: str, overrides: list[str]) -> list[str]:
    """The paper's overrides with the size's shrinking ones last (they win)."""
    return overrides + list(size.small.get(method, ()))


def build_steps(size: Size, out: Path, data_root: str | None, methods: tuple[str, ...]) -> tuple[list[Step], dict]:
    r = RATES[size.device]
    data = list(size.data) + ([f"data.root={data_root}"] if data_root else [])
    common = data + [f"seed={SEED}"] + QUIET
    steps: list[Step] = []
    ckpts: dict = {"fixed": {}, "vrs": {}}
    train_s = size.train_images * size.epochs * r["train"]
    for method in methods:
        groups: dict[tuple[str, ...], list[float]] = {}
        for s in size.sigmas:
            groups.setdefault(tuple(sized(size, method, paper_settings(method, s, size.epochs))), []).append(s)
        for k, (settings, sigmas) in enumerate(groups.items()):
            folder = out / "train" / method / f"g{k}"
            for s in sigmas:
                ckpts["fixed"].setdefault(method, []).append(folder / f"sigma_{s:g}" / "checkpoints" / "last.ckpt")
            steps.append(Step(f"train/{method}/g{k}", "train", "train",
                              ["-m", "noise=fixed", f"noise.sigma={fmt(sigmas)}", *settings, *size.trainer, *size.model,
                               *data, f"seed={SEED}", *TRAIN_QUIET, f"trainer.max_epochs={size.epochs}",
                               f"optimizer.lr={size.lr:g}", "task_name=training_methods", f"hydra.sweep.dir={folder}",
                               "hydra.sweep.subdir=sigma_${noise.sigma}"],
                              folder, r["start"] + len(sigmas) * train_s * cost_factor(method, list(settings))))
        if not size.vrs:
            continue
        # VRS on this method's base: stage 1 (multi-sigma, trained with the method), stage 2 (the selector)
        folder = out / "train" / f"vrs_{method}"
        stage1 = [o if not o.startswith("data.batch_size=") else f"+base_stage.{o}"
                  for o in sized(size, method, paper_settings(method, None, size.epochs))]
        ckpts["vrs"][method] = folder / "checkpoints" / "last.ckpt"
        steps.append(Step(f"train/vrs_{method}", "train", "train",
                          [f"experiment={size.vrs_experiment}", *stage1, *size.trainer, *size.model, *data,
                           f"seed={SEED}", *TRAIN_QUIET, f"base_stage.trainer.max_epochs={size.epochs}",
                           f"base_stage.optimizer.lr={size.lr:g}", f"trainer.max_epochs={size.selector_epochs}",
                           *size.selector, "task_name=training_methods", f"hydra.run.dir={folder}"],
                          folder, r["start"] + train_s * cost_factor(method, stage1)
                          + size.train_images * size.selector_epochs * r["sel_train"]))
    skip, mx = size.cert_images
    cert = ["certify.split=test", f"certify.skip={skip}", f"certify.max={mx}", f"certify.n0={size.n0}",
            f"certify.n={size.n}", f"certify.alpha={size.alpha}", "certify.progress=false",
            f"certify.world_size={size.workers}"]
    cert += [f"certify.batch_size={size.cert_batch}"] if size.cert_batch else []
    askip, amx = size.atk_images
    atk = ["attack=eot_pgd", "attack.norm=l2", "attack.split=test", f"attack.skip={askip}", f"attack.max={amx}",
           f"attack.eps={eps_list(size.eps)}", f"attack.steps={size.steps}", f"attack.eot={size.eot}",
           f"attack.batch_size={size.attack_batch}", f"defense.m={size.m}", f"predict.n={size.predict_n}",
           f"attack.world_size={size.workers}"]
    n_h = 1064  # the selector draws of VRS's median smoothing in certification (n_h0 + n_h) and in PREDICT
    cert_s = mx * (size.n + size.n0) * r["cert"] / size.workers
    cert_vrs_s = cert_s + mx * n_h * r["sel"] / size.workers
    grads = size.steps * size.eot * size.m
    atk_s = amx * len(size.eps) * (r["atk_fixed"] + 2 * size.predict_n * r["cert"] + grads * r["grad"]) / size.workers
    deployed = size.deployed_n_h or n_h
    atk_vrs_s = atk_s + amx * len(size.eps) * (2 * deployed * r["sel"] + grads * r["sel_grad"]) / size.workers
    # one process per kind of evaluation, every method's checkpoints in its multirun (process start-up is the smoke
    # size's cost); the jobs of a sweep resume row by row in their own folders
    fixed = [str(p) for m in methods for p in ckpts["fixed"][m]]
    vrs = [str(ckpts["vrs"][m]) for m in methods if m in ckpts["vrs"]]
    evaluations = [
            ("cert/fixed", ["-m", f"ckpt_path={','.join(fixed)}", "certify=cohen", *cert],
             len(fixed) * (cert_s + r["job"])),
            ("cert/vrs", ["-m", f"ckpt_path={','.join(vrs)}", "certify=vrs_c1", f"certify.lam={fmt(size.lams)}",
                          *cert, *size.cert_vrs], len(vrs) * len(size.lams) * (cert_vrs_s + r["job"])),
            ("atk/fixed", ["-m", f"ckpt_path={','.join(fixed)}", *atk], len(fixed) * (atk_s + r["job"])),
            ("atk/vrs", ["-m", f"ckpt_path={','.join(vrs)}", f"defense.lam={fmt(size.lams)}", *atk,
                         *([f"defense.deployed_n_h={size.deployed_n_h}"] if size.deployed_n_h else [])],
             len(vrs) * len(size.lams) * (atk_vrs_s + r["job"]))]
    for kind, args, est in [e for e in evaluations if vrs or "vrs" not in e[0]]:
        folder = out / kind
        steps.append(Step(kind, kind.split("/")[1], "certify" if kind.startswith("cert") else "attack",
                          [*args, *common, "task_name=training_methods", f"hydra.sweep.dir={folder}"],
                          folder, r["start"] + est))
    report = out / "report"
    steps.append(Step("report", "report", "report",
                      [f"report.inputs=[{out / 'train'},{out / 'cert'},{out / 'atk'}]", f"report.out_dir={report}",
                       f"report.title='Training methods on {size.data[0].split('=')[1]} ({size.name} size)'",
                       f"hydra.run.dir={report}"], report, r["start"] + 20))
    steps.append(Step("summary", "report", None, [], out, 1.0, kind="summary"))
    return steps, ckpts


# ---- the summary: frontier plot and the published ordering -------------------------------------------------
def number(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def summarize(out: Path, size: Size, methods: tuple[str, ...]) -> dict:
    """summary.md, summary.json and frontier.png from the report's table (report/report.csv)."""
    rows = list(csv.DictReader((out / "report" / "report.csv").open()))
    robust_cols = sorted(c for c in rows[0] if c.startswith("robust_acc[") and "@eps=" in c) if rows else []
    points: dict = {"fixed": {}, "vrs": {}}
    for row in rows:
        if row["kind"] == "train" or row.get("training") not in methods:
            continue
        family = "vrs" if row["method"].startswith("vrs") else "fixed"
        key = number(row["sigma"]) if family == "fixed" else number(row["lambda"])
        entry = points[family].setdefault(row["training"], {}).setdefault(key, {})
        for col in ("clean_acc", "ACR", "attack_clean_acc", *robust_cols):
            if number(row.get(col)) is not None:
                entry[col] = number(row[col])
    ordering = {}
    for s in size.sigmas:
        acr = {m: points["fixed"].get(m, {}).get(s, {}).get("ACR") for m in methods}
        if acr.get("gaussian") is not None:
            others = {m: v for m, v in acr.items() if m != "gaussian" and v is not None}
            ordering[f"{s:g}"] = {"acr": acr, "gaussian_lowest": all(v > acr["gaussian"] for v in others.values())}
    against = vrs_against_fixed(out, methods)
    result = {"points": points, "ordering": ordering, "robust_columns": robust_cols, "vrs_against_fixed": against}
    (out / "summary.json").write_text(json.dumps(clean_json(result), indent=2, default=str) + "\n")
    lines = [f"# Training methods ({size.name} size)", "", "| method | sigma / VRS lambda | clean acc | ACR | "
             + " | ".join(robust_cols) + " |", "|---" * (4 + len(robust_cols)) + "|"]
    for family in ("fixed", "vrs"):
        for m in methods:
            for key, e in sorted(points[family].get(m, {}).items(), key=lambda kv: (kv[0] is None, kv[0])):
                where = f"sigma={key:g}" if family == "fixed" and key is not None else f"VRS lambda={key}"
                vals = [e.get("clean_acc"), e.get("ACR"), *[e.get(c) for c in robust_cols]]
                lines.append(f"| {m} | {where} | " + " | ".join("" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines += ["", "Published ordering (Gaussian lowest ACR at each sigma):"]
    lines += [f"- sigma {s}: {'holds' if o['gaussian_lowest'] else 'does not hold'} ("
              + ", ".join(f"{m} {v:.3f}" for m, v in o["acr"].items() if v is not None) + ")"
              for s, o in ordering.items()]
    if against:
        lines += ["", "VRS on each method's base against that method's fixed sigmas, paired over the same images "
                  "(VRS minus fixed, +- paired SE): the fixed sigma nearest in clean accuracy, and the fixed sigmas "
                  "that dominate the VRS point (higher in both, each by more than 2 SE; every pair in summary.json):",
                  "", "| method | VRS lambda | metric | n | nearest fixed sigma | clean diff | metric diff | "
                  "dominated by sigma |", "|---" * 8 + "|"]
        groups: dict[tuple, list[dict]] = {}
        for a in against:
            groups.setdefault((a["method"], a["lambda"], a["metric"]), []).append(a)
        for (method, lam, metric), pairs in groups.items():
            near = min(pairs, key=lambda a: abs(a["clean_diff"]))
            by = [f"{a['sigma']:g}" for a in pairs
                  if a["clean_diff"] < -2 * a["clean_diff_se"] and a["metric_diff"] < -2 * a["metric_diff_se"]]
            lines.append(f"| {method} | {lam:g} | {metric} | {near['n']} | {near['sigma']:g} | "
                         f"{near['clean_diff']:+.3f} +- {near['clean_diff_se']:.3f} | "
                         f"{near['metric_diff']:+.3f} +- {near['metric_diff_se']:.3f} | {', '.join(by) or '-'} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot_frontier(points, robust_cols, methods, out / "frontier.png")
    return result


def per_image_outcomes(out: Path) -> dict:
    """(family, method, sigma or lambda) -> {metric: (idx, clean 0/1, metric)}, read by vrs-report's own readers
    (vrs.apps.report_runs): ACR (R if certified correctly, else 0; clean = certified prediction right, abstain = wrong)
    from each certification; robust accuracy at each eps from each attack (clean = PREDICT on the clean image right)."""
    from vrs.analysis.outcomes import radius_if_correct
    from vrs.apps.report_runs import read_attack, read_certify

    found: dict = {}
    for job in sorted(p.parent for p in (out / "cert").glob("*/*/certify.tsv")):
        row = read_certify(job, [])
        entry = found.setdefault(run_key(row), {})
        entry["ACR"] = (row.idx, row.correct.astype(float), radius_if_correct(row.radii, row.correct))
    for job in sorted(p.parent for p in (out / "atk").glob("*/*/attack.csv")):
        row, _ = read_attack(job)
        entry = found.setdefault(run_key(row), {})
        for eps, robust in row.per_image["eps"].items():
            entry[f"robust@eps={eps:g}"] = (row.idx, row.per_image["clean"], robust)
    return found


def run_key(row) -> tuple:
    """(family, training method, sigma or lambda) of a report row, the method from its checkpoint's folder under
    train/ (train/<method>/g<k>/sigma_<s>/ or train/vrs_<method>/)."""
    parts = Path(row.ckpt_path).parts
    name = parts[parts.index("train") + 1]
    if name.startswith("vrs_"):
        return "vrs", name[len("vrs_"):], float(row.values["lambda"])
    return "fixed", name, float(row.values["sigma"])


def vrs_against_fixed(out: Path, methods: tuple[str, ...]) -> list[dict]:
    """Each VRS point on a method's base against that method's fixed-sigma networks, paired over the same images:
    the differences in clean accuracy and in the metric (VRS minus fixed) with their paired standard errors, and
    the fixed sigma nearest in clean accuracy. Different networks (the VRS base is a multi-sigma one), the same
    training method and images."""

    from vrs.analysis.outcomes import align_images
    from vrs.analysis.standard_error import mean_standard_error

    found = per_image_outcomes(out)
    rows = []
    for (family, method, lam), vrs in sorted(found.items()):
        if family != "vrs" or method not in methods:
            continue
        for metric, (vidx, vclean, vm) in vrs.items():
            for (fam2, m2, sigma), fixed in sorted(found.items()):
                if fam2 != "fixed" or m2 != method or metric not in fixed:
                    continue
                fidx, fclean, fm = fixed[metric]
                common, (pv, pf) = align_images(vidx, fidx)
                dc, dm = vclean[pv] - fclean[pf], vm[pv] - fm[pf]
                rows.append({"method": method, "lambda": lam, "metric": metric, "sigma": sigma, "n": int(common.size),
                             "vrs_clean": float(vclean[pv].mean()), "vrs_metric": float(vm[pv].mean()),
                             "fixed_clean": float(fclean[pf].mean()), "fixed_metric": float(fm[pf].mean()),
                             "clean_diff": float(dc.mean()), "clean_diff_se": mean_standard_error(dc),
                             "metric_diff": float(dm.mean()), "metric_diff_se": mean_standard_error(dm)})
    return rows


def plot_frontier(points: dict, robust_cols: list[str], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ACR", "clean_acc")] + [(c, "attack_clean_acc") for c in robust_cols]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (ycol, xcol) in zip(axes[0], panels):
        for i, m in enumerate(methods):
            color = f"C{i}"
            fixed = sorted((k, e) for k, e in points["fixed"].get(m, {}).items() if k is not None)
            xy = [(e[xcol], e[ycol]) for _, e in fixed if xcol in e and ycol in e]
            if xy:
                ax.plot(*zip(*xy), "o-", color=color, label=f"{m} (fixed sigma)")
                for (k, e) in fixed:
                    if xcol in e and ycol in e:
                        ax.annotate(f"{k:g}", (e[xcol], e[ycol]), fontsize=7, color=color)
            vrs = [(e[xcol], e[ycol]) for _, e in sorted(points["vrs"].get(m, {}).items()) if xcol in e and ycol in e]
            if vrs:
                ax.plot(*zip(*vrs), "*--", color=color, ms=10, label=f"VRS on {m} base")
        ax.set(xlabel=xcol.replace("_", " "), ylabel=ycol, title=ycol)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- training cost per epoch -------------------------------------------------------------------------------------
def training_cost(device: str, batch: int, steps: int, rounds: int, images: int = 55_000) -> dict:
    """Seconds per training step of each method (LeNet on 1x28x28 inputs, the methods at their MNIST settings, sigma
    0.25, SGD) at the same batch of `batch` images, the methods interleaved for `rounds` rounds of `steps` timed steps
    (after 2 untimed ones); the median round, and per epoch of `images` images. In-process, the module's own step
    (NoisyClassifierModule._method_step), eager (no CUDA graph, no compile)."""
    import statistics

    import torch

    from vrs.modules.classifier import NoisyClassifierModule

    data = {"name": "fashion_mnist", "channels": 1, "size": 28, "num_classes": 10, "mean": [0.286], "std": [0.353]}
    net = {"_target_": "vrs.models.lenet.LeNet", "in_channels": 1, "num_classes": 10, "input_size": 28, "width": 32,
           "hidden": 256}
    import yaml

    from vrs.apps import CONFIG_DIR

    settings = {m: {o.split("=")[0][len("training."):]: yaml.safe_load(o.split("=")[1])
                    for o in paper_settings(m, 0.25, 90) if o.startswith("training.")} for m in METHODS}
    modules = {}
    for m in METHODS:
        cfg = {**yaml.safe_load((Path(CONFIG_DIR) / "training" / f"{m}.yaml").read_text()), **settings[m]}
        cfg.update({k: 0 for k in ("warmup", "deferred_epochs") if k in cfg})  # full eps, radius term on: from step 1
        torch.manual_seed(0)
        module = NoisyClassifierModule(net, {"_target_": "vrs.smoothing.noise.FixedSigma", "sigma": 0.25},
                                       {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9},
                                       data, training=cfg).to(device)
        modules[m] = (module, torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9))
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(m: str, n: int) -> float:
        module, opt = modules[m]
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            module._method_step(x, y).loss.backward()
            opt.step()
        sync()
        return (time.perf_counter() - t0) / n

    for m in METHODS:
        run(m, 2)
    per_round = {m: [] for m in METHODS}
    for _ in range(rounds):
        for m in METHODS:
            per_round[m].append(run(m, steps))
    out = {"device": device, "batch": batch, "steps": steps, "rounds": rounds, "images_per_epoch": images,
           "settings": settings, "methods": {}}
    base = statistics.median(per_round["gaussian"])
    for m in METHODS:
        med = statistics.median(per_round[m])
        out["methods"][m] = {"s_per_step": med, "s_per_epoch": med * math.ceil(images / batch),
                             "x_gaussian": med / base, "rounds_s_per_step": per_round[m]}
    return out


# ---- running ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--out", type=Path, help="output root (fixed: rerun with the same --out to continue)")
    p.add_argument("--data-root", help="Fashion-MNIST folder (*.gz), passed as data.root")
    p.add_argument("--epochs", type=int, help="training epochs of the base classifiers (default: the size's)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no step whose estimate does not fit what is left (the first always starts)")
    p.add_argument("--estimate", action="store_true", help="print the steps and their estimated seconds, run nothing")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--cost", metavar="DEVICE", help="instead: time a training step of each method at the same batch "
                   "on DEVICE (cpu, cuda), print seconds per step and per 55,000-image epoch, write --out/cost.json")
    p.add_argument("--cost-batch", type=int, default=256)
    p.add_argument("--cost-steps", type=int, default=5)
    p.add_argument("--cost-rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.cost:
        result = training_cost(args.cost, args.cost_batch, args.cost_steps, args.cost_rounds)
        result["machine"] = machine()
        for m, r in result["methods"].items():
            print(f"{m:12s} {r['s_per_step'] * 1e3:9.1f} ms/step  {r['s_per_epoch']:8.1f} s/epoch  "
                  f"x{r['x_gaussian']:.1f} gaussian")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    methods = tuple(args.methods.split(","))
    if not methods or set(methods) - set(METHODS):
        p.error(f"--methods={args.methods!r}: a comma-separated subset of {','.join(METHODS)}")
    size = SIZES[args.size] if args.epochs is None else replace(SIZES[args.size], epochs=args.epochs)
    out = (args.out or Path("outputs") / f"training_methods_{size.name}").resolve()
    steps, _ = build_steps(size, out, args.data_root, methods)
    if args.estimate or args.dry_run:
        return print_estimate(steps, size.name, size.device, args.dry_run)

    def execute(s: Step, left: float | None, record: dict) -> tuple[int, bool]:
        if s.kind == "summary":
            summarize(out, size, methods)
            return 0, False
        threads = size.train_threads if s.app == "train" else size.threads
        if threads:  # inherited by the app process the step starts
            os.environ["OMP_NUM_THREADS"] = str(threads)
        return run_app(s, left, log_path(out, s))

    fields = dict(size=clean_json(asdict(size)), seed=SEED, out=str(out), methods=list(methods))
    status, code = run_steps("training_methods", steps, out, argv, fields, args.time_budget, execute,
                             skip=lambda s, record, inv: "rerun" if s.kind == "summary" else None,
                             done_info=lambda s, wall: None if s.kind == "summary" else {"wall_s": round(wall, 1)})
    if code == 0:
        print(f"summary: {out / 'summary.md'}; table: {out / 'report' / 'report.md'}; plot: {out / 'frontier.png'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
