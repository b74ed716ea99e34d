"""The VRS part of vrs-certify: sample-wise certification of a VRS selector checkpoint (docs/method.md section 6).

    vrs-certify ckpt_path=<vrs run>/checkpoints/last.ckpt                      # C1 at lambda = 0.5 (default)
    vrs-certify ckpt_path=... certify=vrs_c1 certify.lam=0.25
    vrs-certify -m ckpt_path=... certify=vrs_c1 certify.lam=0,0.25,0.5,0.75,1  # one run per lambda
    vrs-certify ckpt_path=... certify=vrs_c2                                   # continuous sigma (C2)
    vrs-certify ckpt_path=... certify=cohen certify.sigma=0.25                 # fixed-sigma baseline, same f
    vrs-certify ckpt_path=... certify=dual_rs                                  # vote smoothing (Dual RS)

The certification itself is vrs.selection.certify (shared with the training callback CertifiedRobustness):
per image, the selector's sigma0 and interval, Cohen's CERTIFY at sigma0, then C1 or C2. Rows add `sigma`
(sigma0), `sigma_lo` / `sigma_hi` (the selector's interval at the certified radius, at 0 when none),
`radius_cohen` (Cohen's radius at sigma0, what a fixed sigma0 would claim) and `cert`: c1 / c2 (certified),
abstain (Cohen abstains: pA_lower < 1/2) or sigma_undetermined (the interval does not pin sigma down even at x:
no certificate, counted as an abstention). A certificate holds with probability >= 1 - (alpha + alpha_h).

certify=dual_rs smooths the same selector by a majority vote over its grid cells instead of the median
(vrs.selection.vote): its sigma_h is Dual RS's sigma_e, n_h0 / n_h / alpha_h the estimator's Cohen settings. Its rows
(table `dual_rs`) add `radius_sigma` (the estimator's radius R_sigma), `p_sigma_lower` and `radius_cohen` (R_c); the
radius is min(R_sigma, R_c).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.errors import VRSError, check, check_choice
from vrs.selection.certificates import ARGUMENTS
from vrs.selection.certify import CERTIFICATES, SELECTOR_SMOOTHING, VRSOptions
from vrs.selection.lam import check_lambda
from vrs.selection.median import MedianSmoothing, check_grid

log = logging.getLogger(__name__)
TABLE = "vrs"  # the results table (columns) of VRS rows in certify_store.COLUMNS
DUAL_RS_TABLE = "dual_rs"  # ... and of Dual RS rows (certify=dual_rs)


def table_of(v: VRSOptions) -> str:
    """The results table of a certification of a selector checkpoint."""
    return DUAL_RS_TABLE if v.certificate == "dual_rs" else TABLE


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
        raise VRSError(f"certify.certificate={c['certificate']!r} (certify=vrs_c1/vrs_c2/dual_rs) needs a VRS "
                       "selector checkpoint (vrs-train experiment=vrs_<dataset>); this checkpoint is a base "
                       "classifier: use certify=cohen")
    check_choice("certify.certificate", c["certificate"], CERTIFICATES)
    check(sigma is None, "certify.sigma", sigma, f"null with certify=vrs_{c['certificate']} (the selector picks sigma)")
    check_lambda(c.get("lam"), "certify.lam")
    return c


def resolve_vrs_options(c: dict, median: MedianSmoothing, sigma_min: float, sigma_max: float) -> VRSOptions:
    """Fill null / 'checkpoint' values from the checkpoint's median-smoothing settings and validate them together
    (each key alone: vrs.config.certify.VRSCertifyConfig)."""
    def pick(key, default):
        v = c.get(key)
        return default if v is None else v

    grid = c["grid"]
    grid = median.grid if grid == "checkpoint" else grid
    if grid is not None:
        grid = check_grid(grid)
    if c["certificate"] in ("c1", "dual_rs") and not grid:
        what = "vrs_c1" if c["certificate"] == "c1" else "dual_rs"
        raise VRSError(f"certify={what} needs a sigma grid (locally constant sigma): this checkpoint has none; "
                       "pass certify.grid=[0.12,0.25,0.5,1.0] or use certify=vrs_c2")
    # MedianSmoothing validates the numbers (ConfigError names median.*; re-raised under certify.*)
    try:
        m = MedianSmoothing(sigma_h=pick("sigma_h", median.sigma_h), n_h0=pick("n_h0", median.n_h0),
                            n_h=pick("n_h", median.n_h), alpha_h=pick("alpha_h", median.alpha_h), grid=grid,
                            batch_size=pick("selector_batch_size", median.batch_size))
    except VRSError as err:
        raise VRSError(str(err).replace("median.", "certify.")) from None
    if c["certificate"] == "dual_rs" and m.sigma_h < max(grid):
        log.warning("certify=dual_rs: the estimator's noise sigma_e = certify.sigma_h = %g is below the largest grid "
                    "sigma %g, so R_sigma = sigma_e Phi^-1(pE_lower) may cap the radius (Dual RS uses sigma_e >= "
                    "max grid sigma; the certificate is sound either way)", m.sigma_h, max(grid))
    return VRSOptions(c["certificate"], float(c["lam"]), m.n_h0, m.n_h, float(m.alpha_h), float(m.sigma_h), m.grid,
                      m.batch_size, float(sigma_min), float(sigma_max), float(c["c2_tol"]))


def undetermined_problem(v: VRSOptions) -> str | None:
    """A message when certify.n_h estimation draws are too few to bound the selector's median at alpha_h, so
    every image comes out sigma_undetermined (C1: no grid cell's interval closes, even with every draw at the
    cell's own sigma) or with the vacuous interval [sigma_min, sigma_max] (C2); else None."""
    from vrs.selection.median import cell_radius, grid_cell, median_bounds  # deferred: scipy
    from vrs.smoothing.core import min_samples_to_certify  # deferred: scipy

    clip = (v.sigma_min, v.sigma_max)
    if v.certificate == "dual_rs":
        need = min_samples_to_certify(v.alpha_h)
        if v.n_h < need:
            return (f"certify.n_h={v.n_h} estimation draws cannot certify the vote-smoothed estimator at "
                    f"certify.alpha_h={v.alpha_h:g}: every image will be sigma_undetermined; use certify.n_h >= {need}")
        return None
    need = math.ceil(math.log2(2 / v.alpha_h))  # 0.5 ** n_h <= alpha_h / 2: one order statistic qualifies
    if v.certificate == "c1" and v.grid:
        best = max(cell_radius(np.full(v.n_h, g), v.grid, int(grid_cell(g, v.grid)), v.sigma_h, v.alpha_h, clip)
                   for g in v.grid)
        if best < 0:
            return (f"certify.n_h={v.n_h} estimation draws cannot bound the selector's median at "
                    f"certify.alpha_h={v.alpha_h:g}: every image will be sigma_undetermined (no certificate); "
                    f"use certify.n_h >= {need} (certify.n_h=null: the checkpoint's)")
        return None
    lo, hi = median_bounds(np.full(v.n_h, 0.5 * (clip[0] + clip[1])), 0.0, v.sigma_h, v.alpha_h, clip)
    if (lo, hi) == clip:
        return (f"certify.n_h={v.n_h} estimation draws cannot bound the selector's median at "
                f"certify.alpha_h={v.alpha_h:g}: every image's sigma interval is the whole range "
                f"[{clip[0]:g}, {clip[1]:g}], so most images will be sigma_undetermined; use certify.n_h >= {need}")
    return None


def meta_keys(v: VRSOptions) -> dict:
    """What VRS rows depend on (beyond Cohen's keys), for certify.meta.json (vrs.apps.certify_store.MATCH_KEYS)."""
    return {"certificate": v.certificate, "selector_smoothing": SELECTOR_SMOOTHING[v.certificate], "lam": v.lam,
            "n_h0": v.n_h0, "n_h": v.n_h, "alpha_h": v.alpha_h, "sigma_h": v.sigma_h, "grid": v.grid,
            "sigma_range": [v.sigma_min, v.sigma_max]}


def summary_extras(rows: list[dict], v: VRSOptions, alpha: float) -> dict:
    """VRS entries of summary.json: the alpha budget, the selector settings, sigma and certificate use, and the
    soundness argument of the radius."""
    sig = np.array([r["sigma"] for r in rows]) if rows else np.zeros(0)
    certs = [r["cert"] for r in rows]
    vote = v.certificate == "dual_rs"
    parts = ("Cohen's bound on pA at sigma0", "the vote-smoothed estimator's Cohen bound (alpha_e = alpha_h)" if vote
             else "the selector's median-smoothing interval")
    out = {
        "sigma": "per image (VRS selector)",
        "certificate": v.certificate,
        "selector_smoothing": SELECTOR_SMOOTHING[v.certificate],
        "soundness": {"certificate": v.certificate, "argument": ARGUMENTS[v.certificate], "sound": True},
        "lam": v.lam,
        "alpha_budget": {"alpha": alpha, "alpha_h": v.alpha_h, "alpha_total": alpha + v.alpha_h,
                         "note": f"each certificate fails with probability <= alpha ({parts[0]}) + alpha_h "
                                 f"({parts[1]})"},
        "selector": {"sigma_h": v.sigma_h, "n_h0": v.n_h0, "n_h": v.n_h, "grid": v.grid,
                     "sigma_range": [v.sigma_min, v.sigma_max]},
        "mean_sigma": float(sig.mean()) if len(sig) else None,
        "sigma_counts": {f"{s:g}": int(c) for s, c in zip(*np.unique(sig, return_counts=True))} if v.grid else None,
        "cert_counts": {k: certs.count(k) for k in (v.certificate, "abstain", "sigma_undetermined")},
        "mean_radius_cohen_at_sigma0": float(np.mean([r["radius_cohen"] for r in rows])) if rows else None,
    }
    if vote:
        out["mean_radius_sigma"] = float(np.mean([r["radius_sigma"] for r in rows])) if rows else None
        out["radius_capped_by_estimator"] = int(sum(r["cert"] == "dual_rs" and r["radius_sigma"] < r["radius_cohen"]
                                                    for r in rows))
    return out
