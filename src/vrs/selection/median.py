"""Median smoothing of the selector and its certified interval (docs/method.md section 5; Chiang et al.,
"Detection as Regression: Certified Object Detection by Median Smoothing", NeurIPS 2020).

The smoothed selector is sigma~(x) = clip(median_j h(x + eta_j), sigma_min, sigma_max),
eta_j ~ N(0, sigma_h^2 I), optionally snapped to a grid G of noise levels (nearest in log space; snapping
and clipping are non-decreasing maps, so they commute with the median).

Guarantee (Chiang et al., Thm. 1): for ||delta||_2 <= eps the exact median at x + delta lies between the
p- and p+ percentiles of h(x + eta), p+- = Phi(+-eps / sigma_h). From n samples X_(1) <= ... <= X_(n):

* upper bound U(eps) = X_(k+), k+ the smallest k with P[Binom(n, p+) <= k - 1] >= 1 - alpha_h / 2;
* lower bound L(eps) = X_(k-), k- the largest k with P[Binom(n, p-) <= k - 1] <= alpha_h / 2;

each holds with probability >= 1 - alpha_h / 2, so the interval with >= 1 - alpha_h. When no order
statistic qualifies, the bound is vacuous and becomes the clip bound (sigma_min or sigma_max).

For a grid cell [b_lo, b_hi) the interval stays inside the cell up to eps* (`cell_radius`): with
N_u = #{X_i < b_hi} and N_l = #{X_i < b_lo},
  U(eps) < b_hi  <=>  Phi(eps / sigma_h) <= Beta(alpha_h/2; N_u, n - N_u + 1)   (a Clopper-Pearson bound),
  L(eps) >= b_lo <=>  Phi(-eps / sigma_h) >= Beta(1 - alpha_h/2; N_l + 1, n - N_l),
so eps* is one Clopper-Pearson lower bound per side, valid for all eps at once. The cell must be chosen
independently of the samples that bound it (like Cohen's n0 selection draws): `n_h0` selection draws pick
it, `n_h` fresh draws bound it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.stats import beta, binom, norm

from vrs.errors import check
from vrs.smoothing.noise import standard_normal


# ---- grid ------------------------------------------------------------------------------------
def check_grid(grid) -> list[float]:
    ok = grid is not None and len(grid) >= 1 and all(isinstance(g, (int, float)) and g > 0 for g in grid)
    check(ok, "median.grid", grid, "a non-empty list of positive noise levels, or null for no snapping")
    g = sorted(float(v) for v in grid)
    check(len(set(g)) == len(g), "median.grid", grid, "distinct values")
    return g


def grid_boundaries(grid: list[float]) -> np.ndarray:
    """Cell boundaries of a sorted grid: geometric midpoints, so snapping is nearest-in-log-space."""
    g = np.asarray(grid, dtype=np.float64)
    return np.sqrt(g[:-1] * g[1:])


def grid_cell(sigma, grid: list[float]):
    """Index of the grid cell holding sigma: cell i is [b_{i-1}, b_i) with b_{-1} = -inf, b_{G-1} = +inf.
    Works on floats, numpy arrays and torch tensors."""
    b = grid_boundaries(grid)
    if isinstance(sigma, torch.Tensor):
        return torch.bucketize(sigma, torch.as_tensor(b, dtype=sigma.dtype, device=sigma.device), right=True)
    return np.searchsorted(b, sigma, side="right")


def snap(sigma, grid: list[float] | None):
    """The grid value of sigma's cell (identity when grid is None)."""
    if not grid:
        return sigma
    idx = grid_cell(sigma, grid)
    if isinstance(sigma, torch.Tensor):
        return torch.as_tensor(grid, dtype=sigma.dtype, device=sigma.device)[idx]
    out = np.asarray(grid)[idx]
    return float(out) if np.ndim(out) == 0 else out


