"""VRS building blocks without training: soft smoothing gradients, KL terms, median-smoothing bounds,
the C1/C2 certificates, and bad inputs. Every random check uses a fixed seed and states its tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from vrs.errors import ConfigError
from vrs.selection.certificates import c1_radius, c2_min_prob, c2_radius, c2_region, c2_worst_case_prob
from vrs.selection.lam import LambdaSampler, check_lambda
from vrs.selection.median import (MedianSmoothing, cell_bounds, cell_radius, grid_cell, median_bounds,
                                  selector_samples, snap)
from vrs.selection.networks import NoiseSelector, SelectorMLP, SelectorResNet, build_selector
from vrs.selection.priors import (GaussianPrior, LogNormalPrior, UniformPrior, build_prior,
                                  kl_isotropic_gaussian_per_dim, kl_lognormal, log_lognormal_pdf)
from vrs.selection.soft import soft_smooth, soft_smooth_nll
from vrs.smoothing.core import radius_from_lower_bound

DATA = {"mean": [0.5], "std": [0.25]}
CNN = {"_target_": "vrs.selection.networks.SelectorCNN", "in_channels": 1, "width": 4, "depth": 2, "cond_dim": 8}
MLP = {"_target_": "vrs.selection.networks.SelectorMLP", "in_channels": 1, "input_size": 8, "hidden": 16,
       "cond_dim": 8}


def tiny_selector(posterior="point", net=CNN, **kw) -> NoiseSelector:
    return build_selector({"net": net, "posterior": posterior, "sigma_min": 0.12, "sigma_max": 1.0, **kw}, DATA)


def tiny_base(num_classes=3) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, num_classes))


# ---- selector networks -----------------------------------------------------------------------
@pytest.mark.parametrize("posterior,net", [("point", CNN), ("lognormal", CNN), ("point", MLP), ("lognormal", MLP)])
def test_selector_output_stays_in_range_and_depends_on_lambda(posterior, net):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    sel = tiny_selector(posterior, net)
    assert not torch.allclose(sel.test_sigma(x, 0.0), sel.test_sigma(x, 1.0))
    with torch.no_grad():  # make the weights large so the output reaches the squash's ends
        for p in sel.parameters():
            p.mul_(50)
    for lam in (0.0, 0.3, 1.0):
        sigma = sel(x, lam, sample=True).sigma.detach()
        assert sigma.shape == (64,)
        assert float(sigma.min()) >= 0.12 - 1e-6 and float(sigma.max()) <= 1.0 + 1e-6
        assert torch.all(sel.test_sigma(x, lam) <= 1.0) and torch.all(sel.test_sigma(x, lam) >= 0.12)
    if posterior == "lognormal":  # test time is the median exp(mu), training draws around it
        out = sel(x, 0.5, sample=False)
        assert torch.allclose(out.sigma, torch.exp(out.mu).clamp(0.12, 1.0))
        assert not torch.allclose(sel(x, 0.5, sample=True).sigma, out.sigma)


def test_resnet20_selector_shapes():
    net = SelectorResNet(in_channels=3, out_dim=2, depth=20, cond_dim=16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) >= 19
    sel = NoiseSelector(net, [0.5] * 3, [0.25] * 3, 0.12, 1.0, "lognormal")
    out = sel(torch.rand(2, 3, 32, 32), torch.tensor([0.1, 0.9]))
    assert out.sigma.shape == (2,) and out.s.shape == (2,)


def test_mlp_selector_sees_the_base_and_rejects_bad_sizes():
    """The MLP trunk takes the base classifier's probabilities as extra head features (sees_base), and its sizes
    are checked with the key named."""
    base = tiny_base(num_classes=3)
    sel = build_selector({"net": MLP, "sigma_min": 0.12, "sigma_max": 1.0, "sees_base": True},
                         {**DATA, "num_classes": 3}, base)
    assert sel.trunk.head.linear.in_features == 16 + 8 + 3
    assert sel(torch.rand(5, 1, 8, 8), 0.5).sigma.shape == (5,)
    for key, bad in (("hidden", 0), ("depth", 0)):
        with pytest.raises(ConfigError, match=f"selector.net.{key}"):
            SelectorMLP(1, 8, **{key: bad})


# ---- soft smoothing gradients ----------------------------------------------------------------
@pytest.mark.parametrize("posterior", ["point", "lognormal"])
def test_gradients_reach_selector_through_soft_smoothing(posterior):
    torch.manual_seed(0)
    base, sel = tiny_base(), tiny_selector(posterior)
    base.requires_grad_(False)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    out = sel(x, torch.rand(16), sample=True)
    loss = soft_smooth_nll(soft_smooth(base, x, out.sigma, n=8), y).mean()
    loss.backward()
    grads = {n: p.grad for n, p in sel.named_parameters()}
    assert all(g is not None for g in grads.values())
    # every trunk layer (first conv, FiLM, head) receives a non-zero gradient through f(x + sigma z)
    for name in ("trunk.convs.0.0.weight", "trunk.films.0.proj.weight", "trunk.head.linear.weight",
                 "trunk.embed.mlp.0.weight"):
        assert grads[name].abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())


def test_soft_smoothing_gradient_wrt_sigma_matches_finite_difference():
    """Reparameterised noise: with the noise fixed (same seed), d loss / d sigma equals the central
    difference of the loss to 1e-3 relative."""
    base = tiny_base().double()
    x, y = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])

    def loss_at(sigma):
        torch.manual_seed(7)
        return soft_smooth_nll(soft_smooth(base, x, sigma, n=16), y).sum()

    sigma = torch.tensor([0.2, 0.4, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_at(sigma), sigma)
    h = 1e-6
    for i in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[i] = h
        with torch.no_grad():
            fd = (loss_at(sigma.detach() + e) - loss_at(sigma.detach() - e)) / (2 * h)
        assert abs(float(fd) - float(grad[i])) <= 1e-3 * max(1.0, abs(float(fd)))
    assert torch.all(grad != 0)


def test_soft_smoothing_is_a_probability_and_temperature_sharpens():
    torch.manual_seed(0)
    base, x = tiny_base(), torch.rand(5, 1, 8, 8)
    p1 = soft_smooth(base, x, 0.3, n=4, tau=1.0)
    torch.manual_seed(0)
    p_cold = soft_smooth(base, x, 0.3, n=4, tau=0.1)
    assert torch.allclose(p1.sum(1), torch.ones(5)) and torch.allclose(p_cold.sum(1), torch.ones(5))
    assert torch.all(p_cold.max(1).values >= p1.max(1).values - 1e-6)


# ---- KL terms -------------------------------------------------------------------------------
def _mc_check(samples: np.ndarray, exact: float, n_se: float = 4.0):
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(samples.mean() - exact) <= n_se * se + 1e-9, (samples.mean(), exact, se)


@pytest.mark.parametrize("sigma_s,sigma_t", [(0.25, 0.5), (1.0, 0.5), (0.12, 1.0), (0.5, 0.5)])
def test_gaussian_kl_per_dim_matches_monte_carlo(sigma_s, sigma_t):
    """E_p[log p(u) - log q(u)] / d over 200,000 draws u ~ N(0, sigma_s^2 I_d), d = 16: within 4 SE."""
    d, rng = 16, np.random.default_rng(0)
    u = rng.normal(0, sigma_s, (200_000, d))
    log_ratio = (-(u**2).sum(1) / (2 * sigma_s**2) - d * math.log(sigma_s)) - (
        -(u**2).sum(1) / (2 * sigma_t**2) - d * math.log(sigma_t))
    exact = float(kl_isotropic_gaussian_per_dim(torch.tensor(sigma_s), sigma_t))
    _mc_check(log_ratio / d, exact)
    if sigma_s == sigma_t:
        assert exact == 0


@pytest.mark.parametrize("mu_p,s_p,median_q,s_q", [(math.log(0.3), 0.2, 0.5, 0.5), (math.log(0.8), 0.6, 0.25, 0.3)])
def test_lognormal_kl_matches_monte_carlo(mu_p, s_p, median_q, s_q):
    """KL between log-normals over sigma vs E_p[log p(sigma) - log q(sigma)], 400,000 draws: within 4 SE."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400_000, generator=gen, dtype=torch.float64)
    log_sigma = mu_p + s_p * z
    mu_p_t, s_p_t = torch.tensor(mu_p, dtype=torch.float64), torch.tensor(s_p, dtype=torch.float64)
    mu_q_t, s_q_t = torch.tensor(math.log(median_q), dtype=torch.float64), torch.tensor(s_q, dtype=torch.float64)
    mc = log_lognormal_pdf(log_sigma, mu_p_t, s_p_t) - log_lognormal_pdf(log_sigma, mu_q_t, s_q_t)
    exact = float(kl_lognormal(mu_p_t, s_p_t, math.log(median_q), s_q))
    _mc_check(mc.numpy(), exact)
    # the prior object computes the same closed form from a selector output
    from vrs.selection.networks import SelectorOutput

    out = SelectorOutput(torch.exp(mu_p_t)[None], mu_p_t[None], s_p_t[None], mu_p_t[None])
    assert float(LogNormalPrior(median_q, s_q).kl(out)) == pytest.approx(exact, rel=1e-9)


