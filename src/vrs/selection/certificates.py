"""Certificates for a sample-wise smoothed classifier (docs/method.md section 6).

With a per-input sigma the classifier at x + delta may smooth with a different noise level than at x, so
Cohen's radius alone is not sound. Both certificates below take the Cohen lower bound pA_lower, measured
at the noise level sigma0 used at x, and the smoothed selector's interval (`vrs.selection.median`).

C1, locally constant sigma: sigma is snapped to a grid; while the interval at radius eps stays in
sigma0's grid cell, the classifier at every x + delta (||delta|| <= eps) smooths with sigma0, so Cohen's
certificate at sigma0 holds there: R = min(sigma0 * Phi^-1(pA_lower), eps*).

C2, continuous sigma (Sukenik et al., "Intriguing Properties of Input-Dependent Randomized Smoothing",
ICML 2022): for sigma1 != sigma0 the worst-case decision region (Neyman-Pearson) is a ball or the
complement of one, and its probabilities are non-central chi-square with d degrees of freedom
(`c2_region`, `c2_worst_case_prob`). eps is certified when the worst case stays >= 1/2 for every sigma1 in
the selector's interval at eps.

Failure probabilities add: alpha_total = alpha (Cohen's bound) + alpha_h (the selector's interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import ncx2, norm

from vrs.smoothing.core import radius_from_lower_bound  # Cohen's radius sigma0 * Phi^-1(pA_lower)

# The soundness argument of each certificate the engine writes (certify.tsv `cert`, summary.json `soundness`,
# vrs-report); docs/vrs.md "Which certificate, which argument" states each one's assumptions.
ARGUMENTS = {
    "cohen": "Cohen et al. 2019: one fixed sigma; Neyman-Pearson, R = sigma Phi^-1(pA_lower); failure alpha",
    "c1": "VRS C1: sigma locally constant (median-smoothed selector stays in its grid cell, Chiang et al. 2020) + "
          "Cohen at that sigma; R = min(sigma0 Phi^-1(pA_lower), eps*); failure alpha + alpha_h",
    "c2": "VRS C2: worst case over the selector's sigma interval (Sukenik et al. 2022, non-central chi-square); "
          "failure alpha + alpha_h",
    "dual_rs": "Dual RS (Sun, Mao & Vechev 2026): vote-smoothed estimator constant on B(x, R_sigma) (Cohen at "
               "sigma_e) + Cohen at the chosen sigma; R = min(R_sigma, R_c); failure alpha + alpha_e (union bound)",
    "multiscale": "Multiscale cascade (Jeong & Shin 2023): each level a fixed-sigma smoothed classifier whose "
                  "Phi^-1(p) is 1/sigma-Lipschitz (Salman et al. 2019); the stopping level keeps its class above p0 "
                  "and no higher level's other class reaches p0; R = min over those levels; failure alpha, split by "
                  "a union bound over every level's bounds",
    "empirical": "none: an empirical defence only (no certified radius; `radius_unsound` is the published, "
                 "unsound Cohen radius at the input's own optimised sigma)",
}

# Below this relative gap |sigma1 - sigma0| / sigma0 the chi-square parameters overflow double precision.
_C2_MIN_REL_GAP = 1e-5


# ---- C1 --------------------------------------------------------------------------------------
def c1_radius(p_a_lower: float, sigma0: float, eps_star: float) -> float | None:
    """C1's certified radius min(sigma0 * Phi^-1(pA_lower), eps*), or None (abstain) when
    pA_lower < 1/2 or the selector's interval is not inside sigma0's grid cell even at eps = 0
    (eps* < 0)."""
    if p_a_lower < 0.5 or eps_star < 0:
        return None
    return float(min(radius_from_lower_bound(p_a_lower, sigma0), eps_star))


# ---- C2 --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorstCaseRegion:
    """The Neyman-Pearson worst-case set A with P0(A) = pA for P0 = N(x, sigma0^2 I),
    P1 = N(x + delta, sigma1^2 I): {u : ||u - x - a * delta|| >= t} ('outside', sigma1 < sigma0) or
    {u : ||u - x - a * delta|| <= t} ('inside', sigma1 > sigma0), a = sigma0^2 / (sigma0^2 - sigma1^2);
    lam0 / lam1: the non-centralities of ||u - c||^2 / sigma^2 under P0 / P1."""

    kind: str
    a: float
    t: float
    lam0: float
    lam1: float
    prob1: float


def c2_region(p_a: float, sigma0: float, sigma1: float, delta_norm: float, d: int) -> WorstCaseRegion:
    """The worst-case region and its probability P1(A) under the shifted, rescaled noise (sigma1 != sigma0)."""
    if sigma1 == sigma0:
        raise ValueError("c2_region needs sigma1 != sigma0 (equal sigmas: Cohen's half-space)")
    gap = sigma0**2 - sigma1**2
    lam0 = delta_norm**2 * sigma0**2 / gap**2
    lam1 = delta_norm**2 * sigma1**2 / gap**2
    a = sigma0**2 / gap
    if sigma1 < sigma0:  # P0[||u - c||^2 / sigma0^2 >= t^2 / sigma0^2] = pA
        t2 = ncx2.isf(p_a, d, lam0) * sigma0**2
        prob1, kind = ncx2.sf(t2 / sigma1**2, d, lam1), "outside"
    else:  # P0[||u - c||^2 / sigma0^2 <= t^2 / sigma0^2] = pA
        t2 = ncx2.ppf(p_a, d, lam0) * sigma0**2
        prob1, kind = ncx2.cdf(t2 / sigma1**2, d, lam1), "inside"
    return WorstCaseRegion(kind, a, math.sqrt(t2), lam0, lam1, float(prob1))


def c2_worst_case_prob(p_a: float, sigma0: float, sigma1: float, delta_norm: float, d: int) -> float:
    """min over classifiers with P[f(x + sigma0 z) = c] >= p_a of P[f(x + delta + sigma1 z) = c].

    sigma1 = sigma0 gives Cohen's Phi(Phi^-1(p_a) - ||delta|| / sigma0). Within a relative gap of 1e-5 of
    sigma0, where the chi-square parameters overflow, the value at the gap's edge (sigma1 > sigma0) or
    Cohen's (sigma1 < sigma0) is used: the worst case decreases in sigma1 across sigma0 (checked in the tests).
    """
    if sigma1 == sigma0:
        return float(norm.cdf(norm.ppf(p_a) - delta_norm / sigma0))
    rel = (sigma1 - sigma0) / sigma0
    if abs(rel) < _C2_MIN_REL_GAP:
        if rel < 0:
            return c2_worst_case_prob(p_a, sigma0, sigma0, delta_norm, d)
        sigma1 = sigma0 * (1 + _C2_MIN_REL_GAP)
    prob = c2_region(p_a, sigma0, sigma1, delta_norm, d).prob1
    return 0.0 if not np.isfinite(prob) else prob


def c2_min_prob(p_a: float, sigma0: float, lo: float, hi: float, delta_norm: float, d: int,
                n_interior: int = 8) -> float:
    """The worst case over sigma1 in [lo, hi]: both ends, sigma0 if inside, and `n_interior` log-spaced
    points (the worst case is unimodal in sigma1, so its minimum over an interval is at an end)."""
    sig = {lo, hi}
    if hi > lo:
        sig.update(np.exp(np.linspace(math.log(lo), math.log(hi), n_interior + 2)[1:-1]).tolist())
    if lo <= sigma0 <= hi:
        sig.add(sigma0)
    return min(c2_worst_case_prob(p_a, sigma0, s1, delta_norm, d) for s1 in sig)


def c2_radius(p_a_lower: float, sigma0: float, interval: Callable[[float], tuple[float, float]], d: int,
              tol: float = 1e-4) -> float | None:
    """C2's certified radius: the largest eps (to `tol`) with c2_min_prob(eps) >= 1/2 over the selector's
    interval(eps) = (lo, hi); None (abstain) when pA_lower < 1/2 or even eps = 0 fails.

    The condition is monotone in eps (the interval grows, the worst case falls with ||delta||), so it is
    found by bisection below Cohen's radius at sigma0, which bounds it whenever sigma0 is in the interval.
    """
    if p_a_lower < 0.5:
        return None

    def ok(eps: float) -> bool:
        lo, hi = interval(eps)
        return c2_min_prob(p_a_lower, sigma0, lo, hi, eps, d) >= 0.5 - 1e-12

    if not ok(0.0):
        return None
    a, b = 0.0, radius_from_lower_bound(p_a_lower, sigma0)
    if ok(b):
        lo, hi = interval(b)
        if lo <= sigma0 <= hi:  # sigma1 = sigma0 is in the interval: Cohen's radius is the most
            return float(b)
        a, b = b, max(2 * b, tol)  # sigma0 outside the interval: grow the bracket
        while ok(b):
            a, b = b, 2 * b
            if b > 1e6:
                return float(a)
    while b - a > tol:
        mid = 0.5 * (a + b)
        if ok(mid):
            a = mid
        else:
            b = mid
    return float(a)