def cell_bounds(grid: list[float], index: int) -> tuple[float, float]:
    """[b_lo, b_hi) of grid cell `index` (infinite at the ends)."""
    b = grid_boundaries(grid)
    lo = -np.inf if index == 0 else float(b[index - 1])
    hi = np.inf if index == len(grid) - 1 else float(b[index])
    return lo, hi


# ---- settings and sampling -------------------------------------------------------------------
@dataclass
class MedianSmoothing:
    """Settings of the smoothed selector.

    sigma_h: std of the selector's own input noise eta; n_h0 selection draws (pick sigma at x / its grid
    cell); n_h estimation draws (bound it); alpha_h: failure probability of the interval (two-sided);
    grid: noise levels to snap to (None = continuous); batch_size: noisy copies per selector forward pass.
    """

    sigma_h: float = 0.25
    n_h0: int = 64
    n_h: int = 1000
    alpha_h: float = 0.001
    grid: list[float] | None = field(default_factory=lambda: [0.12, 0.25, 0.5, 1.0])
    batch_size: int = 1000

    def __post_init__(self):
        check(isinstance(self.sigma_h, (int, float)) and self.sigma_h > 0, "median.sigma_h", self.sigma_h,
              "a number > 0")
        for key in ("n_h0", "n_h", "batch_size"):
            val = getattr(self, key)
            check(isinstance(val, int) and val >= 1, f"median.{key}", val, "an integer >= 1")
        check(isinstance(self.alpha_h, (int, float)) and 0 < self.alpha_h < 1, "median.alpha_h", self.alpha_h,
              "a number in (0, 1)")
        self.grid = check_grid(self.grid) if self.grid is not None else None

    def to_dict(self) -> dict:
        return {"sigma_h": self.sigma_h, "n_h0": self.n_h0, "n_h": self.n_h, "alpha_h": self.alpha_h,
                "grid": self.grid, "batch_size": self.batch_size}


