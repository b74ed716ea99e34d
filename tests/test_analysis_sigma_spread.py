"""Per-image sigma diagnostics (vrs.analysis.sigma_spread): spread, grid cells, the IQR success check,
rank correlations, per-class means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vrs.analysis.sigma_spread import (classifier_margin, grid_cell, iqr_in_grid_steps, iqr_spans_grid_step,
                                       rank_correlation, sigma_histogram, sigma_per_class, sigma_spread,
                                       sigma_summary)
from vrs.selection import median

GRID = [0.12, 0.25, 0.5, 1.0]


def test_sigma_spread_known_values():
    s = np.array([0.12, 0.25, 0.5, 1.0, 1.0])
    sp = sigma_spread(s)
    assert sp.n == 5 and sp.mean == pytest.approx(s.mean()) and sp.std == pytest.approx(np.sqrt(np.var(s)))
    # numpy's linear percentiles: positions 0.25 * 4 = 1 and 0.75 * 4 = 3 -> exact order statistics
    assert (sp.q25, sp.q75, sp.iqr) == (0.25, 1.0, 0.75)
    assert sp.log_std == pytest.approx(np.std(np.log(s)))
    one = sigma_spread(np.full(10, 0.5))
    assert one.std == 0.0 and one.iqr == 0.0 and one.log_std == 0.0


def test_grid_cells_are_those_of_the_deployed_sigma():
    rng = np.random.default_rng(0)
    s = np.exp(rng.uniform(np.log(0.05), np.log(2.0), 1000))
    s = np.concatenate([s, median.grid_boundaries(GRID), GRID])  # boundaries and grid values included
    assert grid_cell(s, GRID).tolist() == median.grid_cell(torch.as_tensor(s), GRID).tolist()
    assert grid_cell([0.12, 0.173, 0.1733, 0.35, 0.36, 0.7, 0.71], GRID).tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert sigma_histogram([0.12, 0.12, 0.5, 1.0, 0.9], GRID).tolist() == [2, 0, 1, 2]


@pytest.mark.parametrize("counts, steps", [
    ((3, 0, 0, 1), 0),      # 3 of 4 at 0.12: interpolated q75 would be 0.34 (another cell); the middle two are 0.12
    ((1, 0, 0, 3), 0),      # and its mirror image
    ((1, 1, 1, 1), 1),      # middle two: 0.25 and 0.5
    ((24, 76, 0, 0), 0),
    ((25, 75, 0, 0), 0),    # exactly 25 % below: the middle half (positions 25..74) is all at 0.25
    ((26, 74, 0, 0), 1),
    ((50, 0, 0, 50), 3),
    ((0, 0, 100, 0), 0),
    ((10, 80, 10, 0), 0),
    ((20, 30, 30, 20), 1),
    ((1, 0, 0, 0), 0),
])
def test_iqr_spans_grid_step(counts, steps):
    s = np.repeat(GRID, counts)
    np.random.default_rng(1).shuffle(s)
    assert iqr_in_grid_steps(s, GRID) == steps
    assert iqr_spans_grid_step(s, GRID) is (steps >= 1)


def test_iqr_spans_grid_step_brute_force_and_symmetry():
    """Against a direct reading of the definition (is the middle half of the sorted sigmas in one cell?),
    and reversing the order of sigma (1 / sigma on the reversed grid) gives the same answer."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        s = np.exp(rng.uniform(np.log(0.1), np.log(1.2), n))
        if rng.random() < 0.5:
            s = np.asarray(median.snap(s, GRID))  # on the grid, as the deployed sigma is: many ties
        middle = np.sort(s)[n // 4: math.ceil(3 * n / 4)]
        cells = {int(median.grid_cell(float(v), GRID)) for v in middle}
        assert iqr_spans_grid_step(s, GRID) is (len(cells) > 1)
        assert iqr_in_grid_steps(s, GRID) == max(cells) - min(cells)
        assert iqr_in_grid_steps(1 / s, sorted(1 / np.array(GRID))) == iqr_in_grid_steps(s, GRID)


def test_rank_correlation_known_values_nan_handling_and_constant_input():
    a = np.array([0.12, 0.25, 0.5, 1.0, 0.7])
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    b = np.array([1.0, 3.0, 2.0, 5.0, 4.0])  # ranks 1 3 2 5 4 vs 1 2 3 5 4: rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert rank_correlation(a, b) == pytest.approx(0.9)
    assert rank_correlation(np.append(a, np.nan), np.append(b, 7.0)) == pytest.approx(0.9)  # NaN pair dropped
    assert math.isnan(rank_correlation(np.full(5, 0.5), b))  # a collapsed selector: undefined, not 0
    assert math.isnan(rank_correlation(a[:2], b[:2]))


def test_rank_correlation_monte_carlo_against_the_gaussian_formula():
    """For a bivariate normal with correlation r, Spearman's rho = (6 / pi) arcsin(r / 2)."""
    rng = np.random.default_rng(3)
    r, n = 0.6, 20000
    x = rng.standard_normal(n)
    y = r * x + math.sqrt(1 - r * r) * rng.standard_normal(n)
    assert rank_correlation(np.exp(x), y) == pytest.approx(6 / math.pi * math.asin(r / 2), abs=0.01)


def test_classifier_margin_and_per_class_means():
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.85, 0.05]])
    assert classifier_margin(p).tolist() == pytest.approx([0.5, 0.1, 0.75])
    assert classifier_margin(p, labels=[0, 0, 2]).tolist() == pytest.approx([0.5, -0.1, -0.8])
    per = sigma_per_class([0.12, 0.25, 1.0, 0.5, 0.5], [3, 3, 1, 1, 7])
    assert list(per) == [1, 3, 7]
    assert per[1] == (0.75, 2) and per[3] == (pytest.approx(0.185), 2) and per[7] == (0.5, 1)


def test_sigma_summary_is_flat_and_complete():
    s = np.array([0.12, 0.12, 0.25, 1.0])
    out = sigma_summary(s, GRID, labels=[0, 1, 0, 1], margin=[0.9, 0.8, 0.5, 0.1],
                        oracle_sigma=[0.12, np.nan, 0.5, 1.0])
    assert out["sigma/count_0.12"] == 2 and out["sigma/count_0.5"] == 0 and out["sigma/spans_step"] == 1.0
    assert out["sigma/rho_margin"] == pytest.approx(rank_correlation(s, [0.9, 0.8, 0.5, 0.1]))
    assert out["sigma/mean_class1"] == pytest.approx(0.56)
    assert all(isinstance(v, float) for v in out.values())


def test_input_checks():
    with pytest.raises(ValueError):
        sigma_spread([])
    with pytest.raises(ValueError):
        sigma_histogram([0.1, -0.2], GRID)
    with pytest.raises(ValueError):
        grid_cell([0.1], [0.5, 0.25])
    with pytest.raises(ValueError):
        rank_correlation([1, 2, 3], [1, 2])
