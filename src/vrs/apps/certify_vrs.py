"""The VRS part of vrs-certify: sample-wise certification of a VRS selector checkpoint (method.md section 6).

    vrs-certify ckpt_path=<vrs run>/checkpoints/last.ckpt                      # C1 at lambda = 0.5 (default)
    vrs-certify ckpt_path=... certify=vrs_c1 certify.lam=0.25
    vrs-certify -m ckpt_path=... certify=vrs_c1 certify.lam=0,0.25,0.5,0.75,1  # one run per lambda
    vrs-certify ckpt_path=... certify=vrs_c2                                   # continuous sigma (C2)
    vrs-certify ckpt_path=... certify=cohen certify.sigma=0.25                 # fixed-sigma baseline, same f

Per image i (all noise seeded by (seed, i) only, as in the Cohen path):
1. the smoothed selector: n_h0 selection draws h(x + eta_j, lambda) give sigma0 = snap(median) (the noise
   level the defence uses at x), n_h fresh estimation draws give the certified interval of the median;
2. Cohen's CERTIFY at sigma0 (n0, n, alpha) gives c_A and pA_lower;
3. C1: R = min(sigma0 Phi^-1(pA_lower), eps*), eps* the radius up to which the interval stays in sigma0's
   grid cell; C2: the largest eps whose worst case over the interval stays >= 1/2.
A certificate holds with probability >= 1 - (alpha + alpha_h). Rows add `sigma` (sigma0), `sigma_lo` /
`sigma_hi` (the selector's interval at the certified radius, at 0 when none), `radius_cohen` (Cohen's radius
at sigma0, what a fixed sigma0 would claim) and `cert`: c1 / c2 (certified), abstain (Cohen abstains:
pA_lower < 1/2) or sigma_undetermined (the interval does not pin sigma down even at x: no certificate,
counted as an abstention).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vrs.utils.device import shard_device
from vrs.apps import CONFIG_DIR
from vrs.apps.certify_store import row_fields, row_writer
from vrs.errors import VRSError, check, check_choice
from vrs.selection.certificates import c1_radius, c2_radius
from vrs.selection.lam import check_lambda
from vrs.selection.median import (MedianSmoothing, cell_radius, check_grid, empirical_median, grid_cell,
                                  median_bounds, selector_samples, snap)
from vrs.smoothing.smoothed import image_seed, stream_seed

log = logging.getLogger(__name__)
TABLE = "vrs"  # the results table (columns) of VRS rows in certify_store.COLUMNS
# Noise streams of the selector's draws (the base classifier's use 0, 1, 2).
SELECTOR_SELECTION, SELECTOR_ESTIMATION = 3, 4
CERTIFICATES = ("c1", "c2")


@dataclass
class VRSOptions:
    """certify.* keys of certify=vrs_c1 / vrs_c2, resolved against the checkpoint."""

    certificate: str
    lam: float
    n_h0: int
    n_h: int
    alpha_h: float
    sigma_h: float
    grid: list[float] | None
    selector_batch_size: int
    sigma_min: float
    sigma_max: float
    c2_tol: float = 1e-4

    def to_dict(self) -> dict:
        return asdict(self)


def vrs_options(cfg_certify: DictConfig, kind: str, sigma) -> dict | None:
    """VRS options for this run, or None for Cohen's path.

    certify=vrs_c1/vrs_c2 (a `certificate` key) needs a VRS checkpoint. A VRS checkpoint with the Cohen
    group and certify.sigma=null defaults to vrs_c1; with certify.sigma set it runs Cohen's fixed-sigma
    certification of the checkpoint's base classifier (the baseline with the same f).
    """
    c = OmegaConf.to_container(cfg_certify, resolve=True) if isinstance(cfg_certify, DictConfig) else dict(cfg_certify)
    if "certificate" not in c:
        if kind != "vrs" or sigma is not None:
            return None
        defaults = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "certify" / "vrs_c1.yaml"))
        defaults.pop("defaults", None)
        log.info("VRS checkpoint: certifying with certify=vrs_c1 defaults (lambda=%s); certify=cohen "
                 "certify.sigma=<value> certifies its base classifier at a fixed sigma instead", defaults["lam"])
        c = {**defaults, **c}
    if kind != "vrs":
        raise VRSError(f"certify.certificate={c['certificate']!r} (certify=vrs_c1/vrs_c2) needs a VRS selector "
                       "checkpoint (vrs-train experiment=vrs_<dataset>); this checkpoint is a base classifier: "
                       "use certify=cohen")
    check_choice("certify.certificate", c["certificate"], CERTIFICATES)
    check(sigma is None, "certify.sigma", sigma, f"null with certify=vrs_{c['certificate']} (the selector picks sigma)")
    check_lambda(c.get("lam"), "certify.lam")
    return c


def resolve_vrs_options(c: dict, median: MedianSmoothing, sigma_min: float, sigma_max: float) -> VRSOptions:
    """Fill null / 'checkpoint' values from the checkpoint's median-smoothing settings and validate."""
    def pick(key, default):
        v = c.get(key)
        return default if v is None else v

    grid = c.get("grid", "checkpoint")
    grid = median.grid if grid == "checkpoint" else grid
    if grid is not None:
        grid = check_grid(grid)
    if c["certificate"] == "c1" and not grid:
        raise VRSError("certify=vrs_c1 needs a sigma grid (locally constant sigma): this checkpoint has none; "
                       "pass certify.grid=[0.12,0.25,0.5,1.0] or use certify=vrs_c2")
    # MedianSmoothing validates the numbers (ConfigError names median.*; re-raised under certify.*)
    try:
        m = MedianSmoothing(sigma_h=pick("sigma_h", median.sigma_h), n_h0=pick("n_h0", median.n_h0),
                            n_h=pick("n_h", median.n_h), alpha_h=pick("alpha_h", median.alpha_h), grid=grid,
                            batch_size=pick("selector_batch_size", median.batch_size))
    except VRSError as err:
        raise VRSError(str(err).replace("median.", "certify.")) from None
    tol = c.get("c2_tol", 1e-4)
    check(isinstance(tol, (int, float)) and tol > 0, "certify.c2_tol", tol, "a number > 0")
    return VRSOptions(c["certificate"], float(c["lam"]), m.n_h0, m.n_h, float(m.alpha_h), float(m.sigma_h), m.grid,
                      m.batch_size, float(sigma_min), float(sigma_max), float(tol))


