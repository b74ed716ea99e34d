"""Certifying images with a VRS selector (docs/method.md section 6): what `vrs-certify` and the training callback
`CertifiedRobustness` both run, so the numbers training logs are the numbers vrs-certify gives.

Per image (all noise seeded by (seed, idx) only, idx the image's index in its split):
1. the smoothed selector: n_h0 selection draws (stream SELECTOR_SELECTION) give sigma0, the deployed sigma
   at x (`vrs.selection.median.deployed_sigma`); n_h fresh estimation draws (stream SELECTOR_ESTIMATION)
   bound its median;
2. Cohen's CERTIFY at sigma0 (n0, n, alpha; the engine's streams 0 and 1) gives c_A and pA_lower;
3. C1: R = min(sigma0 Phi^-1(pA_lower), eps*), eps* the radius up to which the interval stays in sigma0's
   grid cell; C2: the largest eps whose worst case over the interval stays >= 1/2.
A certificate holds with probability >= 1 - (alpha + alpha_h).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from vrs.selection.certificates import c1_radius, c2_radius
from vrs.selection.median import (MedianSmoothing, cell_radius, deployed_sigma, grid_cell, median_bounds,
                                  selector_samples, snap)
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed, stream_seed

# Noise streams of the selector's draws (the base classifier's use 0, 1, 2: vrs.smoothing.smoothed).
SELECTOR_SELECTION, SELECTOR_ESTIMATION = 3, 4
CERTIFICATES = ("c1", "c2", "dual_rs")  # dual_rs: vote smoothing (vrs.selection.vote)
# how each certificate smooths the selector (the `selector_smoothing` of summary.json and vrs-attack)
SELECTOR_SMOOTHING = {"c1": "median", "c2": "median", "dual_rs": "vote"}


@dataclass
class VRSOptions:
    """The settings of a VRS certification (vrs-certify's certify=vrs_c1 / vrs_c2 keys, resolved against
    the checkpoint)."""

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

    @property
    def median(self) -> MedianSmoothing:
        """The median-smoothing settings these options certify with."""
        return MedianSmoothing(sigma_h=self.sigma_h, n_h0=self.n_h0, n_h=self.n_h, alpha_h=self.alpha_h,
                               grid=self.grid, batch_size=self.selector_batch_size)


def certify_one(certificate: str, p_lower: float, cohen_pred: int, sigma0: float, est: np.ndarray, v: VRSOptions,
                d: int) -> dict:
    """The VRS certificate of one image from Cohen's result at sigma0 and the selector's estimation draws.

    Returns {"predict", "radius", "sigma_lo", "sigma_hi", "cert"} (predict -1 = abstain): cert is c1 / c2
    (certified), abstain (Cohen abstains: pA_lower < 1/2) or sigma_undetermined (the selector's interval
    does not pin sigma down even at x: no certificate, counted as an abstention)."""
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


def image_streams(keys: Sequence[int], stream: int, device: torch.device) -> list[torch.Generator]:
    """One generator per image, seeded stream_seed(key, stream) from the image's seed `key`."""
    gens = []
    for key in keys:
        g = torch.Generator(device=device)
        g.manual_seed(stream_seed(key, stream))
        gens.append(g)
    return gens


@torch.no_grad()
def selector_draws(selector, x: torch.Tensor, keys: Sequence[int], v: VRSOptions) -> tuple[np.ndarray, np.ndarray]:
    """(sigma0 (B,) float64, estimation draws (B, n_h)) of images x with seeds `keys`: sigma0 is the deployed
    sigma from n_h0 selection draws, the n_h estimation draws (independent of them) bound its median."""
    sigma0 = deployed_sigma(selector, x, v.lam, v.median, v.n_h0, image_streams(keys, SELECTOR_SELECTION, x.device))
    est = selector_samples(selector, x, v.lam, v.n_h, v.sigma_h, v.selector_batch_size,
                           image_streams(keys, SELECTOR_ESTIMATION, x.device))
    return sigma0.cpu().numpy(), est.cpu().numpy()


def certify_vrs_groups(smoothed: SmoothedClassifier, selector, groups: Iterable[tuple[torch.Tensor, Sequence[int]]],
                       seed: int, v: VRSOptions, n0: int, n: int, alpha: float,
                       batch_size: int) -> Iterator[list[dict]]:
    """Certify groups of images (x in [0,1] on the selector's device, their indices in the split), yielding
    per group one row per image: {"idx", "predict", "radius", "sigma", "sigma_lo", "sigma_hi",
    "radius_cohen", "cert"}. Image idx is seeded by image_seed(seed, idx) only, so its row depends neither on
    the grouping nor on the other images. The groups are read lazily: the selector draws of group i + 1 run
    while the device certifies group i (SmoothedClassifier.certify_groups)."""
    pending: list[tuple[list[int], np.ndarray, np.ndarray, int]] = []

    def inputs():
        for x, indices in groups:
            keys = [image_seed(seed, i) for i in indices]
            sigma0, est = selector_draws(selector, x, keys, v)
            pending.append((list(indices), sigma0, est, int(np.prod(x.shape[1:]))))
            yield x, keys, sigma0

    for res in smoothed.certify_groups(inputs(), n0, n, alpha, batch_size):
        indices, sigma0, est, d = pending.pop(0)
        rows = []
        for j, idx in enumerate(indices):
            r = certify_one(v.certificate, float(res.p_lower[j]), int(res.prediction[j]), float(sigma0[j]), est[j],
                            v, d)
            rows.append({"idx": int(idx), "predict": r["predict"], "radius": r["radius"], "sigma": float(sigma0[j]),
                         "sigma_lo": r["sigma_lo"], "sigma_hi": r["sigma_hi"], "radius_cohen": float(res.radius[j]),
                         "cert": r["cert"], **res.sampling_fields(j)})
        yield rows
