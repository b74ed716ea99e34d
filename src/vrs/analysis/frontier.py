"""The fixed-sigma Pareto frontier, and how far a VRS operating point lies above or below it (issue 17
section 1; docs/method.md section 7: "VRS against fixed sigma with the same base classifier, at matched clean
accuracy").

An operating point is (clean accuracy, metric) of one defence on n images, the metric being robust
accuracy at an eps, certified accuracy at a radius, or ACR. Fixed sigma gives one point per sigma; a VRS
selector one point per lambda. Every point is a mean of per-image outcomes over the SAME images, so a
comparison is paired image by image, which removes the between-image variance that the two runs share.

- Frontier: the fixed-sigma points not dominated by another (no other point has clean >= and metric >=,
  one of them >), ordered by clean accuracy, joined by straight lines (`pareto_frontier`). Optionally the
  upper concave hull of those (`frontier="hull"`): every point on a chord between two sigmas is reachable
  by picking one of the two at random per image, so the hull is the strictest fixed-sigma reference.
- Gap at the VRS clean accuracy c_v, between the frontier points a and b that bracket it
  (c_a <= c_v <= c_b):
      F(c_v) = w m_a + (1 - w) m_b,   w = (c_b - c_v) / (c_b - c_a),
      gap = m_v - F(c_v) = mean_i d_i,   d_i = m_v,i - (w m_a,i + (1 - w) m_b,i).
  Left of the frontier's lowest clean accuracy but inside the fixed-sigma range, the frontier is flat at its
  leftmost point (which has more clean accuracy and more metric than anything there): w = 1 on that point.
  Outside [min, max] of the fixed-sigma clean accuracies no comparison is made ("outside the fixed-sigma
  range"): gap, se and z are NaN.
- Paired standard error. With w held fixed, gap is a mean of n i.i.d. d_i and
      se_fixed_w = std(d, ddof=1) / sqrt(n).
  But w is itself estimated from the same images (it depends on c_v, c_a, c_b). The delta method accounts
  for it: writing F(c_v) = m_a + s (c_v - c_a) with slope s = (m_b - m_a) / (c_b - c_a), the influence of
  image i on the gap is
      psi_i = d_i - s e_i,   e_i = c_v,i - (w c_a,i + (1 - w) c_b,i)   (mean(e) = 0 by the choice of w),
  so se = std(psi, ddof=1) / sqrt(n). It is the one z uses. The correction matters when the frontier is
  steep and the clean-accuracy difference e correlates with d (an image VRS gets clean-right tends to be
  one it also keeps robust): then se_fixed_w understates the error (in the tests' Monte Carlo toy, slope
  -1.4: the gap's spread over replicates is 0.0224, se 0.0228, se_fixed_w 0.014). Both use the per-image
  outcomes directly (no binomial approximation; the pairing is exact); the delta method is first order,
  and which segment brackets c_v is treated as fixed. In the flat part s = 0, so se = se_fixed_w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class FrontierGap:
    """How far one VRS operating point lies above (gap > 0) or below the fixed-sigma frontier.

    gap: m_v - F(c_v); se: its paired standard error, delta method (w estimated); se_fixed_w: the same with
    w held fixed; z = gap / se (NaN when gap = se = 0, e.g. identical outcomes); clean: c_v; metric: m_v;
    frontier: F(c_v); sigmas: the two bracketing fixed sigmas (lower clean accuracy first; the same sigma
    twice in the flat part); weight: w, the weight on sigmas[0]; slope: s; outside: c_v lies outside the
    fixed-sigma clean-accuracy range (then gap, se, z are NaN); n: images."""

    gap: float
    se: float
    se_fixed_w: float
    z: float
    clean: float
    metric: float
    frontier: float
    sigmas: tuple[float, float] | None
    weight: float
    slope: float
    outside: bool
    n: int

    @property
    def verdict(self) -> str:
        """One phrase for the report: 'outside the fixed-sigma range', e.g. '+0.031 (+2.4 SE)', or
        '+0.000 (SE 0)' when the outcomes equal the frontier's image by image."""
        if self.outside:
            return "outside the fixed-sigma range"
        if self.se == 0 or self.z != self.z:
            return f"{self.gap:+.3f} (SE {self.se:.3g})"
        return f"{self.gap:+.3f} ({self.z:+.1f} SE)"


