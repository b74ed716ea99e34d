"""Attacks on the defended pipeline (vrs.attacks): norm balls, the attack works, gradients reach the
selector, EOT reduces gradient variance, mode handling, abstentions are errors, config checks.

Models here are tiny (8x8 grey images) so everything runs in seconds on a CPU. The selector is either a
tiny selector-like module (`TinySelector`: sigma grows with the image's mean brightness) or the project's
real `NoiseSelector` (vrs.selection.networks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from vrs.attacks import AdaptivePGD, DefendedModel, SelectorSigma, build_attack, check_attack_config, eps_list
from vrs.attacks.evaluate import attack_batch, summarize
from vrs.attacks.factory import ATTACK_NORMS, ATTACKS
from vrs.errors import ConfigError

SMIN, SMAX = 0.12, 1.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread
L2_EPS, LINF_EPS = 0.5, 8 / 255


class SmallCNN(nn.Module):
    """A base classifier with BatchNorm and Dropout (so eval mode matters), 8x8 grey -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                 nn.Dropout(0.5), nn.Linear(8 * 64, 10))

    def forward(self, x):
        return self.net(x)


class TinySelector(nn.Module):
    """A selector-like h(x, lambda) -> sigma in [SMIN, SMAX] with a conv trunk and lambda conditioning."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(5, 1)
        with torch.no_grad():  # sigma rises with brightness, so "down" has an obvious direction
            self.conv.weight.fill_(0.2)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5]]))
            self.head.bias.fill_(-2.0)

    def forward(self, x, lam):
        lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device).expand(x.shape[0])
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        raw = self.head(torch.cat([h, lam[:, None]], dim=1))[:, 0]
        return SMIN * (SMAX / SMIN) ** torch.sigmoid(raw)


def real_selector():
    from vrs.selection.networks import NoiseSelector, SelectorCNN

    torch.manual_seed(3)
    return NoiseSelector(SelectorCNN(1, out_dim=1, width=4, depth=2, cond_dim=8), [0.3], [0.4], SMIN, SMAX)


def images(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 8, 8, generator=g)
    x[0].zero_()       # pixels at the box's edges: the attack must not leave [0,1]
    x[1].fill_(1.0)
    return x, torch.randint(0, 10, (b,), generator=g)


def defended(selector=True, **kw):
    torch.manual_seed(0)
    base = SmallCNN()
    sigma = SelectorSigma(TinySelector(), 0.5, SMIN, SMAX, n_h=4, sigma_h=0.25) if selector else 0.25
    return DefendedModel(base, sigma, m=kw.pop("m", 4), seed=1, **kw)


def attack_cfg(name, norm):
    cfg = {"name": name, "norm": norm, "eps": L2_EPS if norm == "l2" else LINF_EPS, "steps": 3, "restarts": 1}
    if name in ("eot_pgd", "apgd_eot", "autoattack_rand", "sigma_down"):
        cfg["eot"] = 2
    if name == "cw_l2":
        cfg.update(c=10.0, lr=0.1)  # large steps: CW leaves the eps-ball, the projection must bring it back
    return cfg


CASES = [(name, norm) for name in ATTACKS for norm in ATTACK_NORMS[name]]


# ---- norm balls and the unit box ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,norm", CASES)
def test_every_attack_stays_in_its_norm_ball_and_in_the_unit_box(name, norm):
    model = defended()
    x, y = images()
    cfg = attack_cfg(name, norm)
    eps = cfg["eps"]
    torch.manual_seed(0)
    adv = build_attack(cfg, model, eps, 10, seed=0)(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv - x).flatten(1)
    if norm == "l2":
        assert float(d.norm(dim=1).max()) <= eps * (1 + 1e-5)
    else:
        assert float(d.abs().max()) <= eps + 1e-6
    if name in ("pgd_linf", "pgd_l2", "eot_pgd", "fgsm", "sigma_down"):
        # these always move: the perturbation is a real one, not the clean input handed back
        size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
        assert float(size[2:].min()) > 0.3 * eps
    if name == "none":
        assert torch.equal(adv, x)


def test_cw_margin_works_on_log_probabilities():
    """torchattacks' CW margin is constant on all-negative logits (log-probabilities); the fixed one is not."""
    from vrs.attacks.factory import CW

    model = defended(selector=False, noise="fixed")
    x, _ = images(b=4)
    with torch.no_grad():
        out = model(x)
    y = out.argmax(1)
    assert bool((out < 0).all())
    broken = torchattacks.CW(model, kappa=100.0).f(out, y)
    fixed = CW(model, kappa=100.0).f(out, y)
    top2 = out.topk(2, dim=1).values
    assert torch.equal(broken, torch.zeros(4))
    assert torch.allclose(fixed, top2[:, 0] - top2[:, 1]) and bool((fixed > 0).all())


