"""The sampling engine (vrs.smoothing.SmoothedClassifier) against a base classifier whose smoothed
behaviour is known in closed form.

A linear two-class classifier f(x) = [w.x + b > 0] with ||w|| = 1: under x + sigma z the class-1 score
w.x + b + sigma (w.z) is N(m, sigma^2) with margin m = w.x + b, so P[f(x + sigma z) = 1] = Phi(m / sigma),
the smoothed classifier is the same half-space, and its true robust radius at x is |m|.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from torch import nn

from vrs.errors import ConfigError
from vrs.smoothing import SmoothedClassifier
from vrs.smoothing.core import ABSTAIN
from vrs.smoothing.smoothed import image_seed

D_SIDE = 4  # 1 x 4 x 4 inputs, d = 16
W = torch.full((D_SIDE * D_SIDE,), 1.0 / D_SIDE)  # unit norm


class Linear2(nn.Module):
    """logits = (0, w.x + b) on flattened [0,1] images: class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor = W, b: float = -0.5 * D_SIDE):
        super().__init__()
        self.w = nn.Parameter(w.clone(), requires_grad=False)
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def images_with_margins(margins) -> torch.Tensor:
    """Images x = 0.5 + m * w: w.x + b = m for b = -0.5 * sum(w) (pixels stay in [0,1] for |m| <= 2)."""
    m = torch.as_tensor(margins, dtype=torch.float32)
    return (0.5 + m[:, None] * W[None]).view(-1, 1, D_SIDE, D_SIDE).clamp(0, 1)


