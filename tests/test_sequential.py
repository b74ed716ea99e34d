"""Sequential CERTIFY (vrs.smoothing.sequential, and the engine's looks) against known answers: closed forms,
Cohen's fixed-n bound at one look, and seeded Monte Carlo with known pA (false-certificate rate <= alpha): a
Bernoulli stream for the statistics, a 1-pixel threshold classifier for the engine (float and sound noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from vrs.smoothing import SmoothedClassifier
from vrs.smoothing import sequential as seq
from vrs.smoothing.core import lower_confidence_bound
from vrs.smoothing.smoothed import image_seed


def test_look_schedule_doubles_up_to_n():
    assert seq.look_schedule(100_000, 8) == [782, 1563, 3125, 6250, 12500, 25000, 50000, 100000]
    assert seq.look_schedule(1000, 1) == [1000]
    assert seq.look_schedule(3, 8) == [1, 2, 3]  # repeats removed
    with pytest.raises(ValueError):
        seq.look_schedule(0, 3)


@pytest.mark.parametrize("rule", seq.SPENDING)
def test_alpha_spending_sums_to_alpha(rule):
    for k in (1, 2, 5, 8):
        a = seq.alpha_spending(0.001, k, rule)
        assert len(a) == k and a.sum() == pytest.approx(0.001, rel=1e-12) and np.all(a > 0)
    assert seq.alpha_spending(0.01, 1, rule).tolist() == [0.01]
    assert seq.alpha_spending(0.01, 3, "geometric").tolist() == pytest.approx([0.005, 0.0025, 0.0025])


def test_upper_bound_closed_forms():
    # n_A = 0: the upper bound solves (1 - p)^n = alpha; n_A = n: 1
    assert seq.upper_confidence_bound(0, 50, 0.01) == pytest.approx(1 - 0.01 ** (1 / 50), rel=1e-10)
    assert seq.upper_confidence_bound(50, 50, 0.01) == 1.0
    # symmetric to the lower bound
    assert seq.upper_confidence_bound(30, 100, 0.05) == pytest.approx(1 - lower_confidence_bound(70, 100, 0.05))


@pytest.mark.parametrize("mode", ["sequential", "radius_target"])
def test_one_look_is_cohens_fixed_n_bound(mode):
    n, alpha = 1000, 0.001
    n_a = np.array([0, 400, 500, 640, 950, 999, 1000])
    plan = seq.SamplingPlan(mode, n=n, alpha=alpha, looks=1, radii=(0.0, 0.25, 0.5))
    got_na, drawn, lower, decisions = seq.run_looks(plan, lambda rows, m: n_a[rows] * m // n, 0.25, len(n_a))
    assert got_na.tolist() == n_a.tolist() and drawn.tolist() == [n] * len(n_a)
    np.testing.assert_allclose(lower, lower_confidence_bound(n_a, n, alpha), rtol=0, atol=0)
    if mode == "radius_target":  # at the only look every undecided target is "budget"
        assert not (decisions == seq.OPEN).any()


def test_radius_decisions_and_thresholds():
    thr = seq.certified_thresholds([0.0, 0.5], [0.5, 1.0])
    np.testing.assert_allclose(thr, [[0.5, norm.cdf(1.0)], [0.5, norm.cdf(0.5)]])
    d = seq.radius_decisions([0.9, 0.55, 0.1], [0.99, 0.9, 0.3], np.tile([0.5, 0.85], (3, 1)), last_look=False)
    assert d.tolist() == [["yes", "yes"], ["yes", "open"], ["no", "no"]]
    d = seq.radius_decisions([0.55], [0.9], np.array([[0.5, 0.85]]), last_look=True)
    assert d.tolist() == [["yes", "budget"]]
    d = seq.radius_decisions([0.55], [0.9], np.array([[0.5, 0.85]]), last_look=False, reachable=[0.8])
    assert d.tolist() == [["yes", "budget"]]  # 0.85 is out of reach: settled at once


def test_best_reachable_is_the_all_agree_bound_of_a_later_look():
    sched, alphas = [10, 20, 40], np.array([0.01, 0.01, 0.01])
    got = seq.best_reachable([7], 10, sched, alphas, 0)
    want = max(lower_confidence_bound(17, 20, 0.01), lower_confidence_bound(37, 40, 0.01))
    assert got[0] == pytest.approx(want) and seq.best_reachable([7], 40, sched, alphas, 2)[0] == 0.0
    # a radius beyond what n = 1000 samples can certify is "budget" at the first look
    plan = seq.SamplingPlan("radius_target", n=1000, alpha=0.001, looks=4, radii=(0.25, 5.0))
    _, drawn, _, dec = seq.run_looks(plan, lambda rows, m: np.full(len(rows), m), 0.25, 2)
    assert dec[:, 1].tolist() == ["budget", "budget"] and dec[:, 0].tolist() == ["yes", "yes"]
    assert drawn.tolist() == [125, 125]


def test_sequential_stops_early_when_the_radius_is_settled():
    # pA = 1/2 exactly: the upper bound falls below the cap fast, but never below 1/2: stops only on precision
    plan = seq.SamplingPlan("sequential", n=100_000, alpha=0.001, looks=8, radius_tol=0.05)
    rng = np.random.default_rng(0)
    clear = seq.run_looks(plan, lambda rows, m: rng.binomial(m, 0.05, len(rows)), 0.25, 50)  # abstains: 1 look
    assert (clear[1] == plan.schedule[0]).all() and (clear[2] < 0.5).all()
    sure = seq.run_looks(plan, lambda rows, m: np.full(len(rows), m), 0.25, 3)  # all agree: radius grows with m
    cap = seq.final_cap(plan.n, float(plan.alphas[-1]))
    first = next(m for m, a in zip(plan.schedule, plan.alphas)  # the first look within radius_tol of the cap
                 if 0.25 * (norm.ppf(cap) - norm.ppf(a ** (1 / m))) <= 0.05)
    assert (sure[1] == first).all() and 3125 < first < 100_000


def not_more_often_than(count: int, trials: int, rate: float) -> bool:
    """False when `count` out of `trials` is significantly (p < 0.001) more than `rate` allows."""
    return binomtest(count, trials, rate, alternative="greater").pvalue > 1e-3


@pytest.mark.parametrize("mode,spending", [("sequential", "uniform"), ("sequential", "geometric"),
                                           ("radius_target", "uniform")])
def test_false_certificate_rate_is_at_most_alpha(mode, spending):
    """2,000 seeded images whose pA sits just below a certified threshold: a certificate is false when its
    pA_lower exceeds the true pA (a radius beyond the true one), or a target radius is "yes" though
    Phi(r / sigma) > pA. The rate must not exceed alpha = 0.05 (binomial test at p = 0.001)."""
    alpha, sigma, reps = 0.05, 0.5, 2000
    radii = (0.25,)
    p_a = float(norm.cdf(0.25 / sigma)) - 0.01  # just below the pA needed for r = 0.25
    plan = seq.SamplingPlan(mode, n=4000, alpha=alpha, looks=6, radii=radii, radius_tol=0.02, spending=spending)
    rng = np.random.default_rng(123)
    _, drawn, lower, decisions = seq.run_looks(plan, lambda rows, m: rng.binomial(m, p_a, len(rows)), sigma, reps)
    false = (decisions[:, 0] == seq.YES) if mode == "radius_target" else (lower > p_a)
    assert not_more_often_than(int(false.sum()), reps, alpha), (false.mean(), alpha)
    assert drawn.min() >= plan.schedule[0] and drawn.max() <= plan.n
    if mode == "radius_target":  # most images stop before the budget
        assert drawn.mean() < plan.n


# ---- the engine: SmoothedClassifier with a sampling plan -------------------------------------------------
class Threshold(torch.nn.Module):
    """A 1-pixel two-class classifier: class 0 iff the pixel is below t. Under x + sigma z (real Gaussian) and
    under the sound lattice noise alike (t is half-way between lattice points), pA = Phi((t - x) / sigma)."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, y):
        below = (y.flatten(1)[:, :1] < self.t).float()
        return torch.cat([below, 1 - below], dim=1)