def test_uniform_prior_monte_carlo_kl_averages_to_closed_form():
    """With a log-normal posterior well inside [low, high], the mean MC KL is -H(p) + log(high - low),
    H(LogNormal(mu, s)) = mu + 1/2 + log(s sqrt(2 pi)); 400,000 draws, within 4 SE."""
    from vrs.selection.networks import SelectorOutput

    mu, s, low, high = math.log(0.4), 0.1, 0.12, 1.0
    gen = torch.Generator().manual_seed(1)
    log_sigma = mu + s * torch.randn(400_000, generator=gen, dtype=torch.float64)
    n = len(log_sigma)
    out = SelectorOutput(torch.exp(log_sigma), torch.full((n,), mu, dtype=torch.float64),
                         torch.full((n,), s, dtype=torch.float64), log_sigma)
    mc = UniformPrior(low, high).kl(out).numpy()
    exact = -(mu + 0.5 + math.log(s * math.sqrt(2 * math.pi))) + math.log(high - low)
    _mc_check(mc, exact)


def test_prior_needs_matching_posterior():
    assert isinstance(build_prior({"name": "gaussian", "sigma_t": 0.5}, "point"), GaussianPrior)
    with pytest.raises(ConfigError, match="posterior=lognormal"):
        build_prior({"name": "lognormal", "median": 0.5, "s": 0.5}, "point")
    with pytest.raises(ConfigError, match="posterior=lognormal"):
        build_prior({"name": "uniform", "low": 0.12, "high": 1.0}, "point")
    with pytest.raises(ConfigError, match="prior.name"):
        build_prior({"name": "laplace"}, "point")
    with pytest.raises(ConfigError, match="prior.sigma_t"):
        build_prior({"name": "gaussian", "sigma_t": 0}, "point")


