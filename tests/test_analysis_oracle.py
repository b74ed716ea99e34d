"""Oracle headroom (vrs.analysis.oracle): hand-made answers and a brute force on random toy tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vrs.analysis.oracle import (NO_SIGMA, certified_oracle, cross_fitted_robust_oracle, outcome_agreement,
                                robust_oracle)
from vrs.analysis.outcomes import radius_if_correct, robust_under_all

GRID = [0.12, 0.25, 0.5, 1.0]


def test_certified_oracle_by_hand():
    # images: 0 best at 0.5; 1 tie between 0.25 and 1.0 -> 0.25; 2 never correct; 3 only 0.12 correct,
    # although 1.0 has a larger (wrong-class) radius
    radius = np.array([[0.3, 0.1, 0.0, 0.4],
                       [0.5, 0.9, 0.0, 0.0],
                       [0.8, 0.2, 0.0, 0.0],
                       [0.6, 0.9, 0.0, 2.0]])
    correct = np.array([[1, 1, 0, 1],
                        [1, 1, 0, 0],
                        [1, 0, 0, 0],
                        [1, 1, 0, 0]])
    o = certified_oracle(GRID, radius, correct)
    assert o.index.tolist() == [2, 1, NO_SIGMA, 0]
    assert o.sigma[[0, 1, 3]].tolist() == [0.5, 0.25, 0.12] and math.isnan(o.sigma[2])
    assert o.radius.tolist() == [0.8, 0.9, 0.0, 0.4]
    assert o.acr() == pytest.approx((0.8 + 0.9 + 0.4) / 4)
    assert o.certified_accuracy([0.0, 0.5, 0.85, 1.0]).tolist() == [0.75, 0.5, 0.25, 0.0]
    assert o.clean_accuracy() == 0.75


def test_robust_oracle_by_hand():
    # image 0: robust at 0.25 (not clean) and at 1.0 (clean) -> 1.0; image 1: robust only at 0.5, never
    # clean -> 0.5; image 2: clean at 0.25 and 0.5, never robust -> 0.25; image 3: nothing -> none;
    # image 4: robust and clean everywhere -> the smallest sigma
    robust = np.array([[0, 0, 0, 0, 1],
                       [1, 0, 0, 0, 1],
                       [0, 1, 0, 0, 1],
                       [1, 0, 0, 0, 1]])
    clean = np.array([[0, 0, 0, 0, 1],
                      [0, 0, 1, 0, 1],
                      [0, 0, 1, 0, 1],
                      [1, 0, 0, 0, 1]])
    o = robust_oracle(GRID, robust, clean)
    assert o.index.tolist() == [3, 2, 1, NO_SIGMA, 0]
    assert o.robust.tolist() == [1, 1, 0, 0, 1] and o.clean.tolist() == [1, 0, 1, 0, 1]
    assert o.robust_accuracy() == 0.6 and o.clean_accuracy() == 0.6


def brute_force_certified(radius, correct):
    index, rad = [], []
    for i in range(radius.shape[1]):
        best, best_r = NO_SIGMA, 0.0
        for s in range(radius.shape[0]):  # ascending sigma: a tie keeps the earlier (smaller) sigma
            if correct[s, i] and (best == NO_SIGMA or radius[s, i] > best_r):
                best, best_r = s, radius[s, i]
        index.append(best)
        rad.append(best_r)
    return np.array(index), np.array(rad)


@pytest.mark.parametrize("seed", range(5))
def test_certified_oracle_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    s, n = len(GRID), 200
    radius = np.round(rng.random((s, n)) * 8) / 4  # quarter steps: plenty of ties
    correct = (rng.random((s, n)) < 0.6).astype(int)
    o = certified_oracle(GRID, radius, correct)
    index, rad = brute_force_certified(radius, correct)
    assert o.index.tolist() == index.tolist() and o.radius.tolist() == rad.tolist()
    acr_rows = radius_if_correct(radius, correct)
    assert o.acr() == pytest.approx(acr_rows.max(0).mean())
    assert o.acr() >= acr_rows.mean(1).max()  # the oracle is never below the best fixed sigma
    for r in (0.0, 0.5, 1.25):
        want = np.mean([any(correct[k, i] and radius[k, i] >= r for k in range(s)) for i in range(n)])
        assert o.certified_accuracy([r])[0] == pytest.approx(want)


@pytest.mark.parametrize("seed", range(5))
def test_robust_oracle_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    s, n = len(GRID), 200
    clean = (rng.random((s, n)) < 0.8).astype(int)
    robust = (rng.random((s, n)) < 0.5).astype(int)
    o = robust_oracle(GRID, robust, clean)
    for i in range(n):
        ranked = [(robust[k, i], clean[k, i], -k) for k in range(s)]  # best pair, then smallest sigma
        best = max(ranked)
        want = -best[2] if best[:2] != (0, 0) else NO_SIGMA
        assert o.index[i] == want
    assert o.robust_accuracy() == pytest.approx(robust.max(0).mean())
    assert o.robust_accuracy() >= robust.mean(1).max()


def test_cross_fitted_oracle_takes_the_luck_out():
    # Coin flips independent of sigma (p = 0.5): the in-sample oracle reports 1 - 0.5^4 = 0.9375 although no
    # choice helps; chosen on one run and scored on an independent one it reports p. Monte Carlo, seed 7,
    # n = 20,000: SE of a share ~0.0035, tolerance 0.015 (> 4 SE).
    rng = np.random.default_rng(7)
    s, n, p = len(GRID), 20_000, 0.5
    draw = lambda q: (rng.random((s, n)) < q).astype(int)  # noqa: E731
    rob_a, cle_a, rob_b, cle_b = draw(p), draw(0.9), draw(p), draw(0.9)
    assert robust_oracle(GRID, rob_a, cle_a).robust_accuracy() == pytest.approx(1 - (1 - p) ** s, abs=0.015)
    cross = cross_fitted_robust_oracle(GRID, rob_a, cle_a, rob_b, cle_b)
    assert cross.robust_accuracy() == pytest.approx(p, abs=0.015)
    assert outcome_agreement(rob_a, rob_b) == pytest.approx([p * p + (1 - p) ** 2] * s, abs=0.015)
    # a repeatable label (the same outcomes in both runs) keeps the whole in-sample headroom, image by image
    same = cross_fitted_robust_oracle(GRID, rob_a, cle_a, rob_a, cle_a)
    ref = robust_oracle(GRID, rob_a, cle_a)
    assert same.robust_accuracy() == ref.robust_accuracy()
    assert np.array_equal(same.index[ref.index >= 0], ref.index[ref.index >= 0])
    assert np.all(same.index[ref.index < 0] == 0)  # no oracle sigma in the pick run: the smallest sigma


def test_oracle_input_checks_and_worst_case_over_attacks():
    with pytest.raises(ValueError):
        certified_oracle([0.5, 0.25], np.zeros((2, 3)), np.zeros((2, 3)))  # grid not increasing
    with pytest.raises(ValueError):
        certified_oracle(GRID, np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        robust_oracle(GRID, np.zeros((4, 3)), np.zeros((4, 2)))
    assert robust_under_all([1, 1, 0, 1], [1, 0, 0, 1]).tolist() == [1, 0, 0, 1]


def test_oracle_soft_labels_and_shares_equal_brute_force():
    from vrs.analysis.oracle import best_sigma_shares, oracle_soft_labels

    rng = np.random.default_rng(7)
    s, n, t = len(GRID), 50, 0.25
    radius = np.round(rng.random((s, n)) * 8) / 4 * (rng.random((s, n)) < 0.7)
    labels = oracle_soft_labels(radius, t)
    for i in range(n):
        den = sum(math.exp(radius[k, i] / t) for k in range(s))
        assert labels[i].tolist() == pytest.approx([math.exp(radius[k, i] / t) / den for k in range(s)])
    best = [min(k for k in range(s) if radius[k, i] == radius[:, i].max()) for i in range(n)]
    assert best_sigma_shares(radius).tolist() == pytest.approx([best.count(k) / n for k in range(s)])
    # large scores do not overflow; T -> 0 shares the mass between tied best sigmas
    big = oracle_soft_labels(np.array([[1000.0], [1000.0], [0.0], [999.0]]), 1e-3)
    assert big[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError):
        oracle_soft_labels(radius, 0.0)