@torch.no_grad()
def selector_samples(selector, x: torch.Tensor, lam, n: int, sigma_h: float, batch_size: int = 1000,
                     generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """(B, n) test-time noise levels h(x + eta_j, lambda), eta_j ~ N(0, sigma_h^2 I), clipped to the
    selector's range. Noise comes from `generator` when given (on x's device): one for the batch, or one
    per image, so that an image's draws depend on its own stream only (each image is then drawn alone)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        check(len(generator) == x.shape[0], "generator", f"{len(generator)} generators",
              f"one per image ({x.shape[0]})")
        per_image_lam = isinstance(lam, torch.Tensor) and lam.dim() == 1
        return torch.cat([selector_samples(selector, x[j : j + 1], lam[j : j + 1] if per_image_lam else lam, n,
                                           sigma_h, batch_size, g) for j, g in enumerate(generator)])
    b = x.shape[0]
    out = torch.empty(b, n, device=x.device)
    flat_lam = torch.as_tensor(lam, dtype=torch.float32, device=x.device)
    per_image = max(1, batch_size // b) if b <= batch_size else 1
    for start in range(0, n, per_image):
        m = min(per_image, n - start)
        xs = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
        eta = standard_normal(xs.shape, device=x.device, dtype=x.dtype, generator=generator)
        lam_rep = flat_lam.repeat_interleave(m) if flat_lam.dim() == 1 else flat_lam
        out[:, start:start + m] = selector.test_sigma(xs + sigma_h * eta, lam_rep).view(b, m)
    return out.clamp(selector.sigma_min, selector.sigma_max)


def empirical_median(samples: torch.Tensor) -> torch.Tensor:
    """Lower empirical median X_(ceil(n/2)) along the last axis."""
    return samples.median(dim=-1).values


def smoothed_sigma(samples: torch.Tensor, grid: list[float] | None) -> torch.Tensor:
    """sigma~ from clipped draws (..., n): snap(median_j), in float64 so that a snapped sigma is exactly a
    grid value (the float the certificate is computed at; MPS has no float64 and stays in float32)."""
    med = empirical_median(samples)
    return snap(med if med.device.type == "mps" else med.double(), grid)


@torch.no_grad()
def deployed_sigma(selector, x: torch.Tensor, lam, median: MedianSmoothing, n: int | None = None,
                   generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The deployed VRS noise level of a batch, (B,) float64: snap(clip(median_j h(x + eta_j, lambda))) over
    n draws eta_j ~ N(0, sigma_h^2 I) (n: median.n_h when None), with median's sigma_h, grid and batch_size.

    generator: None (torch's global RNG), one for the batch, or one per image (`selector_samples`).
    """
    n = median.n_h if n is None else n
    return smoothed_sigma(selector_samples(selector, x, lam, n, median.sigma_h, median.batch_size, generator),
                          median.grid)


# ---- bounds ----------------------------------------------------------------------------------
def _order_indices(n: int, eps: np.ndarray, sigma_h: float, alpha_h: float) -> tuple[np.ndarray, np.ndarray]:
    """1-based k- and k+ for each eps (0 = vacuous lower, n + 1 = vacuous upper)."""
    a = alpha_h / 2
    ks = np.arange(1, n + 1)
    k_lo, k_hi = np.zeros(len(eps), dtype=int), np.full(len(eps), n + 1, dtype=int)
    for i, e in enumerate(eps):
        p_hi, p_lo = norm.cdf(e / sigma_h), norm.cdf(-e / sigma_h)
        up = binom.cdf(ks - 1, n, p_hi) >= 1 - a
        if up.any():
            k_hi[i] = ks[np.argmax(up)]
        low = binom.cdf(ks - 1, n, p_lo) <= a
        if low.any():
            k_lo[i] = ks[len(ks) - 1 - np.argmax(low[::-1])]
    return k_lo, k_hi


def median_bounds(samples, eps, sigma_h: float, alpha_h: float, clip: tuple[float, float]):
    """Bounds [L(eps), U(eps)] on the median of h(x + delta + eta) over ||delta||_2 <= eps.

    samples: the n draws h(x + eta_j) of one input; eps: a float or an array; returns two arrays (or
    floats) of the same shape. Holds with probability >= 1 - alpha_h for each eps.
    """
    xs = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    n = len(xs)
    scalar = np.ndim(eps) == 0
    e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    check(bool(np.all(e >= 0)), "eps", eps, "radii >= 0")
    k_lo, k_hi = _order_indices(n, e, sigma_h, alpha_h)
    lo = np.where(k_lo >= 1, xs[np.clip(k_lo - 1, 0, n - 1)], clip[0])
    hi = np.where(k_hi <= n, xs[np.clip(k_hi - 1, 0, n - 1)], clip[1])
    return (float(lo[0]), float(hi[0])) if scalar else (lo, hi)


def cell_radius(samples, grid: list[float], index: int, sigma_h: float, alpha_h: float,
                clip: tuple[float, float]) -> float:
    """eps*: the largest eps for which [L(eps), U(eps)] stays inside grid cell `index` (module docstring).

    -inf when the interval is not inside the cell even at eps = 0 (the sigma at x itself is not
    determined); +inf when both sides are saturated at clip bounds inside the cell.
    """
    xs = np.asarray(samples, dtype=np.float64).ravel()
    n, a = len(xs), alpha_h / 2
    b_lo, b_hi = cell_bounds(grid, index)
    if b_hi > clip[1]:
        eps_up = np.inf  # even the vacuous bound sigma_max stays in the cell
    else:
        n_u = int(np.sum(xs < b_hi))
        eps_up = sigma_h * norm.ppf(beta.ppf(a, n_u, n - n_u + 1)) if n_u >= 1 else -np.inf
    if b_lo <= clip[0]:
        eps_lo = np.inf
    else:
        n_l = int(np.sum(xs < b_lo))
        eps_lo = -sigma_h * norm.ppf(beta.ppf(1 - a, n_l + 1, n - n_l)) if n_l < n else -np.inf
    return float(min(eps_up, eps_lo))
