"""Frontier comparison and standard errors (vrs.analysis, issue 17 section 1): known answers on synthetic
points, the paired SE against brute force and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vrs.analysis.frontier import frontier_gap, pareto_frontier, upper_hull
from vrs.analysis.outcomes import align_images, certified_at, radius_if_correct
from vrs.analysis.standard_error import accuracy_standard_error, mean_standard_error

N = 100


def ones(k: int, n: int = N, shift: int = 0) -> np.ndarray:
    """n per-image 0/1 outcomes with exactly k ones (rolled by `shift`), so the mean is exactly k / n."""
    return np.roll((np.arange(n) < k).astype(float), shift)


# fixed sigma -> (clean, robust) as counts out of 100; sigma = 1.0 is dominated by sigma = 0.5
FIXED = {0.12: (90, 60), 0.25: (88, 70), 0.5: (84, 74), 1.0: (78, 72)}
SIGMAS = list(FIXED)


def fixed_matrices():
    clean = np.stack([ones(c) for c, _ in FIXED.values()])
    robust = np.stack([ones(r) for _, r in FIXED.values()])
    return clean, robust


def test_standard_errors():
    assert accuracy_standard_error(0.8, 400) == pytest.approx(0.02)
    assert accuracy_standard_error(1.0, 10) == 0.0 and math.isnan(accuracy_standard_error(0.5, 0))
    v = np.array([0.0, 1.0, 2.0, 3.0])
    assert mean_standard_error(v) == pytest.approx(np.sqrt(np.var(v, ddof=1) / 4))
    assert math.isnan(mean_standard_error([1.0]))
    # for 0/1 outcomes the two agree up to n / (n - 1)
    x = ones(30)
    assert mean_standard_error(x) == pytest.approx(accuracy_standard_error(0.3, N) * math.sqrt(N / (N - 1)))


def test_pareto_frontier_and_hull():
    c, m = [0.90, 0.88, 0.84, 0.78], [0.60, 0.70, 0.74, 0.72]
    assert pareto_frontier(c, m).tolist() == [2, 1, 0]
    assert pareto_frontier([0.8, 0.8, 0.9], [0.5, 0.5, 0.4]).tolist() == [0, 2]  # exact duplicate kept once
    # a Pareto point below the chord of its neighbours is off the hull
    c, m = [0.80, 0.85, 0.90], [0.80, 0.60, 0.50]
    assert pareto_frontier(c, m).tolist() == [0, 1, 2]
    assert upper_hull(c, m).tolist() == [0, 2]


@pytest.mark.parametrize("vrs, gap, sigmas, w", [
    ((86, 76), +0.04, (0.5, 0.25), 0.5),    # above: frontier at 0.86 is (0.74 + 0.70) / 2 = 0.72
    ((89, 60), -0.05, (0.25, 0.12), 0.5),   # below: frontier at 0.89 is 0.65
    ((88, 70), 0.0, (0.5, 0.25), 0.0),      # on a frontier point
    ((80, 70), -0.04, (0.5, 0.5), 1.0),     # inside the range, left of the frontier: flat at sigma = 0.5
])
def test_frontier_gap_known_answers(vrs, gap, sigmas, w):
    clean, robust = fixed_matrices()
    res = frontier_gap(SIGMAS, clean, robust, ones(vrs[0]), ones(vrs[1], shift=3))
    assert not res.outside and res.n == N
    assert res.gap == pytest.approx(gap, abs=1e-12)
    assert res.sigmas == sigmas and res.weight == pytest.approx(w, abs=1e-12)
    assert res.frontier == pytest.approx(vrs[1] / N - gap, abs=1e-12)
    assert res.se > 0 and res.z == pytest.approx(res.gap / res.se)
    assert res.verdict == f"{res.gap:+.3f} ({res.z:+.1f} SE)"


@pytest.mark.parametrize("vrs_clean", [95, 70])
def test_frontier_gap_outside_the_fixed_sigma_range(vrs_clean):
    clean, robust = fixed_matrices()
    res = frontier_gap(SIGMAS, clean, robust, ones(vrs_clean), ones(80))
    assert res.outside and res.verdict == "outside the fixed-sigma range"
    assert math.isnan(res.gap) and math.isnan(res.se) and math.isnan(res.z) and res.sigmas is None


def test_hull_is_the_stricter_reference():
    clean = np.stack([ones(80), ones(85), ones(90)])
    robust = np.stack([ones(80), ones(60), ones(50)])
    vc, vm = ones(85), ones(63)
    assert frontier_gap([1.0, 0.5, 0.25], clean, robust, vc, vm).gap == pytest.approx(0.03)
    hull = frontier_gap([1.0, 0.5, 0.25], clean, robust, vc, vm, frontier="hull")
    assert hull.gap == pytest.approx(-0.02) and hull.sigmas == (1.0, 0.25)


def test_identical_outcomes_give_zero_gap_and_zero_se():
    rng = np.random.default_rng(0)
    clean = (rng.random((4, 300)) < [[0.9], [0.88], [0.84], [0.78]]).astype(float)
    robust = (rng.random((4, 300)) < [[0.6], [0.7], [0.74], [0.72]]).astype(float)
    front = pareto_frontier(clean.mean(1), robust.mean(1))
    for k in front:  # VRS that reproduces a frontier sigma image by image
        res = frontier_gap(SIGMAS, clean, robust, clean[k], robust[k])
        assert res.gap == pytest.approx(0.0, abs=1e-12) and res.se == pytest.approx(0.0, abs=1e-12)
        assert res.se_fixed_w == pytest.approx(0.0, abs=1e-12) and math.isnan(res.z)
        assert res.verdict in ("+0.000 (SE 0)", "-0.000 (SE 0)")


def test_paired_se_is_the_brute_force_std_of_the_differences():
    rng = np.random.default_rng(1)
    clean, robust = fixed_matrices()
    vm = (rng.random(N) < 0.75).astype(float)
    res = frontier_gap(SIGMAS, clean, robust, ones(86), vm)
    d = [vm[i] - (0.5 * robust[2, i] + 0.5 * robust[1, i]) for i in range(N)]  # w = 0.5 on sigma 0.5, 0.25
    assert res.se_fixed_w == pytest.approx(np.std(d, ddof=1) / math.sqrt(N))
    assert res.gap == pytest.approx(np.mean(d))


def test_fixed_w_se_matches_the_exact_se_on_a_toy_with_known_correlation():
    """Clean outcomes fixed (so w = 1/2 is fixed); metrics share a per-image latent u ~ Bern(0.7) and each
    flips it independently (a: 0.05, b: 0.4, VRS: 0.1). Var(d) is computed exactly by enumerating the 16
    outcome combinations; the SE from one sample and the spread of the gap over 2,000 replicate samples
    must both match sqrt(Var(d) / n)."""
    n, reps = 400, 2000
    pu, fa, fb, fv = 0.7, 0.05, 0.4, 0.1
    w = 0.5
    # exact Var(d), d = m_v - (w m_a + (1 - w) m_b)
    vals, probs = [], []
    for u in (0, 1):
        for xa in (0, 1):
            for xb in (0, 1):
                for xv in (0, 1):
                    p = (pu if u else 1 - pu) * (fa if xa else 1 - fa) * (fb if xb else 1 - fb) * (fv if xv else 1 - fv)
                    vals.append((u ^ xv) - (w * (u ^ xa) + (1 - w) * (u ^ xb)))
                    probs.append(p)
    vals, probs = np.array(vals), np.array(probs)
    exact_se = math.sqrt((probs @ vals**2 - (probs @ vals) ** 2) / n)
    # clean: a (sigma 0.5) 0.80, b (sigma 0.25) 0.90, VRS 0.85 -> w = 1/2
    clean = np.stack([ones(320, n), ones(360, n)])
    vc = ones(340, n)
    rng = np.random.default_rng(2)
    gaps, ses = [], []
    for _ in range(reps):
        u = rng.random(n) < pu
        ma = (u ^ (rng.random(n) < fa)).astype(float)
        mb = (u ^ (rng.random(n) < fb)).astype(float)
        mv = (u ^ (rng.random(n) < fv)).astype(float)
        # robust accuracy of a (0.68) is 4.5 SE above b's (0.54): both stay on the frontier
        res = frontier_gap([0.5, 0.25], clean, np.stack([ma, mb]), vc, mv)
        assert res.weight == pytest.approx(w)
        gaps.append(res.gap)
        ses.append(res.se_fixed_w)
    assert np.mean(ses) == pytest.approx(exact_se, rel=0.03)
    assert np.std(gaps, ddof=1) == pytest.approx(exact_se, rel=0.06)


def test_delta_method_se_matches_monte_carlo_when_w_is_estimated():
    """Images i.i.d.: a per-image difficulty u ~ U(0, 1) decides every outcome (each flipped with prob. 0.02),
    so clean and robust outcomes of all three defences are strongly correlated and the weight w moves with
    the estimated clean accuracies (its spread over replicates is about 0.09). The frontier is steep
    (slope -1.4). Over 2,000 replicate samples of 400 images, the spread of the gap must match the mean
    delta-method SE within 6 % (0.0228 vs 0.0224); the fixed-w SE understates it (0.014 here), which is
    why z uses se."""
    rng = np.random.default_rng(3)
    n, reps = 400, 2000

    def outcome(u, t):
        return ((u < t) ^ (rng.random(n) < 0.02)).astype(float)

    gaps, ses, ses_fixed = [], [], []
    for _ in range(reps):
        u = rng.random(n)
        clean = np.stack([outcome(u, 0.78), outcome(u, 0.92)])   # sigma 1.0, 0.25
        robust = np.stack([outcome(u, 0.70), outcome(u, 0.50)])
        res = frontier_gap([1.0, 0.25], clean, robust, outcome(u, 0.85), outcome(u, 0.62))
        gaps.append(res.gap)
        ses.append(res.se)
        ses_fixed.append(res.se_fixed_w)
    mc = np.std(gaps, ddof=1)
    assert np.mean(ses) == pytest.approx(mc, rel=0.06)
    assert np.mean(ses_fixed) < 0.7 * mc


def test_acr_outcomes_and_alignment():
    radius = np.array([0.5, 0.0, 1.2, 0.3])
    correct = np.array([1, 0, 1, 0])
    assert radius_if_correct(radius, correct).tolist() == [0.5, 0.0, 1.2, 0.0]
    assert certified_at(radius, correct, 0.5).tolist() == [1.0, 0.0, 1.0, 0.0]
    common, (pa, pb) = align_images([40, 0, 20, 60], [20, 40, 0])
    assert common.tolist() == [0, 20, 40]
    assert np.array([40, 0, 20, 60])[pa].tolist() == [0, 20, 40] and np.array([20, 40, 0])[pb].tolist() == [0, 20, 40]
    with pytest.raises(ValueError):
        align_images([0, 0, 20], [0, 20])


def test_frontier_gap_on_acr_real_valued_outcomes():
    """ACR: per-image radius if correct; the same formulas apply to real-valued outcomes."""
    rng = np.random.default_rng(4)
    clean = np.stack([ones(80), ones(90)])
    acr = np.stack([rng.random(N) * 2, rng.random(N)])
    vm = rng.random(N) * 1.5
    res = frontier_gap([1.0, 0.25], clean, acr, ones(85), vm)
    want = vm.mean() - (0.5 * acr[0].mean() + 0.5 * acr[1].mean())
    assert res.gap == pytest.approx(want) and res.weight == pytest.approx(0.5)


def test_frontier_gap_rejects_mismatched_shapes_and_nan():
    clean, robust = fixed_matrices()
    with pytest.raises(ValueError):
        frontier_gap(SIGMAS, clean, robust, ones(86, N + 1), ones(70, N + 1))
    with pytest.raises(ValueError):
        frontier_gap(SIGMAS[:3], clean, robust, ones(86), ones(70))
    bad = robust.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        frontier_gap(SIGMAS, clean, bad, ones(86), ones(70))
    with pytest.raises(ValueError):
        frontier_gap(SIGMAS, clean, robust, ones(86), ones(70), frontier="convex")
    with pytest.raises(ValueError):
        frontier_gap(SIGMAS, clean, robust, clean, ones(70))  # VRS outcomes must be 1-D


def test_constant_difference_gives_zero_se_and_infinite_z():
    """VRS radii exactly 0.1 above one frontier sigma's on every image (same clean outcomes): SE 0, z = +inf."""
    clean = np.stack([ones(80), ones(90)])
    acr = np.stack([np.linspace(0, 2, N), np.linspace(0, 1, N)])
    res = frontier_gap([1.0, 0.25], clean, acr, clean[1], acr[1] + 0.1)
    assert res.gap == pytest.approx(0.1) and res.se == 0.0 and res.z == math.inf
    assert res.verdict == "+0.100 (SE 0)"
