"""Oracle headroom: the grid sigma that would have been best for each image (issue 17 section 1).

On one base classifier, with the results of every grid sigma on the same images, the oracle picks per image
the sigma that serves it best. **It uses the label, so it is a diagnostic, never a certificate and never a
defence**: its accuracy bounds what any selector over this grid can reach on this base classifier, had it
known the label. If even the oracle cannot beat the fixed-sigma frontier at matched clean accuracy
(`frontier.frontier_gap` on its per-image outcomes), no selector will, and the base classifier must change
before selectors are tuned. For robustness the bound is also optimistic in a second way: each sigma's
outcome comes from an attack on that fixed-sigma defence, not on a defence that switches sigma with x.

Arrays are (S, n): one row per grid sigma, one column per image, the images in the same order in every row
(`outcomes.align_images`).

Rules (ties go to the smallest sigma, the least noise: it keeps the most clean accuracy):
- certified: among the sigmas where the image is certified correct, the one with the largest radius,
      s*(x) = argmax_{s : correct_s(x)} R_s(x);
  none correct: no oracle sigma (index -1, sigma NaN), radius 0, wrong.
  So oracle ACR = mean_x max_s R_s(x) 1[correct_s(x)], and oracle certified accuracy at r =
  mean_x 1[exists s: correct_s(x) and R_s(x) >= r]; oracle clean accuracy = mean_x 1[exists s: correct_s(x)].
- robust: the sigma with the best (robust, clean) pair in the order (1, 1) > (1, 0) > (0, 1) > (0, 0), i.e.
  robust under the attack first, clean-correct as well if possible; (0, 0) everywhere: no oracle sigma.
  Oracle robust accuracy = mean_x 1[exists s: robust_s(x)].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NO_SIGMA = -1


def _grid_and_rows(sigmas, *rows):
    sig = np.asarray(sigmas, dtype=np.float64).ravel()
    if sig.size == 0 or np.any(np.diff(sig) <= 0):
        raise ValueError(f"sigmas must be a non-empty strictly increasing grid, got {sig.tolist()}")
    out = []
    for r in rows:
        a = np.asarray(r, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != sig.size:
            raise ValueError(f"per-sigma results must be (S={sig.size}, n), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("per-sigma results hold NaN or inf")
        out.append(a)
    if len({a.shape for a in out}) != 1:
        raise ValueError(f"per-sigma results disagree in shape: {[a.shape for a in out]}")
    return sig, out


def _pick(score: np.ndarray) -> np.ndarray:
    """Row index of the largest score per column; ties to the first row (the smallest sigma)."""
    return np.argmax(score, axis=0)  # numpy's argmax returns the first maximum


@dataclass(frozen=True)
class CertifiedOracle:
    """Per-image oracle choice for certification: grid index (-1: none), sigma (NaN: none), whether the image
    is certified correct at it, and its radius there (0 when none)."""

    index: np.ndarray
    sigma: np.ndarray
    correct: np.ndarray
    radius: np.ndarray

    def acr(self) -> float:
        """Oracle ACR: mean of (R if correct else 0) at the oracle sigma."""
        return float(np.mean(np.where(self.correct > 0, self.radius, 0.0)))

    def certified_accuracy(self, radii: Sequence[float]) -> np.ndarray:
        """Oracle certified accuracy at each radius r: mean of 1[correct and R >= r]."""
        return np.array([np.mean((self.correct > 0) & (self.radius >= r)) for r in radii])

    def clean_accuracy(self) -> float:
        """Share of images certified correct at some sigma (the certified accuracy at r = 0)."""
        return float(np.mean(self.correct > 0))


def certified_oracle(sigmas: Sequence[float], radius, correct) -> CertifiedOracle:
    """Per image, the grid sigma with the largest certified radius among those where it is correct.

    radius, correct: (S, n) from Cohen's CERTIFY at each grid sigma on the same base classifier (certify.tsv
    columns `radius`, `correct`; abstain = wrong). Rule and ties: module docstring."""
    sig, (rad, cor) = _grid_and_rows(sigmas, radius, correct)
    ok = cor > 0
    score = np.where(ok, rad, -np.inf)
    idx = _pick(score)
    cols = np.arange(rad.shape[1])
    any_ok = ok.any(axis=0)
    idx = np.where(any_ok, idx, NO_SIGMA)
    return CertifiedOracle(index=idx, sigma=np.where(any_ok, sig[np.maximum(idx, 0)], np.nan),
                           correct=any_ok.astype(np.float64),
                           radius=np.where(any_ok, rad[np.maximum(idx, 0), cols], 0.0))


@dataclass(frozen=True)
class RobustOracle:
    """Per-image oracle choice under an attack: grid index (-1: none), sigma (NaN: none), and the robust and
    clean outcomes (0/1) at it."""

    index: np.ndarray
    sigma: np.ndarray
    robust: np.ndarray
    clean: np.ndarray

    def robust_accuracy(self) -> float:
        """Oracle robust accuracy: share of images robust under the attack at some sigma."""
        return float(np.mean(self.robust))

    def clean_accuracy(self) -> float:
        """Clean accuracy of the oracle's choices (robust-first, so it can be below the best fixed sigma's)."""
        return float(np.mean(self.clean))


def robust_oracle(sigmas: Sequence[float], robust, clean) -> RobustOracle:
    """Per image, the grid sigma where it is robust under the attack, preferring one where it is also
    clean-correct. robust, clean: (S, n) 0/1 from attack.csv at one eps for each fixed-sigma defence
    (`correct`: PREDICT on the adversarial example is right, abstain = wrong; clean: `clean_predict == label`).
    For "each defence under its strongest attack" pass `outcomes.robust_under_all` of the attacks.
    Rule and ties: module docstring."""
    sig, (rob, cle) = _grid_and_rows(sigmas, robust, clean)
    rob, cle = rob > 0, cle > 0
    score = 2 * rob.astype(np.int64) + cle.astype(np.int64)
    idx = _pick(score)
    cols = np.arange(rob.shape[1])
    some = score.max(axis=0) > 0
    idx = np.where(some, idx, NO_SIGMA)
    safe = np.maximum(idx, 0)
    return RobustOracle(index=idx, sigma=np.where(some, sig[safe], np.nan),
                        robust=np.where(some, rob[safe, cols], False).astype(np.float64),
                        clean=np.where(some, cle[safe, cols], False).astype(np.float64))


def cross_fitted_robust_oracle(sigmas: Sequence[float], robust_pick, clean_pick, robust_score,
                               clean_score) -> RobustOracle:
    """The robust oracle chosen on one attack run and scored on an independent one (other seeds, same images).

    `robust_oracle` picks and scores on the same outcomes, so it also selects the luck of the draw: if each
    image's outcome at each sigma were a coin flip with probability p, independent of sigma, it would report
    1 - (1 - p)^S although no choice of sigma helps. Here the sigma is picked with the pick run's outcomes
    (`robust_oracle`'s rule) and scored with the score run's, whose noise is independent of the choice, so the
    coin-flip case gives p: what a selector that knew the label could reach once chance is taken out. Images
    without an oracle sigma in the pick run take the smallest sigma (the least noise) for scoring.
    All four arrays (S, n), the same images in the same order."""
    sig, (rp, cp, rs, cs) = _grid_and_rows(sigmas, robust_pick, clean_pick, robust_score, clean_score)
    pick = robust_oracle(sig, rp, cp)
    idx = np.maximum(pick.index, 0)
    cols = np.arange(rs.shape[1])
    return RobustOracle(index=idx, sigma=sig[idx], robust=(rs[idx, cols] > 0).astype(np.float64),
                        clean=(cs[idx, cols] > 0).astype(np.float64))


def outcome_agreement(a, b) -> np.ndarray:
    """Per grid sigma (row), the share of images whose 0/1 outcome is the same in two runs: how repeatable
    a per-image label is (1: fully; for independent coin flips with probability p: p^2 + (1 - p)^2)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"outcomes must be two (S, n) arrays of one shape, got {a.shape} and {b.shape}")
    return (a == b).mean(axis=1)


