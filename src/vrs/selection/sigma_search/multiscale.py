"""`sigma_search=multiscale`: cascaded randomized smoothing (Jeong & Shin, "Multi-scale Diffusion Denoised
Smoothing", NeurIPS 2023), with a sound certificate.

Grid sigma_1 > sigma_2 > ... > sigma_L (tried from the largest), threshold p0 >= 1/2. With p_j(c) = P[f(x + sigma_j z)
= c], the cascade predicts

    g(x) = c at the first level k (from the top) with p_k(c) > p0;   abstain when no level has such a class.

Certificate (this project's; docs/vrs.md). Every level is an ordinary fixed-sigma smoothed classifier, so
Phi^-1(p_j(c)(x)) is (1/sigma_j)-Lipschitz in x (Salman et al. 2019). If the cascade stops at level k with class c,
then on the ball of radius

    R = min( sigma_k (Phi^-1(pA_lower,k) - Phi^-1(p0)),  min_{j above k} sigma_j (Phi^-1(p0) - Phi^-1(pB_upper,j)) )

level k keeps c above p0 and no level above k lets another class reach p0, so every input in the ball is classified
c (by level k, or by a level above it that also says c). pA_lower,k bounds p_k(c) from below; pB_upper,j bounds
max_{c' != c} p_j(c') from above. As a procedure: measure the levels from the top; stop at the first level whose
guessed class c_j (from n0 selection draws) has pA_lower >= p0; the certificate is R above (abstain when R <= 0:
a higher level's other class may reach p0 at x itself, so even the prediction is not determined).

Failure probability: which level stops, and so which bounds are used, depends on the data, so every bound that
could be used must hold at once. Per level j (budget alpha / L): the lower bound of its guessed class c_j at
alpha / (2L) (c_j comes from independent selection draws, one event) and one-sided upper bounds of all K classes at
alpha / (2 L K) each (Bonferroni: they then hold for whichever class c the cascade stops with). Union bound: the
certificate fails with probability <= alpha. [As published (jh-jeong/smoothing-multiscale @ 5f31c79) the stage k
where the cascade stops gets alpha / (k + 1) for all its bounds; since k depends on the data, a union bound over the
possible stops exceeds alpha (the lower bounds alone: alpha (1 + 1/2 + ... + 1/L)); and the other classes are bounded
by an asymptotic multinomial interval. The fixed exact split here is what makes it sound.]

Deployment (`deployed_sigma`, what the attacks run PREDICT at): the same stopping rule on `n_predict` draws per level
(no selection draws: the top class of the level's draws, bounded at alpha_predict / L); the sigma of the stopping
level, or the smallest sigma when no level stops (PREDICT there then decides).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from scipy.stats import norm

from vrs.errors import check
from vrs.selection.sigma_search import SEARCH_STREAM
from vrs.smoothing import core
from vrs.smoothing.noise import standard_normal
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed, stream_seed


def upper_confidence_bound(n_c, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion: 1 - LCB of the complement."""
    n_c = np.asarray(n_c)
    return 1.0 - np.asarray(core.lower_confidence_bound(np.asarray(n) - n_c, n, alpha), dtype=np.float64)


def level_alphas(alpha: float, levels: int, classes: int) -> tuple[float, float]:
    """(alpha of each level's lower bound, alpha of each class's upper bound at a level): alpha / (2L) and
    alpha / (2LK), so that all L + L*K bounds hold at once with probability >= 1 - alpha."""
    return alpha / (2 * levels), alpha / (2 * levels * classes)


def stopping_level(p_lower: Sequence[float], p0: float) -> int:
    """The cascade's stopping rule: the first level (in the order given, largest sigma first) whose lower bound
    reaches p0; -1 when none does."""
    for j, p in enumerate(p_lower):
        if p >= p0:
            return j
    return -1


