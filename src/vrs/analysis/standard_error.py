"""Standard errors of the per-point metrics (the error bars of the frontier plot).

Every metric of a run is a mean over the same n evaluated images of a per-image outcome: 0/1 for clean,
robust and certified accuracy (abstain = wrong), a real number for the certified radius (ACR). Images are
treated as an i.i.d. sample of the test distribution; the randomness of the Monte-Carlo noise inside each
image's outcome is part of that outcome and needs no separate term.
"""

from __future__ import annotations

import math

import numpy as np


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n images: sqrt(p (1 - p) / n).

    NaN when n = 0. (It is 0 at p = 0 or 1: use a Clopper-Pearson interval there if it matters.)"""
    if n <= 0:
        return math.nan
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def mean_standard_error(values) -> float:
    """Standard error of a mean of per-image values (e.g. ACR from per-image radii, 0 when wrong):
    std(v, ddof=1) / sqrt(n). NaN when fewer than two values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        return math.nan
    return float(np.std(v, ddof=1) / math.sqrt(v.size))