def pareto_frontier(clean: Sequence[float], metric: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated points, ordered by clean accuracy (ascending; the metric then descends).

    Point j dominates i when clean_j >= clean_i and metric_j >= metric_i, one strictly. Of exact duplicates
    the first is kept."""
    c, m = np.asarray(clean, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    if c.shape != m.shape or c.ndim != 1 or c.size == 0:
        raise ValueError("clean and metric must be non-empty 1-D arrays of the same length")
    keep = []
    for i in range(c.size):
        dominated = np.any((c >= c[i]) & (m >= m[i]) & ((c > c[i]) | (m > m[i])))
        duplicate = np.any((c[:i] == c[i]) & (m[:i] == m[i]))
        if not dominated and not duplicate:
            keep.append(i)
    keep = np.asarray(keep, dtype=np.int64)
    return keep[np.argsort(c[keep], kind="stable")]


def upper_hull(clean: Sequence[float], metric: Sequence[float]) -> np.ndarray:
    """Indices of the Pareto points on the upper concave hull, ordered by clean accuracy: a Pareto point
    strictly below the chord of its neighbours is dropped (the chord is reachable by random mixing)."""
    c, m = np.asarray(clean, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    hull: list[int] = []
    for i in pareto_frontier(c, m):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is kept only if it lies strictly above the chord a -> i (a right turn)
            cross = (c[b] - c[a]) * (m[i] - m[a]) - (m[b] - m[a]) * (c[i] - c[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(int(i))
    return np.asarray(hull, dtype=np.int64)


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be (sigmas, images), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or inf")
    return a


def frontier_gap(fixed_sigmas: Sequence[float], fixed_clean, fixed_metric, vrs_clean, vrs_metric,
                 frontier: str = "pareto") -> FrontierGap:
    """Gap of a VRS point to the fixed-sigma frontier at the same clean accuracy, with its paired SE.

    fixed_clean, fixed_metric: (S, n) per-image outcomes of the S fixed sigmas (clean: 1 if PREDICT on the
    clean image is right, abstain = wrong; metric: robust / certified 0/1, or R if correct else 0 for ACR);
    vrs_clean, vrs_metric: (n,) for the VRS point; the same n images in the same order everywhere
    (`outcomes.align_images`). frontier: "pareto" (piecewise linear through the non-dominated points) or
    "hull" (its upper concave hull). Formulas in the module docstring."""
    sig = np.asarray(fixed_sigmas, dtype=np.float64).ravel()
    fc, fm = _as_matrix(fixed_clean, "fixed_clean"), _as_matrix(fixed_metric, "fixed_metric")
    vc, vm = (_as_matrix(np.asarray(v, dtype=np.float64).reshape(1, -1), name)[0] if np.ndim(v) == 1 else None
              for v, name in ((vrs_clean, "vrs_clean"), (vrs_metric, "vrs_metric")))
    if vc is None or vm is None:
        raise ValueError("vrs_clean and vrs_metric must be 1-D per-image outcomes")
    if fc.shape != fm.shape or fc.shape[0] != sig.size or vc.size != fc.shape[1] or vm.size != fc.shape[1]:
        raise ValueError(f"shapes disagree: sigmas {sig.shape}, fixed_clean {fc.shape}, fixed_metric {fm.shape}, "
                         f"vrs_clean {vc.shape}, vrs_metric {vm.shape}")
    if frontier not in ("pareto", "hull"):
        raise ValueError(f"frontier must be 'pareto' or 'hull', got {frontier!r}")
    n = vc.size
    c, m = fc.mean(1), fm.mean(1)
    c_v, m_v = float(vc.mean()), float(vm.mean())
    nan = math.nan
    if c_v < c.min() or c_v > c.max():
        return FrontierGap(nan, nan, nan, nan, c_v, m_v, nan, None, nan, nan, True, n)
    front = pareto_frontier(c, m) if frontier == "pareto" else upper_hull(c, m)
    cf = c[front]
    if c_v <= cf[0]:  # flat part left of the frontier (or exactly at its leftmost point)
        a = b = int(front[0])
        w, s = 1.0, 0.0
    else:
        k = int(np.searchsorted(cf, c_v, side="left"))  # cf[k-1] < c_v <= cf[k]
        a, b = int(front[k - 1]), int(front[k])
        w = (c[b] - c_v) / (c[b] - c[a])
        s = (m[b] - m[a]) / (c[b] - c[a])
    d = vm - (w * fm[a] + (1.0 - w) * fm[b])
    e = vc - (w * fc[a] + (1.0 - w) * fc[b])
    psi = d - s * e
    gap = float(d.mean())
    se_fixed = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else nan
    se = float(np.std(psi, ddof=1) / math.sqrt(n)) if n > 1 else nan
    tiny = 1e-12  # rounding: outcomes equal to the frontier's image by image give se ~ 1e-17, not 0
    se, se_fixed = (0.0 if v < tiny else v for v in (se, se_fixed))
    if se != se or (se == 0 and abs(gap) < tiny):
        z = nan
    elif se == 0:
        z = math.copysign(math.inf, gap)
    else:
        z = gap / se
    return FrontierGap(gap, se, se_fixed, z, c_v, m_v, float(w * m[a] + (1 - w) * m[b]),
                       (float(sig[a]), float(sig[b])), float(w), float(s), False, n)