def cascade_radius(k: int, c: int, sigmas: Sequence[float], p_lower_k: float, upper: np.ndarray, p0: float) -> float:
    """R = min(sigma_k (Phi^-1(pA_lower,k) - Phi^-1(p0)), min_{j<k} sigma_j (Phi^-1(p0) - Phi^-1(max_{c'!=c}
    upper[j, c']))) for a cascade stopped at level k (levels in cascade order) with class c; upper: (L, K) upper
    bounds of every class at every level. <= 0 means not certified (also at x itself)."""
    q0 = norm.ppf(p0)
    radius = sigmas[k] * (norm.ppf(min(p_lower_k, 1.0)) - q0)
    for j in range(k):
        other = np.delete(np.asarray(upper[j], dtype=np.float64), c).max(initial=0.0)
        if other >= 1.0:
            return 0.0
        radius = min(radius, sigmas[j] * (q0 - norm.ppf(other)))
    return float(radius)


def cascade_certify(counts_selection: np.ndarray, counts_estimation: np.ndarray, sigmas: Sequence[float], p0: float,
                    alpha: float) -> dict:
    """The certificate of one image from its (L, K) selection and estimation counts at the L levels, in cascade order
    (largest sigma first; rows of levels below the stopping one are ignored and may be zero).

    Returns {"predict", "radius", "sigma", "level", "cert", "radius_unsound"}: cert multiscale (certified), abstain
    (no level stops) or sigma_undetermined (a higher level's other class may reach p0: R <= 0); radius_unsound is
    the stopping level's Cohen radius at the full alpha (what a per-level certificate would claim)."""
    sel, est = np.atleast_2d(counts_selection), np.atleast_2d(counts_estimation)
    levels, classes = est.shape
    a_low, a_up = level_alphas(alpha, levels, classes)
    guess = sel.argmax(axis=1)
    n = est.sum(axis=1)
    p_lower = [core.lower_confidence_bound(est[j, guess[j]], n[j], a_low) if n[j] else 0.0 for j in range(levels)]
    k = stopping_level(p_lower, p0)
    if k < 0:
        return {"predict": -1, "radius": 0.0, "sigma": float(sigmas[-1]), "level": -1, "cert": "abstain",
                "radius_unsound": 0.0}
    c = int(guess[k])
    upper = np.stack([upper_confidence_bound(est[j], n[j], a_up) for j in range(k)]) if k else np.zeros((0, classes))
    radius = cascade_radius(k, c, sigmas, p_lower[k], upper, p0)
    unsound = float(core.radius_from_lower_bound(core.lower_confidence_bound(est[k, c], n[k], alpha), sigmas[k]))
    if radius <= 0:
        return {"predict": -1, "radius": 0.0, "sigma": float(sigmas[k]), "level": k, "cert": "sigma_undetermined",
                "radius_unsound": unsound}
    return {"predict": c, "radius": radius, "sigma": float(sigmas[k]), "level": k, "cert": "multiscale",
            "radius_unsound": unsound}