# ---- lambda -----------------------------------------------------------------------------------
def test_lambda_samplers():
    torch.manual_seed(0)
    per_batch = LambdaSampler()(32)
    assert per_batch.shape == (32,) and torch.all(per_batch == per_batch[0]) and 0 <= float(per_batch[0]) <= 1
    per_sample = LambdaSampler(per_sample=True)(512)
    assert per_sample.unique().numel() == 512 and 0 <= float(per_sample.min()) and float(per_sample.max()) <= 1
    assert abs(float(per_sample.mean()) - 0.5) < 0.05  # U[0,1]: SE 0.013
    beta = LambdaSampler(dist="beta", a=2.0, b=8.0, per_sample=True)(4000)
    assert abs(float(beta.mean()) - 0.2) < 0.02  # Beta(2, 8) mean 0.2, SE 0.002
    assert torch.all(LambdaSampler(dist="fixed", value=0.3)(4) == 0.3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "a", None, True])
def test_lambda_outside_unit_interval_is_an_error(bad):
    with pytest.raises(ConfigError, match="lam"):
        check_lambda(bad, "certify.lam")
    with pytest.raises(ConfigError):
        LambdaSampler(dist="fixed", value=bad)


def test_bad_sigma_range_is_an_error():
    for lo, hi in ((1.0, 0.12), (0.5, 0.5), (0.0, 1.0), (-0.1, 1.0)):
        with pytest.raises(ConfigError, match="selector.sigma_m"):
            build_selector({"net": CNN, "sigma_min": lo, "sigma_max": hi}, DATA)
    with pytest.raises(ConfigError, match="selector.posterior"):
        build_selector({"net": CNN, "sigma_min": 0.12, "sigma_max": 1.0, "posterior": "gamma"}, DATA)
    with pytest.raises(ConfigError, match="median.grid"):
        MedianSmoothing(grid=[])
    with pytest.raises(ConfigError, match="median.alpha_h"):
        MedianSmoothing(alpha_h=1.5)


