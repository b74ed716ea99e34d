"""Per-image outcomes, and lining up runs on the same images.

Every comparison in this package is paired: it needs, for each run, one outcome per image, on the same
images in the same order. A run's rows come with the dataset index of each image (`idx` in certify.tsv and
attack.csv), so runs are lined up by `idx`, never by row order.
"""

from __future__ import annotations

import numpy as np


def certified_at(radius, correct, r: float) -> np.ndarray:
    """Per-image certified-accuracy outcome at radius r: 1[correct and R >= r] (Cohen et al.'s convention,
    docs/method.md section 1: an abstention is wrong, the comparison is inclusive). Its mean is certified accuracy."""
    radius, correct = np.asarray(radius, dtype=np.float64), np.asarray(correct).astype(bool)
    return (correct & (radius >= r)).astype(np.float64)


def radius_if_correct(radius, correct) -> np.ndarray:
    """Per-image ACR outcome: R if correct else 0. Its mean is the average certified radius."""
    radius, correct = np.asarray(radius, dtype=np.float64), np.asarray(correct).astype(bool)
    return np.where(correct, radius, 0.0)


def align_images(*indices) -> tuple[np.ndarray, list[np.ndarray]]:
    """Line up runs on the images they all evaluated.

    Given each run's per-row dataset indices, return the sorted common indices and, per run, the row
    positions that pick them (so `values[pos]` is that run's outcome on the common images, in order).
    A run that lists an index twice is an error (a resumed run that appended a row again)."""
    if not indices:
        raise ValueError("align_images needs at least one run")
    arrays = [np.asarray(i).ravel() for i in indices]
    for k, a in enumerate(arrays):
        if np.unique(a).size != a.size:
            raise ValueError(f"run {k} lists an image index more than once")
    common = arrays[0]
    for a in arrays[1:]:
        common = np.intersect1d(common, a)
    common = np.sort(common)
    positions = []
    for a in arrays:
        order = np.argsort(a, kind="stable")
        positions.append(order[np.searchsorted(a[order], common)])
    return common, positions


def robust_under_all(*robust) -> np.ndarray:
    """Per-image worst case over attacks: 1 only where the image is robust under every attack given (each
    (n,) or (S, n) 0/1, the same images). Scoring a defence under this is at least as strict as under its
    strongest single attack."""
    if not robust:
        raise ValueError("robust_under_all needs at least one attack's outcomes")
    arrays = [np.asarray(r, dtype=np.float64) for r in robust]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"attacks' outcomes disagree in shape: {[a.shape for a in arrays]}")
    return np.minimum.reduce(arrays)