# ---- labels for the `oracle_labels` objective (issue 17 section 2; Dual Randomized Smoothing's recipe) ----
def oracle_soft_labels(score, temperature: float) -> np.ndarray:
    """Soft labels over the sigma grid, (n, S): softmax_i(score_i(x) / T) per image.

    score: (S, n), e.g. the radius at each grid sigma (0 where wrong: `outcomes.radius_if_correct`) or, for
    robustness at a lambda, (1 - lambda) clean_i(x) + lambda robust_i(x). T > 0; T -> 0 puts all the mass on
    the best sigmas (shared equally between ties). Computed with the maximum subtracted (no overflow)."""
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 2 or not np.all(np.isfinite(s)):
        raise ValueError(f"score must be a finite (S, n) array, got shape {s.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = (s - s.max(axis=0, keepdims=True)) / temperature
    p = np.exp(z)
    return (p / p.sum(axis=0, keepdims=True)).T


def best_sigma_shares(score) -> np.ndarray:
    """q (S,): the share of images whose best grid sigma (argmax of score, ties to the smallest sigma) is
    sigma_i; the re-weighting of the `oracle_labels` objective divides by it (a share of 0 means no image
    has that best sigma)."""
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"score must be (S, n) with n >= 1, got shape {s.shape}")
    return np.bincount(np.argmax(s, axis=0), minlength=s.shape[0]) / s.shape[1]
