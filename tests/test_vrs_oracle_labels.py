"""The oracle labels of `objective=oracle_labels` (vrs.selection.oracle_labels): vote shares against their analytic
probability, the soft targets against a brute-force computation, the cache, and the objective's errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from vrs.errors import ConfigError, VRSError
from vrs.selection.objectives import TrainingSplit, build_objective
from vrs.selection.oracle_labels import (LAMBDA_STEPS, OracleTable, balance_weights, grid_log_probs, grid_votes, load_or_compute,
                                         soft_targets)

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (0.12, 0.25, 0.5, 1.0)


class Halfplane(torch.nn.Module):
    """Two classes split by the hyperplane w . x = 0 (w the first pixel axis): f(x) = (-x_0, x_0) * 100."""

    def forward(self, x):
        s = x.flatten(1)[:, 0]
        return torch.stack([-100 * s, 100 * s], 1)


def test_vote_shares_match_the_analytic_probability():
    """At signed distance d from the boundary, the vote for the label's side has probability Phi(d / sigma)."""
    d = torch.tensor([0.05, 0.2, 0.6, -0.3])
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = d.abs()
    y = torch.ones(4, dtype=torch.long)
    y[3] = 0  # on the other side: x_0 = |d| > 0 votes for class 1, so the label 0 is the minority
    votes = 4000
    count_y, top = grid_votes(Halfplane(), x, y, GRID, votes, seed=0)
    for i in range(4):
        for j, s in enumerate(GRID):
            p = norm.cdf(float(d[i]) / s)
            se = math.sqrt(p * (1 - p) / votes) + 1e-9
            assert abs(float(count_y[i, j]) / votes - p) < 4.5 * se + 1e-3, (i, s, float(count_y[i, j]) / votes, p)
            assert bool(top[i, j]) == (p > 0.5 and float(count_y[i, j]) > votes / 2)
    again = grid_votes(Halfplane(), x, y, GRID, votes, seed=0)
    assert torch.equal(again[0], count_y)  # seeded: the same table


def brute_force_targets(count_y, top, votes, lam, cap, temperature, reweight):
    """The labels of one batch, image by image and sigma by sigma, from the formula in the objective's docstring."""
    n, g = len(count_y), len(count_y[0])
    p = [[(count_y[i][j] + 0.5) / (votes + 1) for j in range(g)] for i in range(n)]
    r = [[GRID[j] * norm.ppf(p[i][j]) if (top[i][j] and p[i][j] > 0.5) else 0.0 for j in range(g)] for i in range(n)]

    def score(i, j, lam_):
        return (1 - lam_) * p[i][j] + lam_ * min(r[i][j], cap) / cap

    out, weights = [], []
    for i in range(n):
        lam_i = round(lam[i] * LAMBDA_STEPS) / LAMBDA_STEPS  # q is read at the nearest tabulated lambda
        best = [max(range(g), key=lambda j: (score(k, j, lam_i), -j)) for k in range(n)]  # ties: smaller sigma
        q = [best.count(j) / n for j in range(g)]
        e = [math.exp(score(i, j, lam[i]) / temperature) for j in range(g)]
        out.append([e[j] / sum(e) for j in range(g)])
        mine = max(range(g), key=lambda j: (score(i, j, lam[i]), -j))
        weights.append(1 / (g * max(q[mine], 0.025)) if reweight else 1.0)
    return np.array(out), np.array(weights)


@pytest.mark.parametrize("reweight", [True, False])
def test_soft_targets_equal_a_brute_force_computation(reweight):
    gen = np.random.default_rng(0)
    votes, n = 20, 12
    count_y = gen.integers(0, votes + 1, size=(n, 4))
    top = count_y > votes // 2
    top[0, 2] = False  # y holds the most votes but is not on top (a tie with another class): no radius
    obj = build_objective({"_target_": "vrs.selection.objectives.oracle_labels.OracleLabelsObjective",
                           "votes": votes, "temperature": 0.1, "radius_cap": 0.5, "reweight": reweight})
    obj.table = OracleTable.from_votes(torch.as_tensor(count_y), torch.as_tensor(top), GRID, votes, 0.5)
    lam = np.array([0.0, 0.3, 0.52, 1.0, 0.5, 0.7, 0.1, 0.9, 0.25, 0.6, 0.8, 0.4])
    got, got_w = (t.numpy() for t in obj.targets(torch.arange(n), torch.as_tensor(lam)))
    want, want_w = brute_force_targets(count_y.tolist(), top.tolist(), votes, lam.tolist(), 0.5, 0.1, reweight)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-9)
    assert np.allclose(got.sum(1), 1.0)