# ---- median smoothing -------------------------------------------------------------------------
def _g(t):
    """A monotone map R -> [0.12, 1.0] (the 'selector' of the known function h(x) = g(w . x))."""
    return 0.12 + 0.88 / (1 + np.exp(-t))


W = np.array([0.6, -0.8])  # ||w|| = 1


def test_median_bounds_contain_brute_force_median_of_a_known_function():
    """h(x) = g(w . x) with g monotone: the exact median of h(x + delta + eta) is g(w . (x + delta)).
    Brute force over a dense grid of the eps-disc gives its range; the bounds from n = 20,000 draws
    contain it and are tight (the p+- percentiles of this h are exactly the range's ends)."""
    rng = np.random.default_rng(0)
    x0, sigma_h, eps, alpha_h, n = np.array([0.3, 0.1]), 0.5, 0.4, 0.001, 20_000
    samples = _g((x0 + sigma_h * rng.standard_normal((n, 2))) @ W)
    r, phi = np.meshgrid(np.linspace(0, eps, 81), np.linspace(0, 2 * np.pi, 361))
    deltas = np.stack([r.ravel() * np.cos(phi.ravel()), r.ravel() * np.sin(phi.ravel())], 1)
    medians = _g((x0 + deltas) @ W)
    lo, hi = median_bounds(samples, eps, sigma_h, alpha_h, clip=(0.12, 1.0))
    assert lo <= medians.min() and hi >= medians.max()
    # percentile level p+- = Phi(+-eps/sigma_h) -> exact bounds g(w.x0 +- eps); with n = 20,000 the
    # order statistics are within 0.03 in probability level, i.e. within 0.01 in sigma here
    assert hi - medians.max() < 0.01 and medians.min() - lo < 0.01
    # at eps = 0 the interval contains the median at x0 itself
    lo0, hi0 = median_bounds(samples, 0.0, sigma_h, alpha_h, clip=(0.12, 1.0))
    assert lo0 <= _g(x0 @ W) <= hi0


