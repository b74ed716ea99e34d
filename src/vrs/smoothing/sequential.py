"""Sequential CERTIFY: stop drawing samples once the answer is known (issue 21), as small pure functions.

Cohen's CERTIFY bounds pA from a fixed number n of estimation samples. Here the estimation samples of an image are
looked at K times, at the cumulative sample counts of a pre-declared schedule m_1 < m_2 < ... < m_K = n
(`look_schedule`: doubling, m_k = ceil(n / 2^(K - k))), and sampling stops at the first look that settles the
question asked. The bound at look k is Clopper-Pearson at level alpha_k, with sum_k alpha_k = alpha
(`alpha_spending`). By the union bound,

    P[ exists k: pA < pA_lower_k ] <= sum_k P[ pA < CP_lower(n_A(m_k), m_k, alpha_k) ] <= sum_k alpha_k = alpha,

so the whole sequence (lower bounds at every look) holds simultaneously with probability >= 1 - alpha whatever
the stopping rule: an anytime-valid lower confidence bound on pA over the declared looks. Its running maximum
(`running_bounds`) is then valid too, and the radius sigma * Phi^-1(pA_lower) at the look where sampling stops is
a certificate with the same guarantee as Cohen's (failure probability <= alpha). With one look (K = 1) it is
exactly Cohen's fixed-n Clopper-Pearson bound. The price: the last look's bound is at alpha_K < alpha, so when
every look is taken the radius is a little smaller than fixed-n CERTIFY's.

An upper bound at the same levels, pA_upper_k = 1 - CP_lower(m_k - n_A, m_k, alpha_k), only decides when to stop
(it never enters a certificate): a "no" below is wrong with probability <= alpha as well.

Stopping rules (`sequential_done`, `radius_decisions`):
- sequential: stop when the radius is known to its final precision: the radius the bound can still reach by the
  budget n, sigma * Phi^-1(min(pA_upper, cap)) with cap = CP_lower(n, n, alpha_K) the largest bound n samples can
  give, is within `radius_tol` of the current one (this includes pA_upper < 1/2: abstention is certain), or the
  budget is spent.
- radius_target: given target radii r_1..r_J, image certified at r_j iff pA_lower >= Phi(r_j / sigma). Each target
  is "yes" once pA_lower >= Phi(r_j / sigma), "no" once pA_upper < Phi(r_j / sigma), and "budget" if neither
  holds when n samples are spent, or as soon as no later look could reach Phi(r_j / sigma) even if every further
  sample voted c_A (`best_reachable`: e.g. a radius beyond what n samples can ever certify); stop when no
  target is open. Cf. Horvath et al. (ICLR 2022), who report up to
  55x fewer samples for predetermined radii.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from vrs.smoothing.core import lower_confidence_bound, radius_from_lower_bound

SAMPLING = ("fixed", "sequential", "radius_target")  # certify.sampling
SPENDING = ("uniform", "geometric")
YES, NO, BUDGET, OPEN = "yes", "no", "budget", "open"  # decisions per target radius (OPEN: not decided yet)


def look_schedule(n: int, looks: int) -> list[int]:
    """Cumulative estimation-sample counts at which the bound is looked at: ceil(n / 2^(looks - k)) for
    k = 1..looks (doubling, the last = n), repeats removed (a small n has fewer distinct looks)."""
    if not (isinstance(n, int) and n >= 1 and isinstance(looks, int) and looks >= 1):
        raise ValueError(f"need integers n >= 1 and looks >= 1, got n={n!r}, looks={looks!r}")
    return sorted({max(1, math.ceil(n / 2 ** (looks - k))) for k in range(1, looks + 1)})


def alpha_spending(alpha: float, looks: int, rule: str = "uniform") -> np.ndarray:
    """The level alpha_k of each look's bound; they sum to alpha (the union bound's budget).

    uniform: alpha / K each. geometric: alpha * 2^-k for k = 1..K-1 and the rest, alpha * 2^-(K-1), to the last
    look (early looks get more). K = 1 gives [alpha] under both: Cohen's fixed-n bound."""
    if rule == "uniform":
        return np.full(looks, alpha / looks)
    if rule == "geometric":
        out = alpha * 0.5 ** np.arange(1, looks + 1, dtype=np.float64)
        out[-1] = alpha * 0.5 ** (looks - 1)
        return out
    raise ValueError(f"alpha spending rule {rule!r} is not one of {', '.join(SPENDING)}")


