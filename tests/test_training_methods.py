"""The base classifier's training methods (vrs.modules.training, the `training` group): each loss against a value
computed by hand on a tiny fixed batch, gradients where the papers send them, SmoothAdv's attack (inside the eps ball
and [0, 1], raising the soft smoothed loss), MACER's hinge (zero past its margin), the consistency term (zero when
the draws agree), the configs and presets, and an exact resume of a run whose method changes with the epoch."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUIET, compose_config
from vrs.errors import ConfigError
from vrs.modules.training import TrainingBatch, build_training, training_name
from vrs.modules.training.consistency import consistency_loss, consistency_terms
from vrs.modules.training.macer import macer_hinge, macer_loss
from vrs.modules.training.smoothadv import SmoothAdv, smoothadv_attack, soft_smoothed_ce
from vrs.smoothing.noise import standard_normal

ppf = NormalDist().inv_cdf
LN3 = math.log(3.0)


def small_net(seed: int = 0, batch_norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Flatten(), torch.nn.Linear(12, 16)] + ([torch.nn.BatchNorm1d(16)] if batch_norm else [])
    return torch.nn.Sequential(*layers, torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batch_of(net, b: int = 6, seed: int = 1, sigma: float = 0.25) -> TrainingBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 3, 4, generator=g) * 0.6 + 0.2
    y = torch.randint(0, 3, (b,), generator=g)
    return TrainingBatch(x, y, torch.full((b,), sigma), net, net, epoch=0)


# ---- gaussian ------------------------------------------------------------------------------------------------
def test_gaussian_is_ce_at_one_noisy_copy_with_the_draws_of_before():
    """The default reproduces the old step exactly: sigma from the noise group, then one draw z (same RNG order)."""
    net, method = small_net(), build_training(None)
    assert training_name(None) == "gaussian" and type(method).__name__ == "GaussianAugmentation"
    b = batch_of(net)
    torch.manual_seed(5)
    out = method(b)
    torch.manual_seed(5)
    ref = torch.nn.functional.cross_entropy(net(b.x + 0.25 * torch.randn_like(b.x)), b.y)
    assert torch.equal(out.loss, ref) and out.logits.shape == (6, 3) and out.terms == {}


# ---- consistency ---------------------------------------------------------------------------------------------
def test_consistency_loss_equals_its_hand_computed_value():
    """One image, m = 2 draws, K = 2: softmaxes (1/2, 1/2) and (3/4, 1/4), mean (5/8, 3/8), label 0."""
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])
    y = torch.tensor([0])
    ce = (math.log(2) + math.log(4 / 3)) / 2
    kl1 = 5 / 8 * math.log((5 / 8) / (1 / 2)) + 3 / 8 * math.log((3 / 8) / (1 / 2))
    kl2 = 5 / 8 * math.log((5 / 8) / (3 / 4)) + 3 / 8 * math.log((3 / 8) / (1 / 4))
    ent = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    loss, terms = consistency_loss(logits, y, lam=2.0, eta=0.5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["kl"].item() == pytest.approx((kl1 + kl2) / 2, rel=1e-5)
    assert terms["entropy"].item() == pytest.approx(ent, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 2.0 * (kl1 + kl2) / 2 + 0.5 * ent, rel=1e-6)


def test_consistency_term_is_zero_when_the_draws_agree_and_its_gradient_reaches_every_draw():
    same = torch.tensor([[[2.0, -1.0, 0.5]] * 3, [[0.1, 0.2, 0.3]] * 3], requires_grad=True)
    kl, entropy = consistency_terms(same)
    assert torch.allclose(kl, torch.zeros(2), atol=1e-7)
    (grad,) = torch.autograd.grad(kl.sum(), same)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)  # agreement is the KL's minimum
    assert entropy.min() > 0
    differ = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 1.0, 0.0], [1.0, 1.0, -2.0]]], requires_grad=True)
    kl, _ = consistency_terms(differ)
    (grad,) = torch.autograd.grad(kl.sum(), differ)
    assert kl.item() > 0 and (grad.abs().sum(-1) > 1e-3).all()  # every draw is pulled towards the mean
    # the gradient also flows through the mean F_hat (the paper does not detach it): detaching it changes it
    log_p = torch.log_softmax(differ, -1)
    mean = log_p.exp().mean(1, keepdim=True).detach()
    kl_detached = (mean * (mean.log() - log_p)).sum(-1).mean()
    (grad_detached,) = torch.autograd.grad(kl_detached, differ)
    assert not torch.allclose(grad, grad_detached, atol=1e-4)


# ---- macer ---------------------------------------------------------------------------------------------------
def test_macer_loss_equals_its_hand_computed_value():
    """Two images, k = 2 draws, K = 2. Image 0 (label 0): softmaxes (e/(e+1), 1/(e+1)) and (1/2, 1/2); at beta = 2
    G = mean of (e^2/(e^2+1), 1/(e^2+1)) and (1/2, 1/2), top class 0 = label: inside the hinge. Image 1 (label 1):
    the same logits, so its top class is not its label: CE only, no hinge."""
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 2)
    y, sigma, gamma, beta, lam = torch.tensor([0, 1]), torch.tensor([0.5, 0.5]), 1.0, 2.0, 3.0
    e = math.e
    g0 = (e / (e + 1) + 0.5) / 2
    big0 = (e**2 / (e**2 + 1) + 0.5) / 2
    xi = ppf(big0) - ppf(1 - big0)
    assert xi < gamma
    ce = (-math.log(g0) - math.log(1 - g0)) / 2
    hinge = (0.5 / 2 * (gamma - xi) + 0.0) / 2
    loss, terms = macer_loss(logits, y, sigma, lam, gamma, beta)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["hinge"].item() == pytest.approx(hinge, rel=1e-5)
    assert terms["active"].item() == 0.5
    assert loss.item() == pytest.approx(ce + lam * hinge, rel=1e-5)


def test_macer_hinge_is_zero_past_its_margin_and_sends_no_gradient_there():
    """Image 0 past the margin (xi > gamma), image 1 inside it, image 2 saturated (G_y = 1 in float32: xi = inf),
    image 3 misclassified: only image 1 gets a hinge value and a gradient, and no gradient is nan."""
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.3, 0.0, 0.0]], [[80.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]],
                          requires_grad=True)
    y, sigma = torch.tensor([0, 0, 0, 0]), torch.ones(4)
    hinge, active = macer_hinge(logits, y, sigma, gamma=2.0, beta=1.0)
    p = torch.softmax(logits.detach()[:, 0], -1)
    assert ppf(p[0, 0].item()) - ppf(p[0, 1].item()) > 2.0  # image 0 really is past the margin
    assert active.tolist() == [False, True, False, False]
    assert hinge[0] == 0 and hinge[2] == 0 and hinge[3] == 0 and hinge[1] > 0
    (grad,) = torch.autograd.grad(hinge.sum(), logits)
    assert torch.isfinite(grad).all()
    assert grad[[0, 2, 3]].abs().max() == 0 and grad[1].abs().sum() > 0
    # the CE term reaches every image (MACER's first term is the soft smoothed classifier's CE on all of them)
    loss, _ = macer_loss(logits, y, sigma, lam=1.0, gamma=2.0, beta=1.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad.abs().sum((1, 2)) > 0).all()


def test_macer_defers_its_radius_term():
    m = build_training({"_target_": "vrs.modules.training.macer.MACER", "lam": 5.0, "deferred_epochs": 3})
    assert [m.lam_at(e) for e in (0, 2, 3, 10)] == [0.0, 0.0, 5.0, 5.0] and m.graph_conflict()
    assert build_training({"_target_": "vrs.modules.training.macer.MACER"}).graph_conflict() is None


# ---- smoothadv -----------------------------------------------------------------------------------------------
def test_smoothadv_points_stay_in_the_eps_ball_and_raise_the_soft_smoothed_loss():
    net = small_net(2)
    b = batch_of(net, b=16, seed=3)
    torch.manual_seed(0)
    noise = 0.25 * standard_normal((16, 4, 1, 3, 4))
    eps = 0.3
    adv = smoothadv_attack(net, b.x, b.y, noise, eps, steps=5)
    dist = (adv - b.x).flatten(1).norm(dim=1)
    assert (dist <= eps * (1 + 1e-5)).all() and dist.max() > 0.9 * eps
    assert adv.min() >= 0 and adv.max() <= 1 and not adv.requires_grad
    with torch.no_grad():
        before, after = soft_smoothed_ce(net, b.x, b.y, noise), soft_smoothed_ce(net, adv, b.y, noise)
    assert (after >= before - 1e-6).all() and (after - before).mean() > 0.05


def test_smoothadv_trains_on_the_attacked_copies_only_with_the_attack_in_eval_mode():
    """The loss is the mean CE at x' + sigma z_j with the attack's own draws; no gradient reaches x through the
    attack; batch-norm statistics are updated once per step (by the loss's forward), not by the attack's passes."""
    net = small_net(4, batch_norm=True).train()
    method = SmoothAdv(m=3, steps=4, eps=0.5, warmup=2)
    b = batch_of(net, b=8, seed=6)
    x = b.x.clone().requires_grad_(True)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(11)
    out = method(TrainingBatch(x, b.y, b.sigma, net, net, epoch=0))
    assert net[2].num_batches_tracked.item() == 1 and net.training
    out.loss.backward()
    assert x.grad is None
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.load_state_dict(start)  # the batch-norm statistics the attack saw
    torch.manual_seed(11)
    noise = 0.25 * standard_normal((8, 3, 1, 3, 4))
    net.eval()
    adv = smoothadv_attack(net, b.x, b.y, noise, 0.25, 4)  # epoch 0 of a 2-epoch warm-up: eps / 2
    net.train()
    logits = net((adv.unsqueeze(1) + noise).reshape(24, 1, 3, 4))
    ref = torch.nn.functional.cross_entropy(logits, b.y.repeat_interleave(3))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    ref.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(got, net.parameters()))
    assert out.terms["eps"].item() == pytest.approx(0.25)


def test_smoothadv_eps_warm_up():
    m = SmoothAdv(eps=1.0, warmup=10)
    assert [m.eps_at(e) for e in (0, 4, 9, 30)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert SmoothAdv(eps=0.5, warmup=0).eps_at(0) == 0.5


# ---- configs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gaussian", "smoothadv", "macer", "consistency"])
def test_each_training_config_builds_and_reaches_the_module(name):
    cfg = compose_config(f"training={name}", output_dir="/nonexistent")
    module_training = OmegaConf.to_container(cfg.module, resolve=True)["training"]
    assert training_name(module_training) == name and build_training(module_training).name == name
    from vrs.utils.loggers import run_tags, train_facts  # W&B tags name a method that is not the default

    assert ("training=" + name in run_tags(**train_facts(cfg))) == (name != "gaussian")


@pytest.mark.parametrize("preset", ["smoothadv_fmnist", "macer_fmnist", "consistency_fmnist", "smoothadv_cifar10",
                                    "macer_cifar10", "consistency_cifar10"])
def test_presets_compose_with_the_papers_settings(preset):
    cfg = OmegaConf.to_container(compose_config(f"experiment={preset}", output_dir="/nonexistent"), resolve=True)
    method = preset.split("_")[0]
    assert training_name(cfg["module"]["training"]) == method
    build_training(cfg["training"])
    draws = cfg["training"].get("m")
    if draws:  # the papers' batch of 256 split into m chunks: the same images per step
        assert cfg["data"]["batch_size"] * draws == 256


def test_a_bad_training_setting_is_one_clear_error(tmp_path):
    from vrs.config_schema import check_values

    for override, key in [("training.k=0", "training.k"), ("training.lam=-1", "training.lam"),
                          ("training.gamma=0", "training.gamma")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_values(compose_config("training=macer", override, output_dir=tmp_path), "train")
    with pytest.raises(ConfigError, match=r"training\.m"):
        check_values(compose_config("training=consistency", "training.m=1", output_dir=tmp_path), "train")
    with pytest.raises(ConfigError, match=r"training\.eps"):
        check_values(compose_config("training=smoothadv", "training.eps=0", output_dir=tmp_path), "train")
    with pytest.raises(ConfigError, match="training"):
        build_training({"eps": 1})


# ---- a run: exact resume with a method that changes with the epoch ----------------------------------------
def test_a_smoothadv_run_resumed_mid_epoch_is_bit_identical(tmp_path):
    """eps warms up with the epoch: a run stopped in epoch 1 and resumed from last.ckpt ends with the weights of an
    uninterrupted run (the method is stateless; Lightning restores the epoch and the exact_resume callback the RNG)."""
    from test_resume import load, same_tensors
    from vrs.apps.train import train

    run = ["data=digits", "data.train_subset=256", "data.batch_size=64", "model.width=4", "model.hidden=16",
           "trainer.max_epochs=2", "trainer.deterministic=true", "callbacks.last_checkpoint.every_n_train_steps=1",
           "training=smoothadv", "training.m=2", "training.steps=1", "training.warmup=2", "test=false", "seed=1",
           *QUIET]
    train(compose_config(*run, output_dir=tmp_path / "ref"))
    with pytest.raises(RuntimeError, match="stopped at step 5"):
        train(compose_config(*run, "+callbacks.stop._target_=test_resume.RaiseAt", "+callbacks.stop.step=5",
                             output_dir=tmp_path / "cut"))
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert load(ckpt)["global_step"] == 5 and load(ckpt)["hyper_parameters"]["training"]["warmup"] == 2
    train(compose_config(*run, f"ckpt_path={ckpt}", output_dir=tmp_path / "cut"))
    final, ref = load(ckpt), load(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref["global_step"] == 8
    assert same_tensors(final["state_dict"], ref["state_dict"])
