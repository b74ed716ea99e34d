"""The statistics of randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019), as small pure functions.

Names follow locuslab/smoothing's `core.py`. Everything here works on class counts that the sampling
engine (`vrs.smoothing.smoothed`) produced; nothing here draws noise.

- PREDICT(n, alpha): top-two counts n1 >= n2; return the top class only when a two-sided binomial test of
  n1 out of n1 + n2 at p = 1/2 has p-value <= alpha, else abstain. The probability of returning a class
  other than the smoothed classifier's g(x) is at most alpha.
- CERTIFY(n0, n, alpha): guess c_A from the n0 selection counts; with n_A the count of c_A among n fresh
  samples, pA_lower = one-sided (1 - alpha) Clopper-Pearson lower bound on P[f(x + sigma z) = c_A];
  abstain if pA_lower < 1/2, else certify c_A with L2 radius R = sigma * Phi^-1(pA_lower). With probability
  at least 1 - alpha, g(x + delta) = c_A for every ||delta||_2 < R.

Conventions for the metrics (docs/method.md section 1): an abstention is wrong; certified accuracy at r is the
fraction of ALL evaluated points that are correct with radius >= r (inclusive); the average certified
radius (ACR) is the mean of (radius if correct else 0) over all points.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1


class SampleSizeWarning(UserWarning):
    """n is too small for the requested alpha: every answer will be an abstention."""


# ---- confidence bounds and tests -------------------------------------------------------------------
def lower_confidence_bound(n_a, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from n_a successes in n.

    It is the alpha quantile of Beta(n_a, n - n_a + 1), and 0 when n_a = 0 (the same value as Cohen's
    `proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]`). Works on scalars and numpy arrays.
    """
    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n_a < 0) or np.any(n_a > n):
        raise ValueError(f"need 0 <= n_a <= n, got n_a={n_a}, n={n}")
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, np.maximum(n_a, 1.0), n - n_a + 1.0)
    bound = np.where(n_a == 0, 0.0, bound)
    return float(bound) if bound.ndim == 0 else bound


def binomial_pvalue(n1: int, n2: int) -> float:
    """Two-sided binomial test p-value of n1 successes out of n1 + n2 at p = 1/2 (`scipy.stats.binomtest`).

    Returns 1.0 when n1 + n2 = 0 (no evidence at all)."""
    n1, n2 = int(n1), int(n2)
    if n1 + n2 == 0:
        return 1.0
    return float(binomtest(n1, n1 + n2, p=0.5, alternative="two-sided").pvalue)


