"""Issue 18: the other input-dependent methods beside VRS, each with its certificate.

Statistics against known answers: Dual RS's min(R_sigma, R_c) against an analytic pipeline whose true radius is
known (seeded Monte Carlo: it exceeds the true radius no more often than alpha + alpha_e allows, and a version
without confidence bounds does, so the check has power); the vote-smoothed estimator's certificate is Cohen's on a
selector with known vote probabilities; Multiscale stops at the level a brute-force look at the exact level
probabilities picks; DDS's search increases the soft radius. Then one small app-level run per method on digits
(vrs-certify and vrs-attack in-process) and vrs-report putting them on one frontier.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

from conftest import compose_config
from test_vrs_certify import vrs_files  # noqa: F401  (the digits VRS checkpoint and its base classifier)
from vrs.selection.certify import VRSOptions, image_streams
from vrs.selection.median import selector_samples
from vrs.selection.sigma_search.dds import DataDependentSmoothing
from vrs.selection.sigma_search.multiscale import Multiscale, cascade_radius
from vrs.selection.soft import log_mean_softmax, soft_radius
from vrs.selection.vote import certify_estimator, certify_one, dual_rs_radius, estimator_draws, vote_counts
from vrs.smoothing import core
from vrs.smoothing.smoothed import SmoothedClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


# ---- Dual RS ---------------------------------------------------------------------------------------------------
def slab_probability(x1: float, w: float, sigma: float) -> float:
    """P[|x1 + sigma z| < w]: the slab classifier's vote for class A."""
    return float(norm.cdf((w - x1) / sigma) - norm.cdf((-w - x1) / sigma))


def test_dual_rs_radius_exceeds_the_true_radius_no_more_often_than_alpha_allows():
    """Analytic pipeline: the estimator says sigma_s where u_2 < s, else sigma_l (a half-space: vote smoothing at
    sigma_e keeps it a half-space, so g_e(x') = sigma_s exactly where x'_2 < s); the classifier says A where |u_1| < w
    (a slab). At sigma_l the slab never reaches 1/2, so the pipeline says A exactly where x'_2 < s and |x'_1| < b,
    b the slab's half-width at sigma_s: the true radius at x is min(b - |x_1|, s - x_2). Over 20,000 seeded draws
    of the counts, min(R_sigma, R_c) exceeds it at most alpha + alpha_e (+3 SE); the point estimates (no bounds)
    exceed it half the time."""
    w, sigma_s, sigma_e, s = 0.5, 0.25, 1.0, 0.0
    assert 2 * norm.cdf(w / sigma_e) - 1 < 0.5  # the slab never wins at the large sigma
    b = brentq(lambda t: slab_probability(t, w, sigma_s) - 0.5, 0.0, w + 3 * sigma_s)
    x1, x2 = 0.1, s - 0.3
    true_radius = min(b - abs(x1), s - x2)
    p_a, p_e = slab_probability(x1, w, sigma_s), float(norm.cdf((s - x2) / sigma_e))
    alpha, alpha_e, n0, n, trials = 0.02, 0.05, 20, 1000, 20000
    rng = np.random.default_rng(0)
    sel_e = rng.binomial(n0, p_e, trials)
    est_e = rng.binomial(n, p_e, trials)
    est_a = rng.binomial(n, p_a, trials)
    r_sigma = certify_estimator(np.stack([sel_e, n0 - sel_e], 1), np.stack([est_e, n - est_e], 1), alpha_e,
                                sigma_e)["radius"]
    cohen = core.certify_from_counts(np.tile([n0, 0], (trials, 1)), np.stack([est_a, n - est_a], 1), alpha, sigma_s)
    radius = dual_rs_radius(r_sigma, cohen["radius"])
    rate = float(np.mean(radius > true_radius))
    budget = alpha + alpha_e
    assert rate <= budget + 3 * math.sqrt(budget * (1 - budget) / trials), rate
    assert rate > 0.2 * alpha_e, rate  # the estimator's bound is nearly tight here: the check can see a violation
    naive = np.minimum(sigma_e * norm.ppf(np.clip(est_e / n, 0.5, 1 - 1e-9)),
                       sigma_s * norm.ppf(np.clip(est_a / n, 0.5, 1 - 1e-9)))
    assert np.mean(naive > true_radius) > 0.3  # without confidence bounds the radius is not sound
    # the certificate of one image: the smaller radius; no certificate when the estimator abstains
    assert certify_one(3, 0.7, 0.2) == {"predict": 3, "radius": 0.2, "cert": "dual_rs"}
    assert certify_one(3, 0.7, 0.0)["cert"] == "sigma_undetermined"
    assert certify_one(-1, 0.0, 0.5)["cert"] == "abstain"