def test_soft_targets_concentrate_on_the_best_sigma_as_the_temperature_falls():
    score = torch.tensor([[0.1, 0.9, 0.3]], dtype=torch.float64)
    assert torch.allclose(soft_targets(score, 1e-4), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    flat = soft_targets(score, 1e4)
    assert torch.allclose(flat, torch.full((1, 3), 1 / 3, dtype=torch.float64), atol=1e-4)


def test_balance_weights_give_each_best_sigma_an_equal_share_of_the_loss():
    """Three images best at sigma_0, one at sigma_1 (q = 3/4, 1/4, 0): weights 1/(2 * 3/4) and 1/(2 * 1/4); each
    best sigma then carries half of the total weight, and sigma_2 (best for none) carries none."""
    score = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.2, 0.1], [0.9, 0.9, 0.0], [0.0, 1.0, 0.2]])
    q = torch.tensor([0.75, 0.25, 0.0]).expand(4, 3)
    w = balance_weights(score[:, :2], q[:, :2])  # over the first two sigmas (G = 2); the tie goes to sigma_0
    assert torch.allclose(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert math.isclose(float(w[:3].sum()), float(w[3:].sum()))
    rare = balance_weights(score[:, :2], torch.tensor([0.999, 0.001]).expand(4, 2))
    assert math.isclose(float(rare[3]), 1 / (2 * 0.025))  # a rare best sigma: the weight is capped


def test_grid_log_probs_peak_at_the_nearest_grid_sigma():
    log_sigma = torch.log(torch.tensor([0.12, 0.3, 0.9]))
    probs = grid_log_probs(log_sigma, GRID, 0.35).exp()
    assert probs.argmax(1).tolist() == [0, 1, 3] and torch.allclose(probs.sum(1), torch.ones(3))


def test_labels_are_cached_per_base_classifier_and_a_bad_cache_is_recomputed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vrs.selection.oracle_labels")
    x = torch.rand(6, 1, 2, 2)
    y = torch.randint(0, 2, (6,))
    f = Halfplane()
    first = load_or_compute(f, f, x, y, GRID, 16, 0, tmp_path)
    files = list(tmp_path.glob("oracle_labels_*.pt"))
    assert len(files) == 1
    again = load_or_compute(f, f, x, y, GRID, 16, 0, tmp_path)
    assert torch.equal(first[0], again[0]) and "from the cache" in caplog.text
    load_or_compute(f, f, x, y, GRID, 16, 1, tmp_path)  # another seed: another key
    assert len(list(tmp_path.glob("oracle_labels_*.pt"))) == 2
    files[0].write_bytes(b"torn")
    third = load_or_compute(f, f, x, y, GRID, 16, 0, tmp_path)
    assert torch.equal(first[0], third[0]) and "unreadable" in caplog.text


def test_oracle_labels_objective_refuses_bad_settings_and_missing_labels():
    base = {"_target_": "vrs.selection.objectives.oracle_labels.OracleLabelsObjective"}
    for key, bad in (("votes", 0), ("temperature", 0), ("radius_cap", -1), ("consistency", -0.5), ("width", 0)):
        with pytest.raises(ConfigError, match=f"objective.{key}"):
            build_objective({**base, key: bad})
    obj = build_objective(base)
    with pytest.raises(VRSError, match="grid"):
        obj.prepare(TrainingSplit(Halfplane(), Halfplane(), torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long),
                                  None, torch.device("cpu"), None))
    from vrs.selection.networks import SelectorOutput
    from vrs.selection.objectives import ObjectiveInput

    s = torch.full((2,), 0.5)
    inp = ObjectiveInput(torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2),
                         SelectorOutput(s, s.log(), None, s.log()), s, torch.log(torch.full((2, 2), 0.5)), None)
    with pytest.raises(VRSError, match="indices"):
        obj(inp)
    assert torch.allclose(obj.evaluate(inp).loss, torch.full((2,), math.log(2)))  # validation: the soft CE