def brute_force_lower_bound(n_a: int, n: int, alpha: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom.sf(n_a - 1, n, mid) < alpha else (lo, mid)
    return (lo + hi) / 2


def not_more_often_than(count: int, trials: int, rate: float) -> bool:
    """False when `count` events out of `trials` are significantly (p < 0.001) more than `rate` allows."""
    return binomtest(count, trials, rate, alternative="greater").pvalue > 1e-3


def test_certify_is_sound_and_exact_against_the_analytic_answer():
    sigma, alpha, n0, n = 0.5, 0.05, 32, 400
    margins = np.tile(np.linspace(-1.2, 1.2, 25), 16)  # 400 images, pA from 0.008 to 0.992
    smoothed = SmoothedClassifier(Linear2(), num_classes=2, sigma=sigma)
    x = images_with_margins(margins)
    true_margin = (x.flatten(1) @ W - 0.5 * D_SIDE).double().numpy()
    true_class = (true_margin > 0).astype(int)
    violations = trials = 0
    na_sum = np.zeros(len(margins))
    pa = norm.cdf(np.abs(true_margin) / sigma)
    for rep in range(5):  # 2,000 certificates in all, each with its own noise
        seeds = [image_seed(rep, i) for i in range(len(margins))]
        res = next(smoothed.certify_groups([(x, seeds, None)], n0, n, alpha, batch_size=1000))
        certified = res.prediction != ABSTAIN
        # a certificate is wrong if it names the wrong class, or a radius beyond the true one
        wrong = certified & ((res.prediction != true_class) | (res.radius > np.abs(true_margin)))
        violations += int(wrong.sum())
        trials += len(margins)
        # radius == sigma * Phi^-1(pA_lower), pA_lower recomputed by brute force from n_A
        for i in np.flatnonzero(certified)[::7]:
            want = sigma * norm.ppf(brute_force_lower_bound(int(res.n_a[i]), n, alpha))
            assert res.radius[i] == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert np.all(res.radius[~certified] == 0.0)
        assert np.all(res.counts_selection.sum(1) == n0) and np.all(res.counts_estimation.sum(1) == n)
        # n_A of the true class follows Binomial(n, Phi(|m| / sigma)) where c_A is the true class
        ok = res.c_a == true_class
        na_sum[ok] += res.n_a[ok]
        na_sum[~ok] += n - res.n_a[~ok]
    assert not_more_often_than(violations, trials, alpha), (violations, trials)
    # the engine really uses N(0, sigma^2) noise: the mean count of the true class matches n * pA
    mean_pa = na_sum.sum() / (5 * n * len(margins))
    se = np.sqrt((pa * (1 - pa)).sum() / (5 * n)) / len(margins)
    assert abs(mean_pa - pa.mean()) < 5 * se, (mean_pa, pa.mean(), se)
    # and the certificates are not vacuous: well-separated points do get large radii
    far = np.abs(true_margin) > 1.0
    assert np.mean(res.prediction[far] == true_class[far]) > 0.95


def test_predict_abstain_rule_at_a_tie_and_near_it():
    alpha, n = 0.05, 200
    smoothed = SmoothedClassifier(Linear2(), num_classes=2, sigma=0.5)
    # pA = 1/2 exactly (on the decision boundary): any answer is a mistake, allowed with prob <= alpha
    x0 = images_with_margins(np.zeros(600))
    pred = smoothed.predict(x0, n, alpha, batch_size=4096, seeds=[image_seed(1, i) for i in range(600)])
    answered = int((pred != ABSTAIN).sum())
    assert not_more_often_than(answered, 600, alpha), answered
    # pA(class 1) = 0.55: answering class 0 is wrong, at most alpha of the time; PREDICT must still answer often
    # when pA is large
    m = 0.5 * norm.ppf(0.55)
    pred = smoothed.predict(images_with_margins(np.full(600, m)), n, alpha, batch_size=4096,
                            seeds=[image_seed(2, i) for i in range(600)])
    assert not_more_often_than(int((pred == 0).sum()), 600, alpha)
    pred = smoothed.predict(images_with_margins(np.full(100, 1.0)), n, alpha, batch_size=4096,
                            seeds=[image_seed(3, i) for i in range(100)])
    assert (pred == 1).float().mean() > 0.97


def test_noise_depends_only_on_the_image_seed():
    """Counts do not depend on the batch size, on the other images in the batch, or on the group split."""
    smoothed = SmoothedClassifier(Linear2(), num_classes=2, sigma=0.7, noise_block=64)
    x = images_with_margins(np.linspace(-0.5, 0.5, 6))
    seeds = [image_seed(7, i) for i in range(6)]
    full = next(smoothed.certify_groups([(x, seeds)], 50, 300, 0.01, batch_size=128))
    for bs in (1, 37, 1000):
        again = next(smoothed.certify_groups([(x, seeds)], 50, 300, 0.01, batch_size=bs))
        np.testing.assert_array_equal(again.counts_estimation, full.counts_estimation)
        np.testing.assert_array_equal(again.counts_selection, full.counts_selection)
    parts = list(smoothed.certify_groups([(x[4:], seeds[4:]), (x[:1], seeds[:1]), (x[1:4], seeds[1:4])],
                                         50, 300, 0.01, batch_size=100))
    est = np.concatenate([parts[1].counts_estimation, parts[2].counts_estimation, parts[0].counts_estimation])
    np.testing.assert_array_equal(est, full.counts_estimation)
    # a different seed gives different noise
    other = next(smoothed.certify_groups([(x, [s + 1 for s in seeds])], 50, 300, 0.01, batch_size=128))
    assert not np.array_equal(other.counts_estimation, full.counts_estimation)


def test_per_input_sigma_and_python_api():
    torch.manual_seed(0)
    sigmas = torch.tensor([0.25, 0.5, 1.0, 2.0])
    smoothed = SmoothedClassifier(Linear2(), num_classes=2, sigma=sigmas)
    x = images_with_margins(np.full(4, 0.5))
    res = next(smoothed.certify_groups([(x, [11, 12, 13, 14])], 100, 20_000, 0.001, batch_size=3000))
    np.testing.assert_allclose(res.sigma, sigmas.numpy())
    # the fraction of class-1 samples follows Phi(0.5 / sigma_i)
    np.testing.assert_allclose(res.n_a / 20_000, norm.cdf(0.5 / sigmas.numpy()), atol=0.015)
    ok = res.prediction != ABSTAIN
    np.testing.assert_allclose(res.radius[ok], sigmas.numpy()[ok] * norm.ppf(res.p_lower[ok]))
    pred, radius = smoothed.certify(x, 100, 2000, 0.001, batch_size=500)  # seeds from torch's RNG
    assert pred.dtype == torch.int64 and radius.dtype == torch.float64 and pred.shape == radius.shape == (4,)
    assert smoothed.predict(x, 500, 0.001, 256, sigma=0.25).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("precision,channels_last", [("bf16", True), ("fp32", True)])
def test_precision_and_memory_format_options(precision, channels_last):
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    torch.manual_seed(0)
    x = torch.rand(3, 1, 4, 4)
    ref = SmoothedClassifier(conv, 3, 0.3)
    base = next(ref.certify_groups([(x, [1, 2, 3])], 20, 500, 0.01, 256))
    other = SmoothedClassifier(conv, 3, 0.3, precision=precision, channels_last=channels_last)
    got = next(other.certify_groups([(x, [1, 2, 3])], 20, 500, 0.01, 256))
    assert np.all(got.counts_estimation.sum(1) == 500)
    # same noise; fp32 in either memory format gives the same function, bf16 nearly so
    diff = np.abs(got.counts_estimation - base.counts_estimation).max()
    assert diff <= (0 if precision == "fp32" else 25), diff


def test_compiled_network_pads_to_one_shape():
    """With torch.compile the last batch is padded to batch_size; padding rows are never counted."""
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = next(SmoothedClassifier(conv, 3, 0.3).certify_groups([(x, [1, 2, 3])], 20, 130, 0.01, 64))
    shapes = []

    def backend(gm, example_inputs):  # records the shapes the compiled code sees
        shapes.append(tuple(example_inputs[-1].shape) if example_inputs else None)
        return gm.forward

    compiled = SmoothedClassifier(conv, 3, 0.3, compile={"backend": backend})
    got = next(compiled.certify_groups([(x, [1, 2, 3])], 20, 130, 0.01, 64))
    np.testing.assert_array_equal(got.counts_estimation, plain.counts_estimation)
    np.testing.assert_array_equal(got.counts_selection, plain.counts_selection)
    assert len(shapes) == 1  # 450 samples in batches of 64: 7 full, 1 padded, one compiled graph


@pytest.mark.parametrize("kwargs,key", [(dict(n0=0), "n0"), (dict(n0=20, n=10), "n0"), (dict(n=0), "n"),
                                        (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"),
                                        (dict(batch_size=0), "batch_size")])
def test_bad_sampling_arguments(kwargs, key):
    args = dict(n0=10, n=100, alpha=0.01, batch_size=10) | kwargs
    smoothed = SmoothedClassifier(Linear2(), 2, 0.5)
    with pytest.raises(ConfigError) as err:
        smoothed.certify(images_with_margins([0.1]), **args)
    assert err.value.key == key


def test_too_few_samples_warns_and_abstains():
    smoothed = SmoothedClassifier(Linear2(), 2, 0.5)
    with pytest.warns(UserWarning, match="abstain"):
        pred = smoothed.predict(images_with_margins([2.0, -2.0]), 10, 0.001, 10, seeds=[1, 2])
    assert pred.tolist() == [ABSTAIN, ABSTAIN]