def test_cw_result_is_projected_onto_the_ball():
    """CW minimises the L2 norm without a bound; the factory's version must respect eps."""
    from vrs.attacks.factory import CW

    model = defended(selector=False, noise="fixed")
    x, _ = images(b=8)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right, so CW has to move
    torch.manual_seed(0)
    raw = CW(model, c=50.0, kappa=5.0, steps=30, lr=0.2)(x, y)
    small = 0.05
    assert float((raw - x).flatten(1).norm(dim=1).max()) > small  # the unbounded attack goes further
    cfg = {"name": "cw_l2", "norm": "l2", "eps": small, "steps": 30, "c": 50.0, "kappa": 5.0, "lr": 0.2}
    torch.manual_seed(0)
    adv = build_attack(cfg, model, small, 10)(x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= small * (1 + 1e-5)


# ---- the attack works --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_mlp():
    """An undefended MLP trained on scikit-learn's 8x8 digits in about a second; (model, x_test, y_test)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:1700]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _step in range(400):
        idx = tr[torch.randint(0, len(tr), (128,), generator=g)]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[te], y[te]


@pytest.mark.parametrize("name,norm,eps", [("pgd_linf", "linf", 0.2), ("pgd_l2", "l2", 1.5),
                                           ("eot_pgd", "l2", 1.5), ("apgd_eot", "linf", 0.2)])
def test_pgd_breaks_a_trained_undefended_model(digits_mlp, name, norm, eps):
    model, x, y = digits_mlp
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    cfg = {"name": name, "norm": norm, "eps": eps, "steps": 20, "eot": 1}
    torch.manual_seed(0)
    adv = build_attack(cfg, model, eps, 10)(x, y)
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9
    assert robust < 0.15 and robust < clean - 0.75, (clean, robust)


def test_pgd_through_soft_smoothing_lowers_soft_accuracy(digits_mlp):
    """The same attack on the soft-smoothed model (small sigma) hurts it: the gradient goes through the noise."""
    model, x, y = digits_mlp
    smooth = DefendedModel(model, 0.05, m=8, seed=0)
    with torch.no_grad():
        clean = (smooth(x).argmax(1) == y).float().mean().item()
    torch.manual_seed(0)
    adv = build_attack({"name": "pgd_l2", "norm": "l2", "eps": 1.5, "steps": 20}, smooth, 1.5, 10)(x, y)
    with torch.no_grad():
        robust = (smooth(adv).argmax(1) == y).float().mean().item()
    assert clean > 0.85 and robust < clean - 0.5, (clean, robust)


# ---- the adaptive attack and the selector ------------------------------------------------------------------
@pytest.mark.parametrize("grad", ["straight_through", "mean", "median"])
@pytest.mark.parametrize("which", ["tiny", "real"])
def test_adaptive_gradient_reaches_selector_parameters_and_input(grad, which):
    selector = TinySelector() if which == "tiny" else real_selector()
    torch.manual_seed(0)
    model = DefendedModel(SmallCNN(), SelectorSigma(selector, 0.5, SMIN, SMAX, n_h=5, sigma_h=0.25, grad=grad),
                          m=3, seed=0, freeze=False)
    x, y = images()
    x = x.clone().requires_grad_(True)
    atk = AdaptivePGD(model, eps=0.5, alpha=0.1, steps=1, norm="l2", beta=1.0, sigma_target="down")
    atk.objective(x, y, None).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    grads = {n: p.grad for n, p in selector.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    # the sigma term alone carries gradient to the input (not only the classification loss)
    x2 = images()[0].requires_grad_(True)
    (-torch.log(model.sigma_of(x2))).sum().backward()
    assert float(x2.grad.abs().sum()) > 0


def test_straight_through_forward_value_is_the_deployed_sigma():
    """With the noise fixed, the attack's sigma (forward value) equals the deployed clipped, snapped median."""
    for grid in (None, [0.12, 0.25, 0.5, 1.0]):
        sel = SelectorSigma(TinySelector(), 0.5, SMIN, SMAX, n_h=7, sigma_h=0.25, grid=grid)
        model = DefendedModel(SmallCNN(), sel, m=2, noise="fixed", seed=0)
        x, _ = images()
        value = model.sigma_of(x)
        assert torch.allclose(value, sel.exact(x))
        if grid:
            assert all(float(v) in grid for v in value)


def test_sigma_down_drives_the_selectors_sigma_down():
    model = defended()
    x, y = images(b=8, seed=1)
    x = 0.3 + 0.4 * x  # mid-grey images: room to move both ways
    cfg = {"name": "sigma_down", "norm": "l2", "eps": 1.0, "steps": 10, "eot": 2, "beta": 10.0}
    torch.manual_seed(0)
    adv = build_attack(cfg, model, 1.0, 10)(x, y)
    before, after = model.defended_sigma(x), model.defended_sigma(adv)
    assert float(after.mean()) < float(before.mean()) - 0.02, (before, after)
    assert bool((after <= before + 1e-6).all())
    # the "away" variant moves sigma away from its clean value
    cfg.update(sigma_target="away")
    torch.manual_seed(0)
    adv = build_attack(cfg, model, 1.0, 10)(x, y)
    assert float((model.defended_sigma(adv).log() - before.log()).abs().mean()) > 0.02


def test_sigma_down_needs_the_defended_model():
    with pytest.raises(ConfigError, match="attack.name"):
        build_attack({"name": "sigma_down", "norm": "l2", "eps": 0.5}, SmallCNN().eval(), 0.5, 10)


# ---- EOT -----------------------------------------------------------------------------------------------------
def test_eot_lowers_gradient_variance_against_a_single_draw():
    """Var of the EOT gradient over repeated estimates, with eot_iter=8 vs 1, single-draw soft model (m=1):
    independent draws average, so the variance falls roughly 8-fold; we require at least 4-fold."""
    torch.manual_seed(0)
    model = DefendedModel(SmallCNN(), 0.5, m=1, seed=123)
    x, y = images(b=4)

    def spread(eot: int, repeats: int = 24) -> float:
        atk = AdaptivePGD(model, eps=0.5, alpha=0.1, steps=1, norm="l2", eot_iter=eot)
        g = torch.stack([atk.gradient(x, y) for _ in range(repeats)])
        return float(g.var(dim=0).mean())

    single, eot8 = spread(1), spread(8)
    assert eot8 < single / 4, (single, eot8)


# ---- mode handling and noise ---------------------------------------------------------------------------------
def test_mode_handling_eval_networks_and_noise_kept():
    model = defended(m=4)
    bn = model.base.net[1]
    stats = bn.running_mean.clone()
    model.train()  # whatever mode the wrapper is put in, the networks stay in eval mode
    assert not model.base.training and not model.sigma_source.selector.training
    x, y = images()
    torch.manual_seed(0)
    torchattacks.PGDL2(model, eps=0.5, alpha=0.2, steps=3)(x, y)  # calls model.eval() / .train() itself
    assert torch.equal(bn.running_mean, stats)  # BN statistics never updated by the attack
    assert not model.base.training
    assert all(not p.requires_grad for p in model.parameters())  # frozen; input gradients still flow
    model.eval()
    with torch.no_grad():  # eval mode does not switch the smoothing noise off
        assert not torch.allclose(model(x), model(x))


def test_fixed_noise_is_reused_until_resampled():
    model = defended(noise="fixed", m=4)
    x, _ = images()
    with torch.no_grad():
        a, b = model(x), model(x)
        model.resample_noise()
        c = model(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # a subset of the batch sees the same draws (the bank is shared by the images of a batch)
    with torch.no_grad():
        assert torch.allclose(model(x[2:4]), c[2:4], atol=1e-5)


def test_noise_generator_is_private_and_seeded():
    m1, m2 = defended(m=2), defended(m=2)
    x, _ = images()
    with torch.no_grad():
        m1.seed(7)
        torch.manual_seed(0)
        a = m1(x)
        m2.seed(7)
        torch.manual_seed(999)  # APGD reseeds the global RNG; the smoothing noise must not depend on it
        b = m2(x)
    assert torch.equal(a, b)


def test_soft_logits_are_log_of_averaged_softmax():
    torch.manual_seed(0)
    base = SmallCNN().eval()
    model = DefendedModel(base, 0.3, m=5, noise="fixed", seed=0)
    x, _ = images(b=3)
    with torch.no_grad():
        out = model(x)
        z = model.noise.draw("z", 3, 5, (1, 8, 8), x.device)
        probs = torch.softmax(base((x.unsqueeze(1) + 0.3 * z).reshape(15, 1, 8, 8)), dim=1).view(3, 5, 10).mean(1)
    assert torch.allclose(out, probs.log(), atol=1e-5)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)


def test_bf16_autocast_runs_and_returns_float32():
    model = defended(precision="bf16")
    x, y = images()
    out = model(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    adv = build_attack({"name": "pgd_l2", "norm": "l2", "eps": 0.5, "steps": 2}, model, 0.5, 10)(x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.5 * (1 + 1e-5)


# ---- abstentions are errors --------------------------------------------------------------------------------
def test_abstentions_count_as_errors_in_robust_accuracy():
    model = defended(selector=False)
    x, y = images(b=4)
    atk = build_attack({"name": "none", "norm": "l2", "eps": 0.0}, model, 0.0, 10)
    always_abstain = lambda xb, s, idx: torch.full((xb.shape[0],), -1, dtype=torch.int64)  # noqa: E731
    oracle = lambda xb, s, idx: y.clone()  # noqa: E731 - right every time
    rows_a, _ = attack_batch(atk, model, x, y, [0, 1, 2, 3], 0.0, always_abstain, model.defended_sigma)
    rows_o, _ = attack_batch(atk, model, x, y, [0, 1, 2, 3], 0.0, oracle, model.defended_sigma)
    s_a, s_o = summarize(rows_a, [0.0]), summarize(rows_o, [0.0])
    assert s_a["per_eps"][0]["robust_acc"] == 0.0 and s_a["per_eps"][0]["abstain_rate"] == 1.0
    assert s_a["clean"]["acc"] == 0.0 and s_a["clean"]["abstain_rate"] == 1.0
    assert s_o["per_eps"][0]["robust_acc"] == 1.0
    # mixed: 2 right, 1 abstain, 1 wrong -> 2/4 over all rows (never 2/3 over the non-abstained)
    rows = [dict(r) for r in rows_o]
    rows[2]["adv_predict"] = -1
    rows[3]["adv_predict"] = (int(y[3]) + 1) % 10
    s = summarize(rows, [0.0])["per_eps"][0]
    assert s["robust_acc"] == 0.5 and s["abstain_rate"] == 0.25 and s["n"] == 4
    assert all(r["correct"] == 0 for r in rows_a)


# ---- config checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,key", [
    ({"name": "pgd_l2", "norm": "l2", "eps": -0.1}, "attack.eps"),
    ({"name": "pgd_l2", "norm": "l2", "eps": [0.5, -1]}, "attack.eps"),
    ({"name": "pgd_l2", "norm": "l2", "eps": []}, "attack.eps"),
    ({"name": "pgd_linf", "norm": "linf", "eps": 8}, "attack.eps"),
    ({"name": "nope", "norm": "l2", "eps": 0.5}, "attack.name"),
    ({"name": "pgd_l2", "norm": "linf", "eps": 0.5}, "attack.norm"),
    ({"name": "fgsm", "norm": "l2", "eps": 0.5}, "attack.norm"),
    ({"name": "pgd_l2", "norm": "l2", "eps": 0.5, "steps": 0}, "attack.steps"),
    ({"name": "pgd_l2", "norm": "l2", "eps": 0.5, "eot": 4}, "attack.eot"),
    ({"name": "pgd_l2", "norm": "l2", "eps": 0.5, "step_size": -1}, "attack.step_size"),
    ({"name": "autoattack_rand", "norm": "linf", "eps": 0.03, "restarts": 3}, "attack.restarts"),
    ({"name": "sigma_down", "norm": "l2", "eps": 0.5, "sigma_target": "up"}, "attack.sigma_target"),
    ({"name": "apgd_eot", "norm": "l2", "eps": 0.5, "loss": "hinge"}, "attack.loss"),
])
def test_bad_attack_configs_are_refused(cfg, key):
    with pytest.raises(ConfigError) as err:
        check_attack_config(cfg)
    assert err.value.key.startswith(key)


def test_every_attack_config_composes_and_passes_the_checks():
    from conftest import REPO_ROOT, compose_config

    names = sorted(p.stem for p in (REPO_ROOT / "conf" / "attack").glob("*.yaml"))
    assert sorted(names) == sorted(ATTACKS)
    for name in names:
        cfg = compose_config(f"attack={name}", "ckpt_path=x.ckpt", config_name="attack")
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(cfg.attack, resolve=False)
        assert node["name"] == name
        check_attack_config(node)
        assert all(e >= 0 for e in eps_list(node))
    linf = compose_config("attack=pgd_linf", config_name="attack").attack.eps
    assert math.isclose(linf, 8 / 255)
    assert eps_list({"name": "pgd_l2", "norm": "l2", "eps": [0.25, 0.5]}) == [0.25, 0.5]


def test_restarts_keep_the_first_success():
    """With restarts, inputs already fooled are not attacked again; the rest get fresh tries."""
    model = defended(selector=False)
    x, y = images(b=6)
    calls = []

    def inner(xb, yb):
        calls.append(xb.shape[0])
        return xb

    from vrs.attacks.factory import BoundedAttack

    with torch.no_grad():
        pred = model(x).argmax(1)
    y_mixed = torch.where(torch.arange(6) < 3, pred, (pred + 1) % 10)  # 3 right, 3 already wrong
    model.seed(0)
    atk = BoundedAttack("pgd_l2", "l2", 0.5, model, inner, restarts=3)
    atk(x, y_mixed)
    assert calls[0] == 6 and all(c <= 3 + 1 for c in calls[1:]) and len(calls) == 3
    assert np.all(np.diff(calls) <= 0)