@pytest.mark.parametrize("sound", [False, True])
def test_engine_one_look_is_fixed_certify(sound):
    x = torch.tensor([10, 100, 128, 130, 140, 250], dtype=torch.float32).view(-1, 1, 1, 1) / 255
    seeds = [image_seed(7, i) for i in range(len(x))]
    kw = dict(num_classes=2, sigma=0.25, sound=sound)
    fixed = next(SmoothedClassifier(Threshold(128.5 / 255), **kw).certify_groups([(x, seeds)], 16, 3000, 0.01, 700))
    for mode in ("sequential", "radius_target"):
        plan = seq.SamplingPlan(mode, n=3000, alpha=0.01, looks=1, radii=(0.1,))
        one = next(SmoothedClassifier(Threshold(128.5 / 255), sampling=plan, **kw).certify_groups(
            [(x, seeds)], 16, 3000, 0.01, 700))
        np.testing.assert_array_equal(one.counts_estimation, fixed.counts_estimation)
        np.testing.assert_array_equal(one.radius, fixed.radius)
        np.testing.assert_array_equal(one.prediction, fixed.prediction)
        assert one.samples.tolist() == [3016] * len(x) == fixed.samples.tolist()


@pytest.mark.parametrize("mode,sound", [("fixed", False), ("sequential", False), ("radius_target", False),
                                        ("fixed", True), ("radius_target", True)])
def test_engine_false_certificate_rate_is_at_most_alpha(mode, sound):
    """600 one-pixel images whose pA lies just below the pA needed for r = 0.1: false certificates (a radius beyond
    the true one, Phi^-1(pA) sigma, or a "yes" at r = 0.1) at most alpha = 0.05 (binomial test, p = 0.001)."""
    alpha, sigma, radius, reps = 0.05, 0.25, 0.1, 600
    k = 128  # x on the lattice; t half-way between lattice points
    true_radius = radius - 0.004  # just short of the target
    t = (k + 0.5) / 255
    x0 = t - true_radius  # pA = Phi(true_radius / sigma) for x = x0; put x0 on the lattice below
    lattice_x = np.floor(x0 * 255) / 255
    true_radius = t - lattice_x
    assert true_radius < radius
    x = torch.full((reps, 1, 1, 1), float(lattice_x))
    plan = None if mode == "fixed" else seq.SamplingPlan(mode, n=2000, alpha=alpha, looks=5, radii=(radius,),
                                                          radius_tol=0.01)
    smoothed = SmoothedClassifier(Threshold(t), num_classes=2, sigma=sigma, sampling=plan, sound=sound)
    res = next(smoothed.certify_groups([(x, [image_seed(3, i) for i in range(reps)])], 16, 2000, alpha, 4096))
    false = (res.prediction == 0) & (res.radius > true_radius)
    assert (res.prediction != 1).all()
    assert not_more_often_than(int(false.sum()), reps, alpha), (false.mean(), alpha)
    if mode == "radius_target":
        assert set(res.decisions[:, 0]) <= {"yes", "no", "budget"}
        assert res.samples.mean() < 2016