def top_two(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a (B, K) count matrix: (top class, its count, the runner-up's count).

    Ties are broken towards the lower class index (a stable sort), as numpy's argmax does."""
    counts = np.atleast_2d(np.asarray(counts))
    order = np.argsort(-counts, axis=1, kind="stable")
    rows = np.arange(counts.shape[0])
    top = order[:, 0]
    second = counts[rows, order[:, 1]] if counts.shape[1] > 1 else np.zeros(len(rows), dtype=counts.dtype)
    return top, counts[rows, top], second


def predict_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Cohen's PREDICT on (B, K) class counts: the top class, or ABSTAIN (-1) unless the two-sided
    binomial test of n1 vs n2 at p = 1/2 has p-value <= alpha."""
    top, n1, n2 = top_two(counts)
    pvalues = np.array([binomial_pvalue(a, b) for a, b in zip(n1, n2)])
    return np.where(pvalues <= alpha, top, ABSTAIN).astype(np.int64)


def radius_from_lower_bound(p_lower, sigma):
    """Certified L2 radius sigma * Phi^-1(pA_lower); 0 where pA_lower < 1/2 (abstain)."""
    p_lower = np.asarray(p_lower, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    radius = np.where(p_lower >= 0.5, sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    return float(radius) if radius.ndim == 0 else radius


def certify_from_counts(counts_selection: np.ndarray, counts_estimation: np.ndarray, alpha: float,
                        sigma, slack=0.0) -> dict[str, np.ndarray]:
    """Cohen's CERTIFY from (B, K) selection counts (n0 samples) and estimation counts (n fresh samples).

    Returns a dict of (B,) arrays: prediction (c_A or ABSTAIN), radius (0 on abstain), c_A (the guess),
    n_a (estimation count of c_A), p_lower (the Clopper-Pearson bound, less `slack`: what a sampler that only
    approximates the noise law gives up, vrs.smoothing.lattice; 0 for Cohen's)."""
    sel = np.atleast_2d(np.asarray(counts_selection))
    est = np.atleast_2d(np.asarray(counts_estimation))
    c_a = sel.argmax(axis=1)
    n = est.sum(axis=1)
    n_a = est[np.arange(len(c_a)), c_a]
    p_lower = np.maximum(np.atleast_1d(lower_confidence_bound(n_a, n, alpha)) - slack, 0.0)
    abstain = p_lower < 0.5
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), p_lower.shape)
    radius = np.where(abstain, 0.0, np.atleast_1d(radius_from_lower_bound(p_lower, sigma)))
    prediction = np.where(abstain, ABSTAIN, c_a).astype(np.int64)
    return {"prediction": prediction, "radius": radius, "c_a": c_a, "n_a": n_a, "p_lower": p_lower}


# ---- what n can achieve ----------------------------------------------------------------------------
def max_certified_radius(n: int, alpha: float, sigma: float = 1.0) -> float:
    """The largest radius CERTIFY can give with n samples (all n agree): sigma * Phi^-1(alpha^(1/n)),
    0 when even that abstains. n = 100,000 and alpha = 0.001 give 3.81 * sigma."""
    return float(radius_from_lower_bound(alpha ** (1.0 / n), sigma))


def min_samples_to_certify(alpha: float) -> int:
    """Smallest n for which CERTIFY can avoid abstaining: alpha^(1/n) >= 1/2."""
    n = max(1, math.ceil(math.log(alpha) / math.log(0.5)))
    while alpha ** (1.0 / n) < 0.5:  # guard the ceil against rounding
        n += 1
    while n > 1 and alpha ** (1.0 / (n - 1)) >= 0.5:
        n -= 1
    return n


def min_samples_to_predict(alpha: float) -> int:
    """Smallest n for which PREDICT can avoid abstaining: the two-sided p-value of n out of n, 2 * 2^-n,
    must be <= alpha."""
    n = 1
    while binomial_pvalue(n, 0) > alpha:
        n += 1
    return n


def sample_size_problem(n: int, alpha: float, mode: str = "certify") -> str | None:
    """A message when n samples can never give an answer at confidence 1 - alpha, else None."""
    need = min_samples_to_certify(alpha) if mode == "certify" else min_samples_to_predict(alpha)
    if n < need:
        return (f"n={n} samples can never reach alpha={alpha:g} in {mode} mode: every input will abstain "
                f"(need n >= {need})")
    return None


def warn_sample_size(n: int, alpha: float, mode: str = "certify") -> str | None:
    """Emit a SampleSizeWarning (and return its text) when n cannot reach alpha; see sample_size_problem."""
    msg = sample_size_problem(n, alpha, mode)
    if msg:
        warnings.warn(msg, SampleSizeWarning, stacklevel=2)
    return msg


# ---- metrics ----------------------------------------------------------------------------------------
def radius_grid(radii, key: str) -> list[float]:
    """The radii at which certified accuracy is reported (certify.radius_grid, report.radii), sorted: each a
    finite number >= 0 and none twice (ConfigError naming `key`: a repeat would be one table column or
    summary key twice); an unsorted grid is sorted, with a logged warning."""
    from vrs.errors import check  # deferred: this module stays free of the app layer

    ok = isinstance(radii, (list, tuple)) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0 for r in radii)
    check(ok, key, radii, "a list of finite radii >= 0")
    values = [float(r) for r in radii]
    repeats = sorted({r for r in values if values.count(r) > 1})
    check(not repeats, key, list(radii), f"radii without repeats ({', '.join(f'{r:g}' for r in repeats)} twice)")
    if values != sorted(values):
        import logging  # deferred: only a warning needs it

        logging.getLogger(__name__).warning("%s=%s is not sorted: using %s", key, list(radii), sorted(values))
    return sorted(values)


def certified_accuracy(radii: Sequence[float], correct: Sequence[bool], r_grid: Sequence[float]) -> np.ndarray:
    """Certified accuracy at each r in r_grid: mean over ALL points of [correct and radius >= r].

    Abstentions must come in as correct = False (their radius does not matter); the denominator is every
    evaluated point, never only the certified ones."""
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if radii.shape != correct.shape:
        raise ValueError(f"radii {radii.shape} and correct {correct.shape} differ in shape")
    if radii.size == 0:
        return np.full(len(r_grid), np.nan)
    r_grid = np.asarray(r_grid, dtype=np.float64)
    return (correct[None, :] & (radii[None, :] >= r_grid[:, None])).mean(axis=1)


def average_certified_radius(radii: Sequence[float], correct: Sequence[bool]) -> float:
    """ACR: mean over all points of (radius if correct else 0)."""
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    return float(np.where(correct, radii, 0.0).mean()) if radii.size else float("nan")


def abstain_rate(predictions: Sequence[int]) -> float:
    """Fraction of points where the smoothed classifier abstained (prediction == ABSTAIN)."""
    predictions = np.asarray(predictions)
    return float((predictions == ABSTAIN).mean()) if predictions.size else float("nan")