class Multiscale:
    """Cascaded smoothing over `grid` (tried from the largest sigma) with threshold `p0`; `n_predict` draws per level
    and `alpha_predict` for the deployed stopping rule (attacks). See the module docstring."""

    certificate = "multiscale"

    def __init__(self, grid: Sequence[float] = (0.12, 0.25, 0.5, 1.0), p0: float = 0.5, n_predict: int = 100,
                 alpha_predict: float = 0.001, batch_size: int = 1000):
        grid = list(grid) if isinstance(grid, Sequence) and not isinstance(grid, str) else grid  # Hydra: a ListConfig
        ok = (isinstance(grid, list) and len(grid) >= 1 and len(set(grid)) == len(grid)
              and all(isinstance(g, (int, float)) and not isinstance(g, bool) and g > 0 for g in grid))
        check(ok, "sigma_search.grid", grid, "a non-empty list of distinct noise levels > 0")
        self.grid = sorted(float(g) for g in grid)
        check(isinstance(p0, (int, float)) and 0.5 <= p0 < 1, "sigma_search.p0", p0, "a number in [0.5, 1)")
        check(isinstance(n_predict, int) and n_predict >= 1, "sigma_search.n_predict", n_predict, "an integer >= 1")
        check(isinstance(alpha_predict, (int, float)) and 0 < alpha_predict < 1, "sigma_search.alpha_predict",
              alpha_predict, "a number in (0, 1)")
        check(isinstance(batch_size, int) and batch_size >= 1, "sigma_search.batch_size", batch_size, "an integer >= 1")
        self.p0, self.n_predict, self.alpha_predict = float(p0), n_predict, float(alpha_predict)
        self.batch_size = batch_size
        self.levels = sorted(self.grid, reverse=True)  # cascade order: largest sigma first

    def to_dict(self) -> dict:
        return {"name": "multiscale", "grid": self.grid, "p0": self.p0, "n_predict": self.n_predict,
                "alpha_predict": self.alpha_predict}

    @property
    def sigma_max(self) -> float:
        return self.levels[0]

    def certify_groups(self, smoothed: SmoothedClassifier, groups: Iterable[tuple[torch.Tensor, Sequence[int]]],
                       seed: int, n0: int, n: int, alpha: float, batch_size: int) -> Iterator[list[dict]]:
        """Rows {"idx", "predict", "radius", "sigma", "radius_unsound", "cert"} per group of images (x in [0, 1], their
        indices). Level j of image idx draws from stream_seed(image_seed(seed, idx), SEARCH_STREAM + j) through the
        engine's CERTIFY (its selection and estimation streams), and only images that have not stopped go on."""
        levels, k = self.levels, smoothed.num_classes
        a_low = level_alphas(alpha, len(levels), k)[0]
        for x, indices in groups:
            b = len(indices)
            keys = [image_seed(seed, int(i)) for i in indices]
            sel = np.zeros((b, len(levels), k), dtype=np.int64)
            est = np.zeros((b, len(levels), k), dtype=np.int64)
            active = np.arange(b)
            for j, sigma in enumerate(levels):
                if not len(active):
                    break
                seeds = [stream_seed(keys[r], SEARCH_STREAM + j) for r in active]
                res = next(smoothed.certify_groups([(x[torch.as_tensor(active)], seeds, sigma)], n0, n, alpha,
                                                   batch_size))
                sel[active, j], est[active, j] = res.counts_selection, res.counts_estimation
                guess = res.counts_selection.argmax(axis=1)
                low = core.lower_confidence_bound(est[active, j][np.arange(len(active)), guess], n, a_low)
                active = active[np.atleast_1d(low) < self.p0]
            rows = []
            for r, idx in enumerate(indices):
                out = cascade_certify(sel[r], est[r], levels, self.p0, alpha)
                rows.append({"idx": int(idx), "predict": out["predict"], "radius": out["radius"], "sigma": out["sigma"],
                             "radius_unsound": out["radius_unsound"], "cert": out["cert"]})
            yield rows

    @torch.no_grad()
    def deployed_sigma(self, f, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) the sigma the cascade stops at (module docstring, Deployment), from `n_predict` draws per level."""
        b, shape = x.shape[0], tuple(x.shape[1:])
        out = torch.full((b,), self.levels[-1], dtype=torch.float32, device=x.device)
        active = torch.arange(b, device=x.device)
        a = self.alpha_predict / len(self.levels)
        for sigma in self.levels:
            if not len(active):
                break
            xa, counts = x[active], None
            per = max(1, self.batch_size // len(active))  # draws per image per forward batch
            for start in range(0, self.n_predict, per):
                m = min(per, self.n_predict - start)
                z = standard_normal((len(active), m, *shape), device=x.device, generator=generator)
                logits = f((xa.unsqueeze(1) + sigma * z).reshape(-1, *shape))
                pred = logits.argmax(1).view(len(active), m)
                if counts is None:
                    counts = torch.zeros(len(active), logits.shape[1], dtype=torch.int64, device=x.device)
                counts.scatter_add_(1, pred, torch.ones_like(pred))
            top = counts.max(dim=1).values.cpu().numpy()
            low = np.atleast_1d(core.lower_confidence_bound(top, self.n_predict, a))
            stop = torch.as_tensor(low >= self.p0, device=x.device)
            out[active[stop]] = sigma
            active = active[~stop]
        return out