def test_median_bounds_of_a_non_monotone_function_by_brute_force():
    """h(x) = 0.5 + 0.4 sin(3 x1) cos(2 x2) (not monotone): brute-force medians at x0 + delta, each from
    100,000 draws, over 200 deltas in the eps-disc, all lie inside the bounds (MC error of a median
    there is < 0.01, the margin used)."""
    rng = np.random.default_rng(1)

    def h(u):
        return 0.5 + 0.4 * np.sin(3 * u[..., 0]) * np.cos(2 * u[..., 1])

    x0, sigma_h, eps = np.array([0.2, -0.1]), 0.3, 0.2
    lo, hi = median_bounds(h(x0 + sigma_h * rng.standard_normal((5000, 2))), eps, sigma_h, 0.001, (0.1, 0.9))
    ang, rad = rng.uniform(0, 2 * np.pi, 200), eps * np.sqrt(rng.uniform(0, 1, 200))
    eta = sigma_h * rng.standard_normal((100_000, 2))
    for a, r in zip(ang, rad):
        m = np.median(h(x0 + r * np.array([np.cos(a), np.sin(a)]) + eta))
        assert lo - 0.01 <= m <= hi + 0.01


def test_median_bounds_coverage_at_stated_confidence():
    """Statistical test: 3,000 independent trials of n = 101 draws from h(x0 + eta) (h linear, so the
    p+- percentiles are known exactly). With alpha_h = 0.1 each side may fail with probability <= 0.05;
    the observed failure counts must not exceed the 99.9% point of Binomial(3000, 0.05), and the
    two-sided interval must cover both percentiles in >= 1 - alpha_h of trials up to the same slack."""
    rng = np.random.default_rng(2)
    trials, n, sigma_h, eps, alpha_h = 3000, 101, 1.0, 0.5, 0.1
    mean = 0.5  # h(x0 + eta) = 0.5 + 0.1 * eta_1  ~  N(0.5, 0.1^2)
    q_hi = mean + 0.1 * sigma_h * norm.ppf(norm.cdf(eps / sigma_h))
    q_lo = mean - 0.1 * sigma_h * norm.ppf(norm.cdf(eps / sigma_h))
    fail_hi = fail_lo = fail_any = 0
    for _ in range(trials):
        s = mean + 0.1 * rng.standard_normal(n)
        lo, hi = median_bounds(s, eps, sigma_h, alpha_h, clip=(-10.0, 10.0))
        fail_hi += hi < q_hi
        fail_lo += lo > q_lo
        fail_any += (hi < q_hi) or (lo > q_lo)
        assert -10 < lo < hi < 10  # not vacuous at this n
    limit = binom.ppf(0.999, trials, alpha_h / 2)
    assert fail_hi <= limit and fail_lo <= limit
    assert fail_any <= binom.ppf(0.999, trials, alpha_h)
    assert fail_hi > 0 and fail_lo > 0  # the bounds are not trivially loose


def test_median_bounds_are_vacuous_for_too_few_draws():
    lo, hi = median_bounds(np.full(5, 0.4), 2.0, 0.25, 0.001, clip=(0.12, 1.0))
    assert (lo, hi) == (0.12, 1.0)


def test_selector_samples_and_snapping():
    torch.manual_seed(0)
    sel = tiny_selector().eval()
    x = torch.rand(3, 1, 8, 8)
    s = selector_samples(sel, x, 0.5, n=37, sigma_h=0.25, batch_size=16)
    assert s.shape == (3, 37) and float(s.min()) >= 0.12 and float(s.max()) <= 1.0
    assert s.std(dim=1).min() > 0  # the copies got different noise
    grid = [0.12, 0.25, 0.5, 1.0]
    assert snap(0.17, grid) == 0.12 and snap(0.18, grid) == 0.25 and snap(0.36, grid) == 0.5
    assert snap(0.99, grid) == 1.0 and snap(0.7, grid) == 0.5
    assert torch.equal(snap(torch.tensor([0.17, 0.8]), grid), torch.tensor([0.12, 1.0]))
    assert cell_bounds(grid, 0)[0] == -np.inf and cell_bounds(grid, 3)[1] == np.inf