class HalfSpaceSelector(nn.Module):
    """A selector with known vote probabilities: sigma_lo where the first pixel is < s, else sigma_hi."""

    sigma_min, sigma_max = 0.12, 1.0

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def test_sigma(self, x, lam):
        return torch.where(x.flatten(1)[:, 0] < self.s, self.sigma_min, self.sigma_max)


def test_the_vote_smoothed_estimator_is_cohens_certificate_on_a_known_probability_toy():
    """Vote smoothing of a half-space selector at sigma_e: the vote for sigma_lo is Phi((s - x_0) / sigma_e), so the
    estimator's radius must be Cohen's sigma_e Phi^-1(pE_lower) from the same seeded draws, below the exact distance
    s - x_0 and close to it with 20,000 draws."""
    s, gap, sigma_e = 0.6, 0.2, 0.5
    grid = [0.12, 1.0]
    v = VRSOptions("dual_rs", 0.5, 64, 20000, 0.001, sigma_e, grid, 20000, 0.12, 1.0)
    x = torch.full((1, 1, 2, 2), s - gap)
    x[0, 0, 1, 1] = 0.0
    selector, keys = HalfSpaceSelector(s), [12345]
    draws = estimator_draws(selector, x, keys, v)
    sel = selector_samples(selector, x, 0.5, v.n_h0, sigma_e, v.selector_batch_size, image_streams(keys, 3, x.device))
    est = selector_samples(selector, x, 0.5, v.n_h, sigma_e, v.selector_batch_size, image_streams(keys, 4, x.device))
    counts_sel, counts_est = vote_counts(sel, grid), vote_counts(est, grid)
    assert counts_est.sum() == v.n_h and counts_sel.argmax() == 0
    p_lower = core.lower_confidence_bound(counts_est[0, 0], v.n_h, v.alpha_h)
    assert draws["sigma"][0] == 0.12 and draws["p_lower"][0] == pytest.approx(p_lower)
    assert draws["radius_sigma"][0] == pytest.approx(sigma_e * norm.ppf(p_lower))
    p_e = norm.cdf(gap / sigma_e)
    assert p_e - 0.02 < p_lower < p_e  # 3.1 SE at n = 20,000 is 0.011
    assert gap - 0.04 < draws["radius_sigma"][0] < gap


# ---- Multiscale ------------------------------------------------------------------------------------------------
class ThreeSlabs(nn.Module):
    """Classes by the first pixel u: 0 where |u| < w, 1 where u >= w, 2 where u <= -w (known vote probabilities)."""

    def __init__(self, w: float):
        super().__init__()
        self.w = w

    def forward(self, x):
        u = x.flatten(1)[:, 0]
        return torch.stack([(u.abs() < self.w), u >= self.w, u <= -self.w], 1).float()


def three_slab_probabilities(u: float, w: float, sigma: float) -> np.ndarray:
    p1 = 1 - norm.cdf((w - u) / sigma)
    p2 = norm.cdf((-w - u) / sigma)
    return np.array([1 - p1 - p2, p1, p2])


