"""vrs-certify: Cohen's CERTIFY (or PREDICT) of the smoothed classifier on a subset of a data set.

    vrs-certify ckpt_path=outputs/train/runs/<ts>/checkpoints/last.ckpt             # Cohen's settings
    vrs-certify ckpt_path=... certify.n0=10 certify.n=200 certify.max=5             # a quick look (CPU)
    vrs-certify ckpt_path=... data=cifar10 certify.skip=20                          # Cohen's 500 CIFAR images
    vrs-certify ckpt_path=... certify.out_dir=results/c10                           # rerun: resumes there
    vrs-certify ckpt_path=... certify.world_size=4                                  # 4 processes (GPUs)
    torchrun --nproc_per_node 4 -m vrs.apps.certify ckpt_path=... certify.out_dir=...    # the same via torchrun
    vrs-certify ckpt_path=... certify.mode=predict                                  # PREDICT instead
    vrs-certify ckpt_path=... certify.sampling=radius_target certify.radii=[0.25,0.5]  # stop once decided (issue 21)
    vrs-certify ckpt_path=... certify.sound=true                                    # lattice noise: sound in floats
    vrs-certify ckpt_path=<VRS selector checkpoint> [certify=vrs_c1|vrs_c2] [certify.lam=0.5]  # VRS (certify_vrs)

Writes certify.tsv, certify.meta.json, summary.json and certified_accuracy.png in certify.out_dir (the
Hydra run directory unless set); see vrs.apps.results for the crash-safety rules, vrs.apps.certify_store for
the TSV and vrs.smoothing.smoothed for the sampling engine.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.apps.certify_store import COLUMNS, ResultsDir, row_fields, row_writer, table_name
from vrs.apps.certify_vrs import (meta_keys, resolve_vrs_options, summary_extras, table_of, undetermined_problem,
                                  vrs_options)
from vrs.apps.results import describe_subset, select_indices, store_subset
from vrs.apps.skeleton import (Ranks, device_name, load_data, log_results, open_store, resolve_device, run_app,
                               run_ranks)
from vrs.checkpoint import check_data_matches, load_checkpoint
from vrs.config import to_typed
from vrs.config.certify import CertifyConfig, VRSCertifyConfig
from vrs.config_schema import check_values
from vrs.errors import VRSError, hydra_errors_exit, user_errors_exit
from vrs.modules.training import training_name
from vrs.selection.certificates import ARGUMENTS
from vrs.selection.certify import VRSOptions, certify_vrs_groups
from vrs.selection.median import MedianSmoothing
from vrs.selection.vote import certify_dual_rs_groups
from vrs.smoothing import core, lattice
from vrs.smoothing.sequential import SamplingPlan, look_schedule
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed
from vrs.utils.device import shard_device
from vrs.utils.io import save_figure
from vrs.utils import metric_names as names

log = logging.getLogger(__name__)
CKPT_KINDS = ("classifier", "vrs")  # a base classifier, or a VRS selector checkpoint (vrs.apps.certify_vrs)


# ---- options: the typed certify config (vrs.config.certify), its `auto` values resolved --------------------
def sampling_plan(opts: CertifyConfig) -> SamplingPlan | None:
    """The engine's sampling plan for certify.sampling (None: Cohen's fixed n0 + n)."""
    if opts.sampling == "fixed":
        return None
    return SamplingPlan(opts.sampling, n=opts.n, alpha=opts.alpha, looks=opts.looks,
                        radii=tuple(opts.radii or ()), radius_tol=opts.radius_tol)


def resolve_fused_blocks(value, device: str, precision: str) -> bool:
    """certify.fused_blocks: auto is on where the fused kernels run (CUDA, bf16/fp16, Triton installed);
    true anywhere else is refused, since it would silently run the plain network."""
    from vrs.kernels.dispatch import kernel_supported, triton_available  # deferred: it imports Triton

    dev_type = torch.device(device).type
    possible = precision in ("bf16", "fp16") and kernel_supported(device)
    if value == "auto":
        return possible
    if value and not possible:
        raise VRSError(f"certify.fused_blocks=true needs a CUDA device of compute capability >= 8.0, "
                       f"certify.precision=bf16 or fp16 and Triton; got device type {dev_type!r}, precision "
                       f"{precision!r}, Triton {'installed' if triton_available() else 'missing'}. "
                       f"Use certify.fused_blocks=auto or false")
    return bool(value)


def fused_stage_count(network: torch.nn.Module, fused_blocks: bool) -> int:
    """How many runs of ResNet blocks certify.fused_blocks fuses in this network (0 when off). Asking for
    fused blocks on a network with none to fuse is allowed (sweeps over models) but said."""
    if not fused_blocks:
        return 0
    from vrs.kernels.fuse import fusable_stage_count  # deferred: it imports Triton

    count = fusable_stage_count(network)
    if count == 0:
        log.info("certify.fused_blocks: %s has no run of identity ResNet blocks to fuse; it runs as it is",
                 type(network).__name__)
    return count


def resolve_options(c: DictConfig | CertifyConfig) -> CertifyConfig:
    """certify.* as the typed config (checked: vrs.config.certify), with its `auto` values resolved for this machine
    (picklable, for worker processes); n0 is None for PREDICT."""
    if isinstance(c, DictConfig):
        c = to_typed(c, VRSCertifyConfig if "certificate" in c else CertifyConfig)
    device = resolve_device(c.device, "certify.device")
    dev_type = torch.device(device).type
    precision = ("bf16" if dev_type == "cuda" else "fp32") if c.precision == "auto" else c.precision
    compile_ = c.compile
    if compile_ == "auto":  # autotuned Triton convolutions + CUDA graphs: the fastest on an H100 (docs/performance.md)
        compile_ = "max-autotune" if dev_type == "cuda" else False
    fused_blocks = resolve_fused_blocks(c.fused_blocks, device, precision)
    # compile's freezing folds BatchNorm already; the fused stages need the BatchNorms they fuse
    fold = (not compile_ and not fused_blocks) if c.fold_batchnorm == "auto" else c.fold_batchnorm
    if fold and fused_blocks:
        raise VRSError("certify.fold_batchnorm=true cannot go with certify.fused_blocks on (the fused stages need "
                       "their BatchNorms); allowed: fold_batchnorm=false or auto, or fused_blocks=false")
    n0 = c.n0 if c.mode == "certify" else None
    # a CPU's best batch keeps the noisy images and their activations in a core's cache (docs/performance.md)
    batch_size = (2048 if dev_type == "cuda" else 512) if c.batch_size == "auto" else c.batch_size
    per_group = c.images_per_group
    if per_group == "auto":
        first_look = None if c.sampling == "fixed" or c.mode != "certify" else look_schedule(c.n, c.looks)[0]
        per_group = auto_images_per_group(batch_size, n0 or 0, c.n, first_look)
    grid = core.radius_grid(c.radius_grid, "certify.radius_grid")  # sorted (a warning when it was not)
    radii = core.radius_grid(c.radii, "certify.radii") if c.sampling == "radius_target" else None
    return replace(c, n0=n0, device=device, precision=precision, compile=compile_,
                   channels_last=True if c.channels_last == "auto" else c.channels_last,
                   fused_blocks=fused_blocks, fold_batchnorm=fold, images_per_group=per_group, batch_size=batch_size,
                   indices=[c.indices] if isinstance(c.indices, int) else c.indices, radius_grid=grid, radii=radii)


def auto_images_per_group(batch_size: int, n0: int, n: int, first_look: int | None = None) -> int:
    """certify.images_per_group=auto: enough samples per group for a few full forward batches, at most 256 images.
    With looks (first_look: the first look's estimation samples), enough for the first look's to fill a few
    batches, at most 32 images (each keeps its noise stream's current block between looks)."""
    if first_look is None:
        return max(1, min(256, math.ceil(4 * batch_size / (n0 + n))))
    return max(1, min(32, math.ceil(4 * batch_size / (n0 + first_look))))


# ---- test-time sigma searches (sigma_search=multiscale | dds) --------------------------------------------
def search_options(search_cfg: dict | None):
    """The sigma_search method (vrs.selection.sigma_search), or None (vrs.config.certify.check_sigma_search has refused
    a fixed sigma, a VRS certificate or PREDICT beside it)."""
    return instantiate(search_cfg) if search_cfg is not None else None


def search_summary(rows: list[dict], search, alpha: float) -> dict:
    """summary.json entries of a sigma-search certification: the method, its soundness argument, sigma and cert use."""
    sig = np.array([r["sigma"] for r in rows]) if rows else np.zeros(0)
    certs = [r["cert"] for r in rows]
    unsound = np.array([r["radius_unsound"] for r in rows], dtype=np.float64)
    sound = search.certificate != "empirical"
    return {
        "sigma": f"per image ({search.to_dict()['name']} search)",
        "sigma_search": search.to_dict(),
        "certificate": search.certificate,
        "soundness": {"certificate": search.certificate, "argument": ARGUMENTS[search.certificate], "sound": sound},
        "alpha_budget": {"alpha": alpha, "alpha_total": alpha,
                         "note": ("split over every level's bounds by a union bound" if sound else
                                  "an empirical defence: alpha covers only the prediction at x itself")},
        "mean_sigma": float(sig.mean()) if len(sig) else None,
        "sigma_counts": ({f"{s:g}": int(c) for s, c in zip(*np.unique(sig, return_counts=True))}
                         if len(np.unique(sig)) <= 16 else None),
        "cert_counts": {k: certs.count(k) for k in (search.certificate, "abstain", "sigma_undetermined")},
        "mean_radius_unsound": float(np.nanmean(unsound)) if len(unsound) and np.isfinite(unsound).any() else None,
        "radius_unsound_note": "the published certificate's radius (Cohen's at the image's own sigma), not sound for "
                               "an input-dependent sigma: never counted in certified accuracy or ACR",
    }


# ---- set-up shared by every process --------------------------------------------------------------------
@dataclass
class Job:
    """Everything a (worker) process needs, all picklable."""

    opts: CertifyConfig
    ckpt_path: str
    checkpoint_sha256: str
    data_cfg: dict
    seed: int
    sigma: float
    out_dir: str
    meta: dict
    vrs: dict | None = None  # VRS certification settings (certify_vrs.VRSOptions); None: Cohen's path
    search: dict | None = None  # the sigma_search config (a `_target_` node); None: no test-time sigma search


# ---- the work of one process ---------------------------------------------------------------------------
def run_shard(job: Job, indices: list[int], rank: int, world: int, tsv_path: Path, x_all: torch.Tensor,
              y_all: torch.Tensor, network: torch.nn.Module, num_classes: int, selector=None, on_image=None,
              parent_pid: int | None = None) -> int:
    """Certify (or predict) `indices`, appending one fsync'd row per finished image to tsv_path (selector: the
    VRS checkpoint's, for VRS rows; None for Cohen's). Images go
    in groups of certify.images_per_group; Cohen's path (cohen_rows) or VRS's (vrs.selection.certify) turns
    each group into rows {idx, predict, sigma, ...}, completed here with label, correct and time."""
    opts, vopts = job.opts, VRSOptions(**job.vrs) if job.vrs is not None else None
    device = shard_device(opts.device, rank, world)
    smoothed = SmoothedClassifier(network, num_classes, vopts.sigma_max if vopts else job.sigma, device=device,
                                  precision=opts.precision, channels_last=opts.channels_last, compile=opts.compile,
                                  fused_blocks=opts.fused_blocks, fold_batchnorm=opts.fold_batchnorm,
                                  noise_block=opts.noise_block,
                                  source=job.ckpt_path,
                                  sampling=sampling_plan(opts) if opts.mode == "certify" else None,
                                  sound=opts.sound)
    if not indices:
        return 0
    selector = selector.to(device) if vopts else None
    if opts.compile:
        smoothed.warmup(opts.batch_size, tuple(x_all.shape[1:]))
    groups = [indices[i : i + opts.images_per_group] for i in range(0, len(indices), opts.images_per_group)]

    def images():
        for g in groups:
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit(f"rank {rank}: the launching process is gone; stopping")
            yield x_all[g].float().div_(255.0)

    if job.search is not None:
        method = instantiate(job.search)
        results = method.certify_groups(smoothed, ((x.to(device), g) for g, x in zip(groups, images())), job.seed,
                                        opts.n0, opts.n, opts.alpha, opts.batch_size)
    elif vopts:
        run = certify_dual_rs_groups if vopts.certificate == "dual_rs" else certify_vrs_groups
        results = run(smoothed, selector, ((x.to(device), g) for g, x in zip(groups, images())), job.seed, vopts,
                      opts.n0, opts.n, opts.alpha, opts.batch_size)
    else:
        results = cohen_rows(job, smoothed, groups, images())
    table = job.meta["mode"]
    done = 0
    with row_writer(tsv_path, table) as out:
        t_prev = time.perf_counter()
        for rows in results:
            now = time.perf_counter()
            per_image = (now - t_prev) / len(rows)
            t_prev = now
            for r in rows:
                label = int(y_all[r["idx"]])
                out.write([row_fields(table, {**r, "label": label, "correct": int(r["predict"] == label),
                                              "time": per_image})])
                done += 1
                if on_image is not None:
                    on_image()
    return done


def cohen_rows(job: Job, smoothed: SmoothedClassifier, groups: list[list[int]], images) -> Iterator[list[dict]]:
    """Cohen's CERTIFY / PREDICT at job.sigma of each group of images: its rows {idx, predict, sigma, radius}."""
    opts = job.opts
    inputs = ((x, [image_seed(job.seed, i) for i in g], None) for g, x in zip(groups, images))
    if opts.mode == "certify":
        results = smoothed.certify_groups(inputs, opts.n0, opts.n, opts.alpha, opts.batch_size)
    else:
        results = smoothed.predict_groups(inputs, opts.n, opts.alpha, opts.batch_size)
    for g, res in zip(groups, results):
        yield [{"idx": idx, "predict": int(res.prediction[j]), "sigma": float(res.sigma[j]),
                **({"radius": float(res.radius[j]), **res.sampling_fields(j)} if opts.mode == "certify" else {})}
               for j, idx in enumerate(g)]


def _worker(job: Job, indices: list[int], rank: int, world: int, tsv_path: str, counter, parent_pid: int) -> None:
    """Entry point of a spawned shard process (certify.world_size > 1)."""
    logging.basicConfig(level=logging.WARNING)
    loaded = load_checkpoint(job.ckpt_path, kinds=CKPT_KINDS)
    if loaded.sha256 != job.checkpoint_sha256:
        raise SystemExit(f"rank {rank}: {job.ckpt_path} changed while certifying; stopping")
    x_all, y_all, _ = load_data(job.data_cfg, job.opts.split)
    # the progress counts go to rank 0's bar
    run_shard(job, indices, rank, world, Path(tsv_path), x_all, y_all, loaded.network, loaded.num_classes,
              loaded.selector, on_image=_Progress(len(indices), False, counter).tick, parent_pid=parent_pid)


# ---- progress ------------------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar (images, images/s, ETA), fed by a counter that all shard processes increment."""

    def __init__(self, total: int, enabled: bool, counter=None):
        self.total, self.counter, self._done, self._stop = total, counter, 0, threading.Event()
        self.bar = None
        if not enabled or total == 0:
            return
        # deferred: only a shown bar needs rich.progress
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        # Rows arrive in bursts (one group of images at a time), so rates come from the whole elapsed time,
        # not from rich's short moving window.
        def rate(task) -> float | None:
            return task.completed / task.elapsed if task.completed and task.elapsed else None

        class Speed(ProgressColumn):
            def render(self, task):
                r = rate(task)
                return Text("? img/s" if r is None else f"{r:.3g} img/s")

        class Eta(ProgressColumn):
            def render(self, task):
                r = rate(task)
                if r is None:
                    return Text("ETA -:--:--")
                left = int(round((task.total - task.completed) / r))
                return Text(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")

        self.bar = Progress(TextColumn("certify"), BarColumn(), MofNCompleteColumn(), Speed(), TimeElapsedColumn(),
                            Eta(), transient=False)
        self.task = self.bar.add_task("certify", total=total)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
            if self.counter is not None:
                threading.Thread(target=self._poll, daemon=True).start()
        return self

    def _poll(self):
        while not self._stop.wait(0.5):
            self.bar.update(self.task, completed=self.counter.value)

    def tick(self):
        if self.counter is not None:
            with self.counter.get_lock():
                self.counter.value += 1
        self._done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.counter.value if self.counter is not None else self._done)

    def __exit__(self, *exc):
        self._stop.set()
        if self.bar is not None:
            if self.counter is not None:
                self.bar.update(self.task, completed=self.counter.value)
            self.bar.stop()


# ---- summary, plot, loggers ---------------------------------------------------------------------------
def summarize(rows: list[dict], job: Job, subset: dict, extra: dict) -> dict:
    opts = job.opts
    preds = np.array([r["predict"] for r in rows])
    correct = np.array([bool(r["correct"]) for r in rows])
    times = np.array([r["time"] for r in rows])
    summary: dict[str, Any] = {
        "mode": opts.mode,
        "num_images": len(rows),
        "clean_accuracy": float(correct.mean()) if len(rows) else None,  # of the smoothed classifier
        "abstain_rate": core.abstain_rate(preds) if len(rows) else None,
        # which argument makes the radius sound (a VRS / Dual RS / sigma-search run replaces it)
        "soundness": {"certificate": "cohen", "argument": ARGUMENTS["cohen"], "sound": True},
    }
    if opts.mode == "certify":
        radii = np.array([r["radius"] for r in rows])
        acc = core.certified_accuracy(radii, correct, opts.radius_grid)
        summary["certified_accuracy"] = {f"{r:g}": float(a) for r, a in zip(opts.radius_grid, acc)}
        summary["acr"] = core.average_certified_radius(radii, correct) if len(rows) else None
        # with looks, the last look's level
        last_alpha = float(sampling_plan(opts).alphas[-1]) if opts.sampling != "fixed" else opts.alpha
        summary["max_radius_possible"] = core.max_certified_radius(opts.n, last_alpha, job.sigma)
        summary.update(sampling_summary(rows, opts, job))
    summary.update({
        "metric_convention": "abstentions count as wrong; denominator = all evaluated images; radius >= r",
        "n0": opts.n0, "n": opts.n, "alpha": opts.alpha, "sigma": job.sigma, "seed": job.seed,
        "subset": subset,
        "checkpoint": {"path": job.ckpt_path, "sha256": job.checkpoint_sha256},
        "data": job.meta["data"],
        "seconds_per_image": float(times.mean()) if len(rows) else None,
        "seconds_per_image_note": "mean of the TSV time column: wall time of one process per image",
        "precision": opts.precision, "channels_last": opts.channels_last, "compile": opts.compile,
        "fused_blocks": opts.fused_blocks, "fused_stages": job.meta.get("fused_stages", 0),
        "fold_batchnorm": opts.fold_batchnorm,
        "batch_size": opts.batch_size, "images_per_group": opts.images_per_group,
        "world_size": extra.pop("world_size", opts.world_size),
        "torch": torch.__version__,
    })
    summary.update(extra)
    return summary


def sampling_summary(rows: list[dict], opts: CertifyConfig, job: Job) -> dict:
    """summary.json's sampling entries: the plan, the samples drawn per image (against fixed n0 + n), radius_target's
    decision counts per target radius, and the sound mode's slack."""
    fixed = (opts.n0 or 0) + opts.n
    samples = np.array([r.get("samples", fixed) for r in rows], dtype=np.float64)
    plan = sampling_plan(opts)
    out: dict[str, Any] = {
        "sampling": plan.to_dict() if plan else {"sampling": "fixed"},
        "mean_samples_per_image": float(samples.mean()) if len(rows) else None,
        "samples_per_image_fixed": fixed,
        "sample_reduction": float(fixed / samples.mean()) if len(rows) else None,
    }
    if plan is not None and plan.mode == "radius_target":
        cells = [dict(item.split("=") for item in r["decisions"].split(";")) for r in rows]
        out["decision_counts"] = {f"{r:g}": {d: sum(c[f"{r:g}"] == d for c in cells) for d in ("yes", "no", "budget")}
                                  for r in plan.radii}
    if opts.sound:
        d = int(np.prod(job.meta["input_shape"]))
        out["sound"] = {"lattice": f"1/{lattice.LEVELS}", "bits": lattice.BITS,
                        "slack": lattice.noise_slack(job.sigma, d),
                        "note": "integer lattice noise from fair coins (Voracek & Hein, ICLR 2023); pA_lower is "
                                "lowered by `slack`, the sampler's total variation from the ideal law"}
    return out


def plot_certified_accuracy(rows: list[dict], job: Job, path: Path) -> None:
    import matplotlib  # deferred: heavy, and only the end of a run plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = np.array([r["radius"] for r in rows])
    correct = np.array([bool(r["correct"]) for r in rows])
    top = max(float(radii.max(initial=0.0)), core.max_certified_radius(job.opts.n, job.opts.alpha, job.sigma), 0.1)
    grid = np.linspace(0.0, top * 1.02, 400)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(grid, core.certified_accuracy(radii, correct, grid), drawstyle="steps-post")
    ax.set_xlabel("L2 radius (pixel units, [0,1] images)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, grid[-1])
    ax.grid(alpha=0.3)
    what = (f"{job.meta['sigma_search']['name']} ({job.meta['certificate']})" if job.search
            else f"VRS {job.vrs['certificate']} lambda={job.vrs['lam']:g}" if job.vrs else f"sigma={job.sigma:g}")
    ax.set_title(f"{job.meta['data']} {job.opts.split}, {what}, n={job.opts.n}, "
                 f"alpha={job.opts.alpha:g} ({len(rows)} images)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# summary.json key -> logger metric cert/<name> (docs/wandb.md); certified accuracy is cert/acc@<r>. sigma (a
# fixed-sigma run) and lam (VRS) are there too, as x axes of dashboard plots.
CERT_METRICS = {"acr": "acr", "abstain_rate": "abstain", "clean_accuracy": "clean_acc", "num_images": "num_images",
                "seconds_per_image": "seconds_per_image", "max_radius_possible": "max_radius", "sigma": "sigma",
                "lam": "lam", "mean_sigma": "mean_sigma", "mean_radius_cohen_at_sigma0": "mean_radius_cohen"}


def metric_dict(summary: dict) -> dict[str, float]:
    """The summary as flat logger metrics in the cert/ namespace shared with the training callbacks:
    cert/acc@<r>, cert/acr, cert/abstain, cert/clean_acc, ... (PREDICT mode: no radii, no acr)."""
    out = {names.cert(name): summary[key] for key, name in CERT_METRICS.items()
           if isinstance(summary.get(key), (int, float)) and not isinstance(summary.get(key), bool)}
    out.update({names.cert_acc(float(r)): a for r, a in (summary.get("certified_accuracy") or {}).items()})
    return {k: float(v) for k, v in out.items()}


def run_facts(summary: dict) -> dict:
    """W&B tags of this run (vrs.utils.loggers.run_tags): data, method, and sigma or lambda."""
    if "sigma_search" in summary:
        return {"data": summary["data"], "method": summary["sigma_search"]["name"],
                "certificate": summary["certificate"]}
    if "certificate" in summary:
        method = "dual_rs" if summary["certificate"] == "dual_rs" else "vrs"
        return {"data": summary["data"], "method": method, "lam": summary["lam"], "certificate": summary["certificate"]}
    return {"data": summary["data"], "method": "cohen", "sigma": summary["sigma"],
            "mode": "predict" if summary["mode"] == "predict" else None}


# ---- the app ---------------------------------------------------------------------------------------------
def certify(cfg: DictConfig) -> dict:
    """Run CERTIFY / PREDICT as configured; returns the summary (rank 0) or {} (other torchrun ranks)."""
    check_values(cfg, "certify")  # every key, before anything is loaded
    opts = resolve_options(cfg.certify)
    seed = cfg.get("seed", 0)
    ranks = Ranks.start(opts.world_size)
    if ranks.dist is not None and opts.device.startswith("cuda") and ":" not in opts.device:
        opts.device = f"cuda:{ranks.local_rank % torch.cuda.device_count()}"

    loaded = load_checkpoint(cfg.ckpt_path, kinds=CKPT_KINDS)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    x_all, y_all, spec = load_data(data_cfg, opts.split)
    check_data_matches(loaded, spec, opts.allow_other_dataset)
    search_cfg = OmegaConf.to_container(cfg.sigma_search, resolve=True) if cfg.get("sigma_search") else None
    search = search_options(search_cfg)
    vrs_cfg = None if search else vrs_options(cfg.certify, loaded.kind, opts.sigma)  # None: Cohen's fixed-sigma path
    vopts = None
    if search is not None:
        sigma = search.sigma_max  # the largest sigma any image can get (bounds the possible radius)
    elif vrs_cfg is not None:
        if opts.mode != "certify":
            raise VRSError("certify=vrs_c1/vrs_c2 certifies (certify.mode=certify); PREDICT of a VRS model is "
                           "not part of vrs-certify")
        vopts = resolve_vrs_options(vrs_cfg, MedianSmoothing(**loaded.meta["median"]), loaded.meta["sigma_min"],
                                    loaded.meta["sigma_max"])
        sigma = vopts.sigma_max  # the largest sigma any image can get (bounds the possible radius)
    else:
        sigma = loaded.smoothing_sigma(opts.sigma, "certify.sigma")
    chosen = select_indices(len(y_all), opts.split, "certify", opts.skip, opts.max, opts.indices)
    subset = describe_subset(chosen, opts.split, len(y_all), opts.skip, opts.max, opts.indices)
    problem = core.sample_size_problem(opts.n, opts.alpha, opts.mode)
    if problem and ranks.main:
        log.warning(problem)
    problem = undetermined_problem(vopts) if vopts else None
    if problem and ranks.main:
        log.warning(problem)

    table = "search" if search else table_of(vopts) if vopts else opts.mode
    table = table_name(table, opts.sampling)
    meta = {"mode": table, "n0": opts.n0, "n": opts.n, "alpha": opts.alpha,
            "sigma": "search" if search else "selector" if vopts else sigma, "seed": seed,
            "checkpoint_sha256": loaded.sha256, "checkpoint": str(Path(cfg.ckpt_path).resolve()),
            "training": training_name(loaded.base_spec.get("training")),  # the base classifier's training method
            "data": spec["name"], "split": opts.split, "precision": opts.precision, "noise_block": opts.noise_block,
            "device_type": torch.device(opts.device).type, "columns": list(COLUMNS[table]),
            # the fused kernels compute another (bf16) network: rows with and without them are not mixed
            "fused_stages": fused_stage_count(loaded.network, opts.fused_blocks),
            "sampling": opts.sampling, "sound": opts.sound, "input_shape": list(x_all.shape[1:]),
            **({"looks": opts.looks, "radii": opts.radii, "radius_tol": opts.radius_tol}
               if opts.sampling != "fixed" else {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if vopts:
        meta.update(meta_keys(vopts))
    if search:
        meta.update({"sigma_search": search.to_dict(), "certificate": search.certificate})
    out_dir = Path(ranks.from_main(str(opts.out_dir or cfg.paths.output_dir)))  # every rank writes where rank 0 does
    results = ResultsDir(out_dir, meta)
    job = Job(opts, str(cfg.ckpt_path), loaded.sha256, data_cfg, seed, sigma, str(out_dir), meta,
              vopts.to_dict() if vopts else None, search_cfg)

    def same_labels(finished: dict) -> None:  # rows of another data set (same name) are not mixed in
        for idx, row in sorted(finished.items()):  # every row: the summary describes all of them
            now = int(y_all[idx]) if 0 <= idx < len(y_all) else None
            if row["label"] != now:
                what = (f"the data now says {now}" if now is not None
                        else f"the {opts.split} split has {len(y_all)} images")
                raise VRSError(f"{results.tsv} has label {row['label']} for image {idx}, {what}: the data set "
                               f"changed; use another certify.out_dir")

    done = open_store(ranks, results, same_labels)
    todo = [i for i in chosen if i not in done]
    if ranks.main:
        log.info("%s: %d images (%s), %d already in %s, %d to go; sigma=%g n0=%s n=%d alpha=%g on %s (%s)",
                 opts.mode, len(chosen), subset["rule"], len(chosen) - len(todo), out_dir, len(todo), sigma, opts.n0,
                 opts.n, opts.alpha, device_name(opts.device), opts.precision)
        if vopts:
            log.info("VRS certificate %s at lambda=%g: sigma per image from the median-smoothed selector "
                     "(sigma_h=%g, n_h0=%d, n_h=%d, alpha_h=%g, grid=%s); total failure probability alpha + "
                     "alpha_h = %g", vopts.certificate, vopts.lam, vopts.sigma_h, vopts.n_h0, vopts.n_h,
                     vopts.alpha_h, vopts.grid, opts.alpha + vopts.alpha_h)

    # spawned ranks share one progress counter with rank 0's bar
    spawned = ranks.dist is None and ranks.world > 1
    counter = multiprocessing.get_context("spawn").Value("q", 0) if spawned else None

    def work(mine: list[int], rank: int, tsv: Path) -> None:
        with _Progress(len(todo) if spawned else len(mine), opts.progress and rank == 0, counter) as bar:
            run_shard(job, mine, rank, ranks.world, tsv, x_all, y_all, loaded.network, loaded.num_classes,
                      loaded.selector, on_image=bar.tick)

    t0 = time.perf_counter()
    rows_by_idx = run_ranks(ranks, todo, results, work, _worker,
                            lambda r, mine: (job, mine, r, ranks.world, str(results.shard_path(r)), counter,
                                             os.getpid()), "vrs-certify")
    wall = time.perf_counter() - t0
    if not ranks.main:
        ranks.close()
        return {}

    # The summary and the plot describe every row of the store, not only this run's subset (issue 23: a resume
    # with fewer images rewrote them for those while certify.tsv held more).
    rows = [rows_by_idx[i] for i in sorted(rows_by_idx)]
    subset = store_subset(sorted(rows_by_idx), chosen, opts.split, len(y_all), results.tsv.name, opts.skip, opts.max,
                          opts.indices)
    extra = {"device": device_name(opts.device), "world_size": ranks.world, "images_this_run": len(todo),
             "wall_seconds_this_run": wall,
             "wall_seconds_per_image_this_run": wall / len(todo) if todo else None,
             "rows_in_file": len(rows_by_idx), "out_dir": str(out_dir)}
    summary = summarize(rows, job, subset, extra)
    if vopts:
        summary.update(summary_extras(rows, vopts, opts.alpha))
    if search:
        summary.update(search_summary(rows, search, opts.alpha))
    results.write_summary(summary)
    png = None
    if opts.mode == "certify":
        png = out_dir / "certified_accuracy.png"
        plot_certified_accuracy(rows, job, png)
    results.unlock()
    ranks.close()
    columns = COLUMNS[table]
    log_results(cfg, run_facts(summary), metric_dict(summary), {names.CERT_PLOT: png},
                (names.CERT_TABLE, columns, [[r[c] for c in columns] for r in rows]))
    return summary


def print_results(summary: dict, cfg: DictConfig) -> float | None:
    """The run's headline numbers; returns the sweep objective (ACR, or PREDICT's clean accuracy)."""
    print(f"Results in {summary['out_dir']}: certify.tsv, summary.json"
          + (", certified_accuracy.png" if summary["mode"] == "certify" else ""))
    print(f"  images = {summary['num_images']}  smoothed clean accuracy = {summary['clean_accuracy']:.4f}  "
          f"abstain rate = {summary['abstain_rate']:.4f}  s/image = {summary['seconds_per_image']:.3f} "
          f"({summary['device']})")
    if summary["mode"] == "certify":
        print(f"  ACR = {summary['acr']:.4f}  certified accuracy: "
              + "  ".join(f"r={r}: {a:.3f}" for r, a in summary["certified_accuracy"].items()))
    return summary.get("acr") if summary["mode"] == "certify" else summary.get("clean_accuracy")


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="certify")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    return run_app(cfg, "certify", certify, print_results, order=("ckpt_path", "data", "certify", "logger"))


if __name__ == "__main__":
    main()
