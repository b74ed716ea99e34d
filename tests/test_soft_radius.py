"""The soft certified radius of the `radius` objective (issue 17 section 2): closed form, clamps, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from vrs.errors import ConfigError
from vrs.selection.soft import soft_radius


def test_soft_radius_equals_closed_form_at_known_probabilities():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2]],
                         dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 0.25, 0.12], dtype=torch.float64)
    got = soft_radius(probs.log(), sigma)
    want = [0.5 / 2 * (norm.ppf(0.7) - norm.ppf(0.2)), 1.0 / 2 * (norm.ppf(0.5) - norm.ppf(0.25)),
            0.25 / 2 * (norm.ppf(0.9) - norm.ppf(0.05)), 0.0]
    assert got.tolist() == pytest.approx(want, abs=1e-10)


def test_soft_radius_two_classes_is_cohen_radius_at_p():
    """With two classes p2 = 1 - p1, so sigma/2 (Phi^-1(p) - Phi^-1(1 - p)) = sigma Phi^-1(p): Cohen's radius."""
    p = torch.tensor([0.6, 0.8, 0.99], dtype=torch.float64)
    got = soft_radius(torch.stack([p, 1 - p], 1).log(), torch.full((3,), 0.5, dtype=torch.float64))
    assert got.tolist() == pytest.approx((0.5 * norm.ppf(p.numpy())).tolist(), abs=1e-10)


def test_soft_radius_clamps_and_gradients_are_finite_at_the_clamps():
    eps = 1e-4
    # a one-hot row (p_top1 = 1, p_top2 = 0), a row exactly at the clamps, and a row with -inf log-probs
    log_probs = torch.tensor([[0.0, -math.inf, -math.inf], [math.log(1 - eps), math.log(eps), math.log(eps)],
                              [math.log(0.6), math.log(0.4), -math.inf]], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    r = soft_radius(log_probs, sigma, eps=eps)
    cap = 0.5 / 2 * 2 * norm.ppf(1 - eps)
    assert r[0].item() == pytest.approx(cap, rel=1e-9)
    assert r[1].item() == pytest.approx(cap, rel=1e-6)
    r.sum().backward()
    assert torch.isfinite(log_probs.grad).all() and torch.isfinite(sigma.grad).all()
    # d R / d sigma = (Phi^-1(p1) - Phi^-1(p2)) / 2
    assert sigma.grad[2].item() == pytest.approx((norm.ppf(0.6) - norm.ppf(0.4)) / 2, abs=1e-10)


def test_soft_radius_gradient_matches_finite_difference():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.12, 0.3, 0.6, 1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg, s: soft_radius(torch.log_softmax(lg, 1), s), (logits, sigma))


def test_soft_radius_scalar_sigma_half_precision_and_bad_input():
    probs = torch.tensor([[0.7, 0.3]])
    assert soft_radius(probs.log().bfloat16(), 0.5).dtype == torch.float32
    with pytest.raises(ConfigError):
        soft_radius(probs.log(), torch.tensor([0.5]), eps=0.5)
    with pytest.raises(ConfigError):
        soft_radius(torch.zeros(3, 1), torch.ones(3))