def test_multiscale_stops_at_the_level_a_brute_force_check_picks():
    """From the largest sigma down, the cascade stops at the first level whose top class's exact probability is above
    p0 (every image here is at least 0.06 away from p0 at every level it passes, so 4,000 draws decide), with that
    level's class: the middle of the slab passes 1.0 and 0.5 (no class above 1/2) and stops at 0.25, the far sides
    stop at 1.0. Its radius is at most the per-level Cohen radius, and the radius formula matches a hand
    computation."""
    w, p0 = 0.2, 0.5
    method = Multiscale(grid=[0.12, 0.25, 0.5, 1.0], p0=p0)
    points = [0.0, 0.02, 1.5, -1.5]
    expected = []
    for u in points:  # brute force over the levels with the exact probabilities
        for sigma in method.levels:
            p = three_slab_probabilities(u, w, sigma)
            assert abs(p.max() - p0) > 0.06, (u, sigma, p)  # the test's precondition: no close call
            if p.max() > p0:
                expected.append((sigma, int(p.argmax())))
                break
        else:
            expected.append((None, -1))
    assert expected == [(0.25, 0), (0.25, 0), (1.0, 1), (1.0, 2)]
    x = torch.zeros(len(points), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(points)
    smoothed = SmoothedClassifier(ThreeSlabs(w), 3, 1.0)
    rows = next(method.certify_groups(smoothed, [(x, list(range(len(points))))], 0, 50, 4000, 0.001, 4096))
    for r, (sigma, c) in zip(rows, expected):
        assert (r["sigma"], r["predict"]) == (sigma, c), (r, sigma, c)
        assert r["cert"] == "multiscale" and 0 < r["radius"] <= r["radius_unsound"] + 1e-12
    # R = min(sigma_k (Phi^-1(pA_lower) - Phi^-1(p0)), sigma_j (Phi^-1(p0) - Phi^-1(max other upper bound)))
    upper = np.array([[0.3, 0.4, 0.2]])
    assert cascade_radius(1, 0, [1.0, 0.5], 0.9, upper, 0.5) == pytest.approx(-norm.ppf(0.4))
    assert cascade_radius(1, 0, [1.0, 0.5], 0.6, upper, 0.5) == pytest.approx(0.5 * norm.ppf(0.6))
    assert cascade_radius(1, 1, [1.0, 0.5], 0.9, np.array([[0.55, 0.4, 0.2]]), 0.5) < 0  # another class may stop


# ---- DDS -------------------------------------------------------------------------------------------------------
class Linear(nn.Module):
    def forward(self, x):
        u = x.flatten(1)[:, :1]
        return torch.cat([50 * u, -50 * u], 1)


def test_dds_search_increases_the_soft_radius():
    """A linear classifier at margin 0.3: from sigma_0 = 0.05 (psi clamped at 0.98, so R = 2.05 sigma grows with
    sigma) the search climbs to the knee near 0.3 / Phi^-1(0.98) = 0.146 and the soft radius, measured on 4,096
    fresh draws, grows by more than 0.1."""
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 0.3
    f = Linear()
    dds = DataDependentSmoothing(steps=40, lr=0.01, draws=64, sigma_init=0.05, sigma_min=0.02, sigma_max=1.0)
    sigma = dds.search(f, x, torch.Generator().manual_seed(0))

    def radius(s: float) -> float:
        z = torch.randn(1, 4096, 1, 2, 2, generator=torch.Generator().manual_seed(1))
        logits = f((x.unsqueeze(1) + s * z).reshape(-1, 1, 2, 2)).view(1, 4096, 2)
        return float(soft_radius(log_mean_softmax(logits), torch.tensor([s]), eps=0.02))

    assert 0.1 < float(sigma) < 0.25, float(sigma)
    assert radius(float(sigma)) > radius(0.05) + 0.1


# ---- app level: one run per method on digits -------------------------------------------------------------------
FAST = ["data=digits", "certify.n0=10", "certify.n=200", "certify.max=6", "certify.progress=false",
        "print_config=false", "logger=none"]
ATTACK = ["data=digits", "attack=eot_pgd", "attack.norm=l2", "attack.eps=[0.5]", "attack.steps=2", "attack.eot=1", "attack.max=4",
          "predict.n=50", "defense.m=2", "print_config=false", "logger=none"]


def certify_run(ckpt, out, *overrides) -> tuple[dict, list[dict]]:
    from vrs.apps.certify import certify

    summary = certify(compose_config(f"ckpt_path={ckpt}", *FAST, f"certify.out_dir={out}", *overrides,
                                     config_name="certify", output_dir=out))
    lines = (Path(out) / "certify.tsv").read_text().splitlines()
    return summary, [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


def attack_run(ckpt, out, *overrides) -> dict:
    from vrs.apps.attack import run

    return run(compose_config(f"ckpt_path={ckpt}", *ATTACK, f"attack.out_dir={out}", *overrides, config_name="attack",
                              output_dir=out))


def test_each_method_certifies_and_is_attacked_on_digits_and_the_report_puts_them_on_one_frontier(vrs_files,  # noqa: F811
                                                                                                  tmp_path):
    vrs_ckpt, base = vrs_files
    # Dual RS: the selector vote-smoothed; R = min(R_sigma, R_c) on every certified row
    summary, rows = certify_run(vrs_ckpt, tmp_path / "c_dual", "certify=dual_rs")
    assert summary["soundness"]["certificate"] == "dual_rs" and summary["selector_smoothing"] == "vote"
    assert summary["alpha_budget"]["alpha_total"] == pytest.approx(0.001 + 0.01)
    certified = [r for r in rows if r["cert"] == "dual_rs"]
    assert len(certified) >= 3, rows
    for r in certified:
        assert float(r["radius"]) == pytest.approx(min(float(r["radius_sigma"]), float(r["radius_cohen"])), abs=2e-6)
    # Multiscale: sound cascade certificate, sigma from the grid
    summary, rows = certify_run(base, tmp_path / "c_ms", "sigma_search=multiscale", "certify.n=1000")
    assert summary["soundness"] == {"certificate": "multiscale", "argument": summary["soundness"]["argument"],
                                    "sound": True}
    assert {float(r["sigma"]) for r in rows} <= {0.12, 0.25, 0.5, 1.0}
    assert sum(r["cert"] == "multiscale" for r in rows) >= 3, rows
    # DDS: an empirical defence: radius 0, the published (unsound) radius kept aside
    summary, rows = certify_run(base, tmp_path / "c_dds", "sigma_search=dds", "sigma_search.steps=3",
                                "sigma_search.lr=0.05")
    assert summary["soundness"]["sound"] is False and summary["acr"] == 0.0
    assert all(float(r["radius"]) == 0.0 and r["cert"] in ("empirical", "abstain") for r in rows)
    assert any(float(r["radius_unsound"]) > 0 for r in rows) and len({r["sigma"] for r in rows}) > 1
    certify_run(base, tmp_path / "c_fix", "certify.sigma=0.25")
    # attacks against each whole pipeline
    for name, ckpt, extra in (("dual", vrs_ckpt, ["defense.selector_smoothing=vote"]),
                              ("ms", base, ["sigma_search=multiscale"]),
                              ("dds", base, ["sigma_search=dds", "sigma_search.steps=2",
                                             "defense.search_surrogate={steps:1}"]),
                              ("fix", base, ["defense.sigma=0.25"])):
        s = attack_run(ckpt, tmp_path / f"a_{name}", *extra)
        assert len(s["per_eps"]) == 1 and 0 <= s["per_eps"][0]["robust_acc"] <= 1
        if name == "dual":
            assert s["defense"]["selector_smoothing"] == "vote"
        elif name != "fix":
            assert s["defense"]["sigma_search"]["name"] == {"ms": "multiscale", "dds": "dds"}[name]
        if name == "dds":  # the attack's passes run a 1-step search, PREDICT the deployed 2-step one
            assert s["defense"]["search_surrogate"]["steps"] == 1 and s["defense"]["sigma_search"]["steps"] == 2
    # the report: every method on the frontier of its base classifier (DDS on the attack comparisons only)
    from vrs.apps.report import build_report

    out = tmp_path / "report"
    build_report(compose_config(f"report.inputs=[{tmp_path}]", f"report.out_dir={out}", config_name="report",
                          output_dir=out))
    import csv

    frontier = list(csv.DictReader((out / "frontier.csv").open()))
    curves = {(r["curve"], r["comparison"].split("@")[0].split("[")[0]) for r in frontier}
    assert ("Multiscale (multiscale)", "ACR") in curves and ("Multiscale (multiscale)", "robust_acc") in curves
    assert ("DDS (empirical)", "robust_acc") in curves and ("DDS (empirical)", "ACR") not in curves
    attacked = {r["curve"] for r in frontier if r["comparison"] == "robust_acc[eot_pgd l2]@eps=0.5"}
    assert {"fixed sigma", "Multiscale (multiscale)", "DDS (empirical)"} <= attacked, attacked  # one comparison
    table = (out / "report.md").read_text()
    assert "| dual-rs | dual_rs |" in table and "| multiscale | multiscale |" in table and "| dds | empirical |" in table
    assert json.loads((tmp_path / "c_ms" / "summary.json").read_text())["certificate"] == "multiscale"
