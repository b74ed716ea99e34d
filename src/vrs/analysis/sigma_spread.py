"""Per-image sigma diagnostics: does the selector pick different noise levels for different images?
(issue 17 section 1; the collapse in docs/results.md is a selector that picks one sigma for every image.)

All functions take the deployed sigma per image at one lambda (certify.tsv column `sigma`, or attack.csv
`sigma_clean`), as a 1-D array, and work per lambda.

- Spread: mean, std (population, ddof = 0: a description of these images, not an estimate), the 25th and
  75th percentiles with numpy's default convention (`np.percentile`, method "linear", Hyndman & Fan type 7)
  and IQR = q75 - q25; also the std of ln sigma (the grid is geometric, so log space is the natural scale).
- Grid cells: nearest grid value in log space, cell i = [b_{i-1}, b_i) with b_i = sqrt(g_i g_{i+1}) the
  geometric midpoints (the same cells as `vrs.selection.median.grid_cell`, which snaps the deployed sigma).
- Success check of issue 17 ("at lambda = 0.5 the IQR of the chosen sigma spans at least one grid step"):
  sort the n chosen sigmas; the middle half of the images are those at 0-based positions floor(n/4) to
  ceil(3n/4) - 1 (positions 125 to 374 of 500); the IQR spans a grid step when they do not all lie in one
  grid cell. The quartiles are observed sigmas, never interpolated: numpy's linear percentiles would let
  3 images at 0.12 and 1 at 1.0 "span" a step (q75 = 0.34). The rule is symmetric (reversing the order
  of sigma gives the same answer) and conservative at the edge: a cell holding all but exactly 25 % on
  each side counts as not spanning.
- Rank correlation: Spearman's rho (`scipy.stats.spearmanr`) with another per-image quantity, e.g. the
  base classifier's margin at x (`classifier_margin`) or the oracle sigma (`oracle`); pairs where either
  is NaN are dropped (an image with no oracle sigma); NaN when either side is constant (rho is undefined:
  a selector that picks one sigma for every image) or fewer than 3 pairs remain.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr


def _sigmas(sigma) -> np.ndarray:
    s = np.asarray(sigma, dtype=np.float64).ravel()
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("need a non-empty array of positive, finite per-image sigmas")
    return s


def _grid(grid) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64).ravel()
    if g.size == 0 or np.any(g <= 0) or np.any(np.diff(g) <= 0):
        raise ValueError(f"grid must be positive and strictly increasing, got {g.tolist()}")
    return g


@dataclass(frozen=True)
class SigmaSpread:
    """Spread of the chosen sigma over n images: mean, std (ddof = 0), q25, q75, iqr = q75 - q25 (numpy's
    linear percentiles) and log_std = std of ln sigma."""

    n: int
    mean: float
    std: float
    q25: float
    q75: float
    iqr: float
    log_std: float


def sigma_spread(sigma) -> SigmaSpread:
    """Mean, std, quartiles, IQR and log-space std of the per-image chosen sigma (conventions: module docstring)."""
    s = _sigmas(sigma)
    q25, q75 = np.percentile(s, [25, 75])
    return SigmaSpread(int(s.size), float(s.mean()), float(s.std()), float(q25), float(q75), float(q75 - q25),
                       float(np.log(s).std()))


def grid_cell(sigma, grid: Sequence[float]) -> np.ndarray:
    """Index of the grid cell holding each sigma: nearest grid value in log space (boundaries at the
    geometric midpoints sqrt(g_i g_{i+1}); a sigma exactly on a boundary goes to the upper cell)."""
    g = _grid(grid)
    return np.searchsorted(np.sqrt(g[:-1] * g[1:]), np.asarray(sigma, dtype=np.float64), side="right")


def sigma_histogram(sigma, grid: Sequence[float]) -> np.ndarray:
    """Number of images whose chosen sigma falls in each grid cell, (G,) counts summing to n."""
    g = _grid(grid)
    return np.bincount(grid_cell(_sigmas(sigma), g), minlength=g.size)


def iqr_in_grid_steps(sigma, grid: Sequence[float]) -> int:
    """cell(hi) - cell(lo), lo and hi the sorted sigmas at 0-based positions floor(n/4) and ceil(3n/4) - 1:
    how many grid steps the middle half of the images spans (module docstring)."""
    s = np.sort(_sigmas(sigma))
    n = s.size
    lo, hi = s[n // 4], s[-(-3 * n // 4) - 1]
    cells = grid_cell(np.array([lo, hi]), grid)
    return int(cells[1] - cells[0])


def iqr_spans_grid_step(sigmas, grid: Sequence[float]) -> bool:
    """Issue 17's success check: the interquartile range of the chosen sigma spans at least one grid step,
    i.e. the middle half of the images (sorted by sigma, observed values) is not all in one grid cell."""
    return iqr_in_grid_steps(sigmas, grid) >= 1


def rank_correlation(a, b) -> float:
    """Spearman's rho between two per-image quantities (same images, same order). Pairs with a NaN on
    either side are dropped; NaN when either side is constant or fewer than 3 pairs remain."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"per-image quantities disagree in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a, b).statistic
    return float(rho)


def classifier_margin(probs, labels=None) -> np.ndarray:
    """Margin of the base classifier at x from its class probabilities (n, K): p_top1 - p_top2, or with
    labels p_y - max_{c != y} p_c (negative when wrong)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (n, K) with K >= 2, got shape {p.shape}")
    if labels is None:
        top2 = -np.sort(-p, axis=1)[:, :2]
        return top2[:, 0] - top2[:, 1]
    y = np.asarray(labels, dtype=np.int64).ravel()
    rows = np.arange(p.shape[0])
    other = p.copy()
    other[rows, y] = -np.inf
    return p[rows, y] - other.max(axis=1)


def sigma_per_class(sigma, labels) -> dict[int, tuple[float, int]]:
    """Mean chosen sigma and number of images per class label: {label: (mean, count)}, labels ascending."""
    s = _sigmas(sigma)
    y = np.asarray(labels).ravel()
    if y.shape != s.shape:
        raise ValueError(f"sigma and labels disagree in length: {s.size} vs {y.size}")
    return {int(c): (float(s[y == c].mean()), int(np.sum(y == c))) for c in np.unique(y)}


def sigma_summary(sigma, grid: Sequence[float], labels=None, margin=None, oracle_sigma=None,
                  prefix: str = "sigma/") -> dict[str, float]:
    """Every diagnostic above as flat scalars for a report row or W&B (`prefix` + name): mean, std, q25,
    q75, iqr, log_std, iqr_steps, spans_step (0/1), count_<g> per grid value, rho_margin and rho_oracle
    (when given), mean_class<k> per class (when labels are given)."""
    sp = sigma_spread(sigma)
    out = {f"{prefix}{k}": float(getattr(sp, k)) for k in ("mean", "std", "q25", "q75", "iqr", "log_std")}
    steps = iqr_in_grid_steps(sigma, grid)
    out[f"{prefix}iqr_steps"] = float(steps)
    out[f"{prefix}spans_step"] = float(steps >= 1)
    for g, c in zip(_grid(grid), sigma_histogram(sigma, grid)):
        out[f"{prefix}count_{g:g}"] = float(c)
    if margin is not None:
        out[f"{prefix}rho_margin"] = rank_correlation(sigma, margin)
    if oracle_sigma is not None:
        out[f"{prefix}rho_oracle"] = rank_correlation(sigma, oracle_sigma)
    if labels is not None:
        for c, (mean, _) in sigma_per_class(sigma, labels).items():
            out[f"{prefix}mean_class{c}"] = mean
    return out