def upper_confidence_bound(n_a, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion: 1 - lower(n - n_a, n)."""
    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    out = 1.0 - np.asarray(lower_confidence_bound(n - n_a, n, alpha))
    return float(out) if out.ndim == 0 else out


def running_bounds(n_a, m, alpha_k, previous_lower=0.0, previous_upper=1.0):
    """(pA_lower, pA_upper) after a look at m samples with n_a successes at level alpha_k, kept monotone: the
    running max of the lower bounds and min of the upper ones (valid, since the sequence holds at every look
    at once)."""
    lower = np.maximum(previous_lower, lower_confidence_bound(n_a, m, alpha_k))
    upper = np.minimum(previous_upper, upper_confidence_bound(n_a, m, alpha_k))
    return lower, upper


def certified_thresholds(radii, sigma) -> np.ndarray:
    """pA_lower needed for a radius >= r: Phi(r / sigma) (1/2 at r = 0: a certificate at all). Shape (B, J) for
    (B,) sigmas and J radii."""
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    radii = np.asarray(radii, dtype=np.float64)
    return norm.cdf(radii[None, :] / sigma[:, None])


def best_reachable(n_a, m: int, schedule, alphas, k: int):
    """The largest lower bound any later look (k + 1, ...) can give if every further sample is c_A:
    max_j CP_lower(n_a + m_j - m, m_j, alpha_j); 0 when look k is the last. (B,) for (B,) n_a."""
    n_a = np.asarray(n_a, dtype=np.float64)
    best = np.zeros(n_a.shape)
    for m_j, a_j in zip(schedule[k + 1 :], alphas[k + 1 :]):
        best = np.maximum(best, lower_confidence_bound(n_a + (m_j - m), m_j, float(a_j)))
    return best


def radius_decisions(p_lower, p_upper, thresholds, last_look: bool, reachable=None) -> np.ndarray:
    """Per image and target radius: yes (pA_lower >= threshold), no (pA_upper < threshold), else open, or
    budget at the last look, or at once where even `reachable` (best_reachable: every further sample c_A) stays
    below the threshold: the budget cannot certify that radius. p_lower / p_upper / reachable (B,), thresholds
    (B, J) from certified_thresholds."""
    lo = np.asarray(p_lower, dtype=np.float64)[:, None]
    hi = np.asarray(p_upper, dtype=np.float64)[:, None]
    hopeless = last_look if reachable is None else np.asarray(reachable, dtype=np.float64)[:, None] < thresholds
    undecided = np.where(hopeless | last_look, BUDGET, OPEN)
    return np.where(lo >= thresholds, YES, np.where(hi < thresholds, NO, undecided)).astype(object)


def radius_span(p_lower, p_upper, cap: float, sigma):
    """How much the radius may still change: sigma * (Phi^-1(min(pA_upper, cap)) - Phi^-1(pA_lower)), each
    radius 0 below 1/2. cap: the largest lower bound the budget can give (final_cap)."""
    return (np.asarray(radius_from_lower_bound(np.minimum(p_upper, cap), sigma))
            - np.asarray(radius_from_lower_bound(p_lower, sigma)))


def final_cap(n: int, alpha_last: float) -> float:
    """The largest lower bound n samples can give at the last look's level: CP_lower(n, n, alpha_K)."""
    return float(lower_confidence_bound(n, n, alpha_last))


def sequential_done(p_lower, p_upper, cap: float, sigma, radius_tol: float) -> np.ndarray:
    """The `sequential` rule: the radius is known to within radius_tol (see radius_span)."""
    return radius_span(p_lower, p_upper, cap, sigma) <= radius_tol


@dataclass(frozen=True)
class SamplingPlan:
    """What certify.sampling asks of the sampling engine: the look schedule and levels, and the rule.

    mode: sequential or radius_target (fixed needs no plan); radii: the target radii (radius_target);
    radius_tol: the precision of `sequential`'s radius."""

    mode: str
    n: int
    alpha: float
    looks: int = 8
    radii: tuple[float, ...] = ()
    radius_tol: float = 0.01
    spending: str = "uniform"

    def __post_init__(self):
        if self.mode not in SAMPLING[1:]:
            raise ValueError(f"sampling plan mode {self.mode!r} is not one of {', '.join(SAMPLING[1:])}")

    @property
    def schedule(self) -> list[int]:
        return look_schedule(self.n, self.looks)

    @property
    def alphas(self) -> np.ndarray:
        return alpha_spending(self.alpha, len(self.schedule), self.spending)

    def to_dict(self) -> dict:
        return {"sampling": self.mode, "looks": self.looks, "schedule": self.schedule, "spending": self.spending,
                "alphas": [float(a) for a in self.alphas], "radii": list(self.radii), "radius_tol": self.radius_tol}


def run_looks(plan: SamplingPlan, draw, sigma, b: int, slack=0.0):
    """Drive the looks of a group of b images: `draw(rows, m_new)` draws m_new more estimation samples for each
    image in `rows` and returns their new n_A counts (len(rows),); this returns, per image, (n_A, estimation
    samples drawn, pA_lower, decisions (b, J) or None). slack: subtracted from every lower bound (the sound
    sampler's, vrs.smoothing.lattice). A pure loop over the statistics above (the engine supplies `draw`)."""
    slack = np.broadcast_to(np.asarray(slack, dtype=np.float64), (b,))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (b,))
    n_a = np.zeros(b, dtype=np.int64)
    drawn = np.zeros(b, dtype=np.int64)
    lower, upper = np.zeros(b), np.ones(b)
    active = np.ones(b, dtype=bool)
    schedule, alphas = plan.schedule, plan.alphas
    thresholds = certified_thresholds(plan.radii, sigma) if plan.mode == "radius_target" else None
    decisions = np.full((b, len(plan.radii)), OPEN, dtype=object) if thresholds is not None else None
    cap = final_cap(plan.n, float(alphas[-1]))
    for k, (m, a) in enumerate(zip(schedule, alphas)):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        n_a[rows] += np.asarray(draw(rows, m - (schedule[k - 1] if k else 0)), dtype=np.int64)
        drawn[rows] = m
        lower[rows], upper[rows] = running_bounds(n_a[rows], m, float(a), lower[rows] + slack[rows], upper[rows])
        lower[rows] = np.maximum(lower[rows] - slack[rows], 0.0)
        last = k == len(schedule) - 1
        if decisions is not None:
            reachable = best_reachable(n_a[rows], m, schedule, alphas, k) - slack[rows]
            decisions[rows] = radius_decisions(lower[rows], upper[rows], thresholds[rows], last, reachable)
            done = (decisions[rows] != OPEN).all(axis=1)
        else:
            done = sequential_done(lower[rows], upper[rows], cap, sigma[rows], plan.radius_tol) | last
        active[rows[done]] = False
    return n_a, drawn, lower, decisions
