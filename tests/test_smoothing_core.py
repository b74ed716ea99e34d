"""The statistics of Cohen's PREDICT / CERTIFY (vrs.smoothing.core) against brute force and known values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import binom, norm

from vrs.smoothing import core
from vrs.smoothing.core import ABSTAIN


def brute_force_lower_bound(n_a: int, n: int, alpha: float) -> float:
    """Clopper-Pearson by its definition: the p at which P[Binomial(n, p) >= n_a] = alpha (bisection)."""
    if n_a == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if binom.sf(n_a - 1, n, mid) < alpha:  # P[X >= n_a] grows with p
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("n_a,n,alpha", [(1, 10, 0.05), (7, 10, 0.05), (10, 10, 0.001), (55, 100, 0.001),
                                         (999, 1000, 0.01), (9000, 10000, 0.001), (0, 30, 0.05)])
def test_clopper_pearson_matches_its_definition(n_a, n, alpha):
    assert core.lower_confidence_bound(n_a, n, alpha) == pytest.approx(brute_force_lower_bound(n_a, n, alpha),
                                                                       abs=1e-10)


def test_clopper_pearson_known_values_and_vectorised():
    # All n agree: the bound is alpha^(1/n); Cohen's defaults cap the radius at 3.81 sigma.
    assert core.lower_confidence_bound(100_000, 100_000, 0.001) == pytest.approx(0.001 ** 1e-5, rel=1e-12)
    assert core.max_certified_radius(100_000, 0.001, sigma=0.25) == pytest.approx(0.25 * 3.8115, abs=1e-4)
    assert core.lower_confidence_bound(0, 50, 0.05) == 0.0
    got = core.lower_confidence_bound(np.array([0, 5, 50]), np.array([50, 50, 50]), 0.05)
    want = [brute_force_lower_bound(k, 50, 0.05) for k in (0, 5, 50)]
    np.testing.assert_allclose(got, want, atol=1e-10)
    with pytest.raises(ValueError):
        core.lower_confidence_bound(11, 10, 0.05)


def test_clopper_pearson_coverage_by_simulation():
    """P[pA_lower > pA] <= alpha, for several true pA (one-sided bound is conservative)."""
    rng = np.random.default_rng(0)
    alpha, n, trials = 0.05, 60, 40_000
    for p in (0.3, 0.62, 0.9, 0.985):
        n_a = rng.binomial(n, p, size=trials)
        bounds = core.lower_confidence_bound(n_a, np.full(trials, n), alpha)
        rate = np.mean(bounds > p)
        # the exceedance count must not be significantly larger than alpha * trials
        assert binom.sf(int(rate * trials) - 1, trials, alpha) > 1e-4, (p, rate)


def test_binomial_pvalue_and_predict_abstain_rule():
    # two-sided test at 1/2 with all n agreeing: p = 2 * 2^-n
    assert core.binomial_pvalue(10, 0) == pytest.approx(2 * 0.5 ** 10)
    assert core.binomial_pvalue(5, 5) == 1.0
    assert core.binomial_pvalue(0, 0) == 1.0
    counts = np.array([[10, 0, 0],   # p = 0.00195 > 0.001: abstain
                       [0, 11, 0],   # p = 0.00098 <= 0.001: class 1
                       [3, 50, 50],  # tie at the top: abstain
                       [0, 60, 40],  # p = 0.057: abstain
                       [500, 380, 0]])  # p ~ 6e-5: class 0
    np.testing.assert_array_equal(core.predict_from_counts(counts, 0.001), [ABSTAIN, 1, ABSTAIN, ABSTAIN, 0])
    np.testing.assert_array_equal(core.predict_from_counts(counts, 0.1), [0, 1, ABSTAIN, 1, 0])


def test_certify_from_counts_and_radius():
    sel = np.array([[90, 10], [2, 98], [60, 40], [100, 0]])
    est = np.array([[900, 100], [5, 995], [510, 490], [0, 1000]])
    out = core.certify_from_counts(sel, est, 0.001, sigma=np.array([0.25, 0.5, 0.25, 1.0]))
    # row 0: c_A = 0, n_A = 900; row 1: c_A = 1, n_A = 995; row 2: n_A = 510 -> pA_lower < 1/2 -> abstain;
    # row 3: the guess (class 0) never shows up in the estimation samples -> n_A = 0 -> abstain.
    np.testing.assert_array_equal(out["c_a"], [0, 1, 0, 0])
    np.testing.assert_array_equal(out["n_a"], [900, 995, 510, 0])
    np.testing.assert_array_equal(out["prediction"], [0, 1, ABSTAIN, ABSTAIN])
    for i, (na, s) in enumerate([(900, 0.25), (995, 0.5)]):
        want = s * norm.ppf(brute_force_lower_bound(na, 1000, 0.001))
        assert out["radius"][i] == pytest.approx(want, rel=1e-9)
    assert out["radius"][2] == 0.0 and out["radius"][3] == 0.0
    assert core.radius_from_lower_bound(0.5, 1.0) == 0.0  # pA_lower = 1/2 exactly: radius 0, not abstain
    assert core.radius_from_lower_bound(0.4999, 1.0) == 0.0


def test_sample_size_limits_by_brute_force():
    """n = 10 at alpha = 0.001: PREDICT always abstains (users.md #4); the helpers find the exact limits."""
    alpha = 0.001
    n_pred = core.min_samples_to_predict(alpha)
    n_cert = core.min_samples_to_certify(alpha)
    assert n_pred == 11 and n_cert == 10
    for n in range(1, 15):
        best_pred = core.predict_from_counts(np.array([[n, 0]]), alpha)[0]  # the most favourable counts
        assert (best_pred == ABSTAIN) == (n < n_pred)
        best_cert = core.certify_from_counts(np.array([[1, 0]]), np.array([[n, 0]]), alpha, 1.0)["prediction"][0]
        assert (best_cert == ABSTAIN) == (n < n_cert)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = core.warn_sample_size(10, alpha, "predict")
    assert msg and "n=10" in msg and "abstain" in msg
    assert any(issubclass(w.category, core.SampleSizeWarning) for w in caught)
    assert core.sample_size_problem(100_000, alpha, "certify") is None
    assert core.sample_size_problem(11, alpha, "predict") is None


def test_certified_accuracy_conventions_hand_example():
    # four points: certified correct (r=0.5), abstained, certified correct (r=1.2), certified but wrong (r=0.3)
    radii = [0.5, 0.0, 1.2, 0.3]
    correct = [True, False, True, False]
    grid = [0.0, 0.5, 0.50001, 1.0, 1.2, 1.5]
    # the denominator is all 4 points; radius >= r is inclusive
    np.testing.assert_allclose(core.certified_accuracy(radii, correct, grid), [0.5, 0.5, 0.25, 0.25, 0.25, 0.0])
    assert core.average_certified_radius(radii, correct) == pytest.approx((0.5 + 1.2) / 4)
    assert core.abstain_rate([3, ABSTAIN, 1, 2]) == 0.25
    # a toolkit dropping the abstention from the denominator would report 2/3 at r = 0; we do not
    assert core.certified_accuracy(radii, correct, [0.0])[0] == 0.5
    assert math.isnan(core.average_certified_radius([], []))
    with pytest.raises(ValueError):
        core.certified_accuracy([0.1], [True, False], [0.0])