def meta_keys(v: VRSOptions) -> dict:
    """What VRS rows depend on (beyond Cohen's keys), for certify.meta.json (vrs.apps.certify_store.MATCH_KEYS)."""
    return {"certificate": v.certificate, "lam": v.lam, "n_h0": v.n_h0, "n_h": v.n_h, "alpha_h": v.alpha_h,
            "sigma_h": v.sigma_h, "grid": v.grid, "sigma_range": [v.sigma_min, v.sigma_max]}


def certify_one(certificate: str, p_lower: float, cohen_pred: int, cohen_radius: float, sigma0: float,
                est: np.ndarray, v: VRSOptions, d: int) -> dict:
    """The VRS certificate of one image from Cohen's result at sigma0 and the selector's estimation draws.

    Returns {"predict", "radius", "sigma_lo", "sigma_hi", "cert"} (predict -1 = abstain)."""
    clip = (v.sigma_min, v.sigma_max)
    radius = None
    if cohen_pred >= 0:
        if certificate == "c1":
            eps_star = cell_radius(est, v.grid, int(grid_cell(sigma0, v.grid)), v.sigma_h, v.alpha_h, clip)
            radius = c1_radius(p_lower, sigma0, eps_star)
        else:
            def interval(eps):
                lo, hi = median_bounds(est, eps, v.sigma_h, v.alpha_h, clip)
                return (snap(lo, v.grid), snap(hi, v.grid)) if v.grid else (lo, hi)
            radius = c2_radius(p_lower, sigma0, interval, d, tol=v.c2_tol)
    lo, hi = median_bounds(est, radius or 0.0, v.sigma_h, v.alpha_h, clip)
    if cohen_pred < 0:
        return {"predict": -1, "radius": 0.0, "sigma_lo": lo, "sigma_hi": hi, "cert": "abstain"}
    if radius is None:
        return {"predict": -1, "radius": 0.0, "sigma_lo": lo, "sigma_hi": hi, "cert": "sigma_undetermined"}
    return {"predict": cohen_pred, "radius": float(radius), "sigma_lo": lo, "sigma_hi": hi, "cert": certificate}


