"""Vote smoothing of a trained selector and the Dual RS certificate (Sun, Mao & Vechev, "Dual Randomized
Smoothing: Beyond Global Noise Variance", ICLR 2026): `certify.certificate=dual_rs` (conf/certify/dual_rs.yaml).

The selector h(x) -> sigma, snapped to the grid Sigma = {sigma_1 < ... < sigma_G}, is a classifier over the G grid
cells. Vote smoothing makes it an ordinary smoothed classifier (Cohen et al. 2019) at its own noise level sigma_e:

    g_e(x) = argmax_i P_{eta ~ N(0, sigma_e^2 I)}[ snap(h(x + eta)) = sigma_i ]          (the variance estimator)
    g_c(x) = argmax_y P_{z ~ N(0, I)}[ f(x + g_e(x) z) = y ]                            (the classifier at g_e(x))

Certificate (Dual RS, Theorems 4.1 / 4.2): Cohen's CERTIFY of g_e (n_e0 selection draws pick the cell, n_e
estimation draws bound its probability, failure alpha_e) gives R_sigma = sigma_e Phi^-1(pE_lower): g_e is constant
on the ball B(x, R_sigma). Cohen's CERTIFY of the classifier at sigma0 = g_e(x) (n0, n, alpha) gives
R_c = sigma0 Phi^-1(pA_lower). Inside B(x, min(R_sigma, R_c)) every input is smoothed at sigma0 and the classifier
at sigma0 keeps its class, so

    R = min(R_sigma, R_c),     valid with probability >= 1 - (alpha + alpha_e)           (union bound)

The two bounds need no independence: each fails with its own probability and the union bound adds them. The
radius of each part is Cohen's (Neyman-Pearson for a fixed noise level), so nothing about the input-dependence
of sigma enters except through "g_e is constant on the ball". Dual RS sets sigma_e >= max Sigma so that R_sigma
does not cap R (sigma_e here is the selector's `sigma_h`, the noise it was trained under; the preset trains it
at max Sigma).

The median-smoothed selector of VRS (vrs.selection.median, certificates C1 / C2) is the other choice of selector
smoothing for the same trained selector; this file is only the vote.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from vrs.selection.certify import SELECTOR_ESTIMATION, SELECTOR_SELECTION, image_streams
from vrs.selection.median import grid_cell, selector_samples
from vrs.smoothing import core
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed


def vote_counts(samples, grid: Sequence[float]) -> np.ndarray:
    """(B, G) counts of the grid cells that the (B, n) selector draws snap to (`median.grid_cell`)."""
    samples = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    samples = np.atleast_2d(samples)
    cells = grid_cell(samples, list(grid))
    counts = np.zeros((samples.shape[0], len(grid)), dtype=np.int64)
    for i in range(len(grid)):
        counts[:, i] = (cells == i).sum(axis=1)
    return counts


def dual_rs_radius(radius_sigma, radius_c):
    """R = min(R_sigma, R_c) (Dual RS, Theorem 4.2); 0 where either part abstains (radius 0)."""
    return np.minimum(np.asarray(radius_sigma, dtype=np.float64), np.asarray(radius_c, dtype=np.float64))


def certify_estimator(counts_selection: np.ndarray, counts_estimation: np.ndarray, alpha_e: float,
                      sigma_e: float) -> dict[str, np.ndarray]:
    """Cohen's CERTIFY of the vote-smoothed estimator g_e from (B, G) cell counts: `core.certify_from_counts`
    with the grid cells as classes. Returns c_a (the cell), p_lower and radius (R_sigma; 0 on abstain)."""
    return core.certify_from_counts(counts_selection, counts_estimation, alpha_e, sigma_e)


@torch.no_grad()
def estimator_draws(selector, x: torch.Tensor, keys: Sequence[int], v) -> dict[str, np.ndarray]:
    """Vote smoothing of the selector on images x with seeds `keys` (v: VRSOptions with certificate dual_rs: its
    sigma_h is sigma_e, n_h0 / n_h the selection / estimation draws, alpha_h is alpha_e). Returns (B,) arrays:
    sigma (the grid sigma of the guessed cell: the deployed sigma), radius_sigma, p_lower (of that cell)."""
    sel = selector_samples(selector, x, v.lam, v.n_h0, v.sigma_h, v.selector_batch_size,
                           image_streams(keys, SELECTOR_SELECTION, x.device))
    est = selector_samples(selector, x, v.lam, v.n_h, v.sigma_h, v.selector_batch_size,
                           image_streams(keys, SELECTOR_ESTIMATION, x.device))
    stats = certify_estimator(vote_counts(sel, v.grid), vote_counts(est, v.grid), v.alpha_h, v.sigma_h)
    return {"sigma": np.asarray(v.grid, dtype=np.float64)[stats["c_a"]], "radius_sigma": stats["radius"],
            "p_lower": stats["p_lower"]}


@torch.no_grad()
def vote_sigma(selector, x: torch.Tensor, lam, sigma_e: float, n: int, grid: Sequence[float], batch_size: int = 1000,
               generator=None) -> torch.Tensor:
    """(B,) the deployed Dual RS noise level: the grid sigma with the most of n votes snap(h(x + eta_j)),
    eta_j ~ N(0, sigma_e^2 I) (ties: the smaller sigma). generator: None, one, or one per image (`selector_samples`)."""
    counts = vote_counts(selector_samples(selector, x, lam, n, sigma_e, batch_size, generator), grid)
    return torch.as_tensor(np.asarray(grid, dtype=np.float64)[counts.argmax(axis=1)], device=x.device)


def certify_one(cohen_pred: int, radius_c: float, radius_sigma: float) -> dict:
    """The Dual RS row of one image: {"predict", "radius", "cert"}; cert is dual_rs (certified), abstain (the
    classifier at sigma0 abstains) or sigma_undetermined (the estimator abstains: no certificate, counted as an
    abstention)."""
    if cohen_pred < 0:
        return {"predict": -1, "radius": 0.0, "cert": "abstain"}
    if radius_sigma <= 0:
        return {"predict": -1, "radius": 0.0, "cert": "sigma_undetermined"}
    return {"predict": int(cohen_pred), "radius": float(dual_rs_radius(radius_sigma, radius_c)), "cert": "dual_rs"}


def certify_dual_rs_groups(smoothed: SmoothedClassifier, selector, groups: Iterable[tuple[torch.Tensor, Sequence[int]]],
                           seed: int, v, n0: int, n: int, alpha: float, batch_size: int) -> Iterator[list[dict]]:
    """Certify groups of images (x in [0,1] on the selector's device, their indices in the split) with the Dual RS
    certificate, yielding per group one row per image: {"idx", "predict", "radius", "sigma", "radius_sigma",
    "p_sigma_lower", "radius_cohen", "cert"}. Seeding as `vrs.selection.certify.certify_vrs_groups`."""
    pending: list[tuple[list[int], dict]] = []

    def inputs():
        for x, indices in groups:
            keys = [image_seed(seed, i) for i in indices]
            draws = estimator_draws(selector, x, keys, v)
            pending.append((list(indices), draws))
            yield x, keys, draws["sigma"]

    for res in smoothed.certify_groups(inputs(), n0, n, alpha, batch_size):
        indices, draws = pending.pop(0)
        rows = []
        for j, idx in enumerate(indices):
            r = certify_one(int(res.prediction[j]), float(res.radius[j]), float(draws["radius_sigma"][j]))
            rows.append({"idx": int(idx), **r, "sigma": float(draws["sigma"][j]),
                         "radius_sigma": float(draws["radius_sigma"][j]), "p_sigma_lower": float(draws["p_lower"][j]),
                         "radius_cohen": float(res.radius[j]), **res.sampling_fields(j)})
        yield rows