# ---- C1 ---------------------------------------------------------------------------------------
GRID = [0.12, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("seed,center,spread", [(0, 0.3, 0.15), (1, 0.45, 0.05), (2, 0.2, 0.3), (3, 0.7, 0.1)])
def test_c1_never_certifies_past_the_first_eps_where_the_interval_leaves_its_cell(seed, center, spread):
    """eps* from cell_radius is exactly the first eps where the order-statistic interval leaves the grid
    cell of sigma0 (scanned at steps of 0.002), and C1's radius never exceeds it."""
    rng = np.random.default_rng(seed)
    samples = np.clip(np.exp(rng.normal(np.log(center), spread, 1000)), 0.12, 1.0)
    sigma0 = snap(float(np.median(samples[:64])), GRID)
    idx = int(grid_cell(sigma0, GRID))
    eps_star = cell_radius(samples, GRID, idx, sigma_h=0.5, alpha_h=0.001, clip=(0.12, 1.0))
    eps = np.arange(0, 3.0, 0.002)
    lo, hi = median_bounds(samples, eps, 0.5, 0.001, clip=(0.12, 1.0))
    inside = (grid_cell(lo, GRID) == idx) & (grid_cell(hi, GRID) == idx)
    if eps_star < 0:
        assert not inside[0]
        assert c1_radius(0.999, sigma0, eps_star) is None
        return
    assert np.all(inside[eps <= eps_star - 1e-9])
    if np.isfinite(eps_star) and eps_star < eps[-1]:
        first_out = eps[np.argmin(inside)]
        assert not inside.all() and eps_star <= first_out < eps_star + 0.002 + 1e-9
    for p in (0.6, 0.9, 0.999):
        r = c1_radius(p, sigma0, eps_star)
        assert r is not None and r <= eps_star and r <= radius_from_lower_bound(p, sigma0) + 1e-12


def test_c1_reduces_to_cohen_when_sigma_is_constant():
    # the interval collapses to sigma0 at every eps when the selector is constant at sigma0 and sigma0's
    # cell also holds both clip bounds (where vacuous bounds go)
    for grid, sigma0, clip in (([0.25], 0.25, (0.12, 1.0)), ([0.12, 1.0], 1.0, (0.5, 1.0)),
                               ([0.12, 0.25, 0.5], 0.12, (0.12, 0.15))):
        samples = np.full(500, sigma0)
        eps_star = cell_radius(samples, grid, int(grid_cell(sigma0, grid)), 0.25, 0.001, clip=clip)
        assert eps_star == np.inf
        assert median_bounds(samples, [0.0, 0.5, 5.0], 0.25, 0.001, clip)[1].max() < cell_bounds(
            grid, int(grid_cell(sigma0, grid)))[1]
        for p in (0.5, 0.7, 0.999):
            assert c1_radius(p, sigma0, eps_star) == pytest.approx(sigma0 * norm.ppf(p), abs=1e-12)
    assert c1_radius(0.49, 0.25, np.inf) is None


# ---- C2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("p_a", [0.6, 0.95, 0.999])
def test_c2_reduces_to_cohen_when_the_interval_collapses(p_a):
    for sigma0 in (0.12, 0.5, 1.0):
        r = c2_radius(p_a, sigma0, lambda eps, s=sigma0: (s, s), d=784)
        assert r == pytest.approx(radius_from_lower_bound(p_a, sigma0), abs=1e-12)
    assert c2_radius(0.4, 0.5, lambda eps: (0.5, 0.5), d=784) is None


@pytest.mark.parametrize("sigma1", [0.35, 0.65])
def test_c2_chi_square_probabilities_match_monte_carlo(sigma1):
    """d = 3: the worst-case region's probability is p_a under N(x, sigma0^2 I) and prob1 under
    N(x + delta, sigma1^2 I) (400,000 draws each, within 4 SE); it is worse than the half-space
    (Cohen's region) of the same probability, as Neyman-Pearson demands."""
    d, sigma0, p_a = 3, 0.5, 0.8
    delta = np.array([0.2, -0.1, 0.05])
    reg = c2_region(p_a, sigma0, sigma1, float(np.linalg.norm(delta)), d)
    assert reg.kind == ("outside" if sigma1 < sigma0 else "inside")
    center = reg.a * delta
    rng = np.random.default_rng(3)

    def in_region(u):
        dist = np.linalg.norm(u - center, axis=1)
        return dist >= reg.t if reg.kind == "outside" else dist <= reg.t

    u0 = sigma0 * rng.standard_normal((400_000, d))
    u1 = delta + sigma1 * rng.standard_normal((400_000, d))
    _mc_check(in_region(u0).astype(float), p_a)
    _mc_check(in_region(u1).astype(float), reg.prob1)
    assert reg.prob1 == pytest.approx(c2_worst_case_prob(p_a, sigma0, sigma1, float(np.linalg.norm(delta)), d))
    # half-space {u . e >= -sigma0 Phi^-1(p_a)} in any direction e has P0 = p_a; its P1 is not below prob1
    for e in (delta / np.linalg.norm(delta), -delta / np.linalg.norm(delta), np.array([0, 0, 1.0])):
        half = (u1 @ e >= -sigma0 * norm.ppf(p_a)).mean()
        assert half >= reg.prob1 - 4 * math.sqrt(reg.prob1 * (1 - reg.prob1) / len(u1))


def test_c2_worst_case_is_unimodal_in_sigma1_and_continuous_at_sigma0():
    """The properties c2_min_prob relies on (d = 784): the worst case over sigma1 rises then falls
    (so the minimum over an interval is at an end), falls with ||delta||, and meets Cohen's value
    continuously at sigma1 = sigma0."""
    d, p_a, sigma0 = 784, 0.99, 0.5
    sig = np.exp(np.linspace(np.log(0.3), np.log(0.8), 121))
    for r in (0.0, 0.05, 0.3):
        v = np.array([c2_worst_case_prob(p_a, sigma0, s, r, d) for s in sig])
        k = int(np.argmax(v))
        assert np.all(np.diff(v[: k + 1]) >= -1e-9) and np.all(np.diff(v[k:]) <= 1e-9)
    for s1 in (0.49, 0.5, 0.51):
        v = [c2_worst_case_prob(p_a, sigma0, s1, r, d) for r in np.linspace(0, 1, 21)]
        assert np.all(np.diff(v) <= 1e-12)
    cohen = c2_worst_case_prob(p_a, sigma0, sigma0, 0.3, d)
    for rel in (1e-4, -1e-4, 1e-6, -1e-6):
        assert c2_worst_case_prob(p_a, sigma0, sigma0 * (1 + rel), 0.3, d) == pytest.approx(cohen, abs=5e-5)


def test_c2_radius_is_where_the_worst_case_crosses_one_half():
    """With a growing interval, the C2 radius R satisfies the condition at R and fails just above it;
    it never exceeds Cohen's radius at sigma0 and shrinks as the interval widens."""
    d, p_a, sigma0 = 784, 0.999, 0.5

    def interval(width):
        return lambda eps: (sigma0 * math.exp(-width * eps), sigma0 * math.exp(width * eps))

    radii = []
    for width in (0.0, 0.001, 0.01, 0.1):
        r = c2_radius(p_a, sigma0, interval(width), d, tol=1e-5)
        lo, hi = interval(width)(r)
        assert c2_min_prob(p_a, sigma0, lo, hi, r, d) >= 0.5
        lo, hi = interval(width)(r + 2e-5)
        assert c2_min_prob(p_a, sigma0, lo, hi, r + 2e-5, d) < 0.5
        radii.append(r)
    assert radii[0] == pytest.approx(radius_from_lower_bound(p_a, sigma0))
    assert all(a > b for a, b in zip(radii, radii[1:]))