def run_shard_vrs(job, indices: list[int], rank: int, world: int, tsv_path: Path, x_all: torch.Tensor,
                  y_all: torch.Tensor, network: torch.nn.Module, num_classes: int, on_image=None,
                  parent_pid: int | None = None) -> int:
    """vrs-certify's run_shard for VRS checkpoints: one fsync'd row per finished image."""
    from vrs.selection.model import load_vrs

    opts, v = job.opts, VRSOptions(**job.vrs)
    device = shard_device(opts.device, rank, world)
    smoothed = opts.smoothed_classifier(network, num_classes, v.sigma_max, device)
    if not indices:
        return 0
    selector = load_vrs(job.ckpt_path, device=device).selector
    if opts.compile:
        smoothed.warmup(opts.batch_size, tuple(x_all.shape[1:]))
    d = int(np.prod(x_all.shape[1:]))
    groups = [indices[i : i + opts.images_per_group] for i in range(0, len(indices), opts.images_per_group)]
    pending: list[tuple[list[int], np.ndarray, list[np.ndarray], float]] = []

    def draws(x: torch.Tensor, key: int, stream: int, n: int) -> np.ndarray:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(stream_seed(key, stream))
        return selector_samples(selector, x, v.lam, n, v.sigma_h, v.selector_batch_size, gen)[0].cpu().numpy()

    def inputs():
        for g in groups:
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit(f"rank {rank}: the launching process is gone; stopping")
            t = time.perf_counter()
            x = x_all[g].float().div_(255.0).to(device)
            seeds = [image_seed(job.seed, i) for i in g]
            sigma0, est = [], []
            for j, key in enumerate(seeds):
                sel = draws(x[j : j + 1], key, SELECTOR_SELECTION, v.n_h0)
                sigma0.append(float(snap(float(empirical_median(torch.from_numpy(sel))), v.grid)))
                est.append(draws(x[j : j + 1], key, SELECTOR_ESTIMATION, v.n_h))
            pending.append((g, np.asarray(sigma0), est, time.perf_counter() - t))
            yield x, seeds, np.asarray(sigma0)

    results = smoothed.certify_groups(inputs(), opts.n0, opts.n, opts.alpha, opts.batch_size)
    done = 0
    with row_writer(tsv_path, TABLE) as out:
        t_prev = time.perf_counter()
        for res in results:
            g, sigma0, est, _ = pending.pop(0)
            rows = [certify_one(v.certificate, float(res.p_lower[j]), int(res.prediction[j]), float(res.radius[j]),
                                float(sigma0[j]), est[j], v, d) for j in range(len(g))]
            now = time.perf_counter()
            per_image = (now - t_prev) / len(g)
            t_prev = now
            for j, idx in enumerate(g):
                label, r = int(y_all[idx]), rows[j]
                out.write([row_fields(TABLE, {
                    "idx": idx, "label": label, "predict": r["predict"], "radius": r["radius"],
                    "correct": int(r["predict"] == label), "time": per_image, "sigma": float(sigma0[j]),
                    "sigma_lo": r["sigma_lo"], "sigma_hi": r["sigma_hi"], "radius_cohen": float(res.radius[j]),
                    "cert": r["cert"]})])
                done += 1
                if on_image is not None:
                    on_image()
    return done


def job_columns() -> tuple[str, ...]:
    from vrs.apps.certify_store import COLUMNS

    return COLUMNS[TABLE]


def summary_extras(rows: list[dict], v: VRSOptions, alpha: float) -> dict:
    """VRS entries of summary.json: the alpha budget, the selector settings, sigma and certificate use."""
    sig = np.array([r["sigma"] for r in rows]) if rows else np.zeros(0)
    certs = [r["cert"] for r in rows]
    return {
        "sigma": "per image (VRS selector)",
        "certificate": v.certificate,
        "lam": v.lam,
        "alpha_budget": {"alpha": alpha, "alpha_h": v.alpha_h, "alpha_total": alpha + v.alpha_h,
                         "note": "each certificate fails with probability <= alpha (Cohen's bound on pA at sigma0) "
                                 "+ alpha_h (the selector's median-smoothing interval)"},
        "selector": {"sigma_h": v.sigma_h, "n_h0": v.n_h0, "n_h": v.n_h, "grid": v.grid,
                     "sigma_range": [v.sigma_min, v.sigma_max]},
        "mean_sigma": float(sig.mean()) if len(sig) else None,
        "sigma_counts": {f"{s:g}": int(c) for s, c in zip(*np.unique(sig, return_counts=True))} if v.grid else None,
        "cert_counts": {k: certs.count(k) for k in (v.certificate, "abstain", "sigma_undetermined")},
        "mean_radius_cohen_at_sigma0": float(np.mean([r["radius_cohen"] for r in rows])) if rows else None,
    }
