"""VRS selector training: the test-time knob on a toy problem trained here, the checkpoint that certify
and attack read, the two-stage `vrs-train` run, diagnostics, and bad pairings of checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from vrs.data.datamodule import ImageDataModule, to_float
from vrs.errors import ConfigError, VRSError
from vrs.modules.classifier import NoisyClassifierModule
from vrs.modules.selector import SelectorModule
from vrs.checkpoint import load_base_classifier, load_vrs

LENET = {"_target_": "vrs.models.lenet.LeNet", "in_channels": 1, "num_classes": 10, "input_size": 8, "width": 16,
         "hidden": 64}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}
MULTI = {"_target_": "vrs.smoothing.noise.LogUniformSigma", "sigma_min": 0.12, "sigma_max": 1.0}
SELECTOR = {"net": {"_target_": "vrs.selection.networks.SelectorCNN", "in_channels": 1, "width": 8, "depth": 2,
                    "cond_dim": 16},
            "posterior": "point", "sigma_min": 0.12, "sigma_max": 1.0}
MEDIAN = {"sigma_h": 0.1, "n_h0": 8, "n_h": 50, "alpha_h": 0.01, "grid": [0.12, 0.25, 0.5, 1.0]}


def trainer(root: Path, epochs: int, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), **kw)


def datamodule(name: str = "digits", **kw) -> ImageDataModule:
    args = dict(name=name, channels=1, size=8, num_classes=10, mean=[0.3], std=[0.4], val_size=200,
                batch_size=64, eval_batch_size=256, download=False, seed=0)
    if name == "synthetic":
        args["synthetic"] = {"num_train": 256, "num_test": 64, "seed": 0}
    args.update(kw)
    return ImageDataModule(**args)


def fit_base(root: Path, name: str = "digits", epochs: int = 8, **kw) -> Path:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(name)
    module = NoisyClassifierModule(LENET, MULTI, SGD, dm.spec.to_dict())
    t = trainer(root, epochs, **kw)
    t.fit(module, datamodule=dm)
    path = root / f"{name}_base.ckpt"
    t.save_checkpoint(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    """A multi-sigma LeNet on scikit-learn's 8x8 digits (a few seconds)."""
    return fit_base(tmp_path_factory.mktemp("vrs_base"))


@pytest.fixture(scope="module")
def other_base_ckpt(tmp_path_factory) -> Path:
    """A base classifier of another data set (synthetic 1x8x8 images, same shape, 10 classes)."""
    return fit_base(tmp_path_factory.mktemp("vrs_other"), "synthetic", epochs=1, limit_train_batches=1,
                    limit_val_batches=1)


def selector_module(base_ckpt, prior=None, **kw) -> SelectorModule:
    dm = datamodule()
    args = dict(selector=SELECTOR, prior=prior or {"name": "gaussian", "sigma_t": 0.6}, optimizer=ADAM,
                data=dm.spec.to_dict(), base_ckpt=str(base_ckpt) if base_ckpt else None, median=MEDIAN, n_trf=4, val_n_h=4,
                val_lams=[0.0, 1.0], diagnostics={"num_images": 64, "n_h": 4, "lams": [0.0, 0.5, 1.0]})
    args.update(kw)
    return SelectorModule(**args)


@pytest.mark.slow  # 400 selector steps
def test_larger_test_time_lambda_moves_mean_sigma_towards_the_prior_target(base_ckpt):
    """Toy problem: a selector trained here (400 steps, lambda ~ U[0,1] per batch, Gaussian prior with
    sigma_t = 0.6) picks small sigma for accuracy at lambda = 0 and sigma_t at lambda = 1: mean sigma at
    test time moves monotonically towards sigma_t as lambda grows, ending within 0.1 of it."""
    pl.seed_everything(0, verbose=False)
    module = selector_module(base_ckpt)
    dm = datamodule()
    dm.setup()
    x_all, y_all = dm.splits["train"]
    x_all, x_val = to_float(x_all), to_float(dm.splits["val"][0])
    opt = torch.optim.Adam(module.selector.parameters(), lr=3e-3)
    module.train()
    gen = torch.Generator().manual_seed(0)
    for _step in range(400):
        idx = torch.randint(0, len(y_all), (64,), generator=gen)
        x, y = x_all[idx], y_all[idx]
        loss = module.loss_terms(x, y, module.lam_sampler(64), sample=True)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    target = 0.6
    with torch.no_grad():
        means = [float(module.selector.test_sigma(x_val, lam).mean()) for lam in (0.0, 0.25, 0.5, 0.75, 1.0)]
    print("mean sigma at lambda 0, .25, .5, .75, 1:", means)
    assert abs(means[-1] - target) < 0.1, means
    assert abs(means[-1] - target) < abs(means[0] - target) - 0.1, means
    assert all(a <= b + 0.01 for a, b in zip(means, means[1:])), means
    assert means[0] < 0.35, means  # accuracy alone asks for little noise


@pytest.mark.parametrize("posterior,prior", [("point", {"name": "gaussian", "sigma_t": 0.6}),
                                             ("lognormal", {"name": "lognormal", "median": 0.5, "s": 0.5})])
def test_paper_objective_reproduces_the_old_loss_exactly(base_ckpt, posterior, prior):
    """The objective refactor (issue 17) changes nothing for objective=paper (and for no objective at all): on a
    fixed batch and seed, the module's per-sample training loss equals the formula the module computed before,
    (1 - lambda) * CE + lambda * KL, draw for draw (the selector's input noise, its log-normal draw, the soft
    smoothing's noise, in that order)."""
    from vrs.selection.soft import soft_smooth_log, soft_smooth_nll_log
    from vrs.smoothing.noise import add_noise

    sel = {**SELECTOR, "posterior": posterior}
    for objective in (None, {"_target_": "vrs.selection.objectives.paper.PaperObjective"}):
        module = selector_module(base_ckpt, prior=prior, selector=sel, objective=objective).train()
        assert module.objective.name == "paper" and module.hparams.objective["_target_"].endswith("PaperObjective")
        gen = torch.Generator().manual_seed(3)
        x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        lam = torch.rand(16, generator=gen)
        torch.manual_seed(11)
        loss, terms, out, _ = module.loss_terms(x, y, lam, sample=True)
        torch.manual_seed(11)  # the old SelectorModule.loss_terms, verbatim
        out_old = module.selector(add_noise(x, module.median_cfg.sigma_h), lam, sample=True)
        log_probs = soft_smooth_log(module.base_forward, x, out_old.sigma, module.hparams.n_trf, module.hparams.tau)
        ce, kl = soft_smooth_nll_log(log_probs, y), module.prior.kl(out_old)
        assert torch.equal(loss, (1 - lam) * ce + lam * kl)
        assert torch.equal(terms["ce"], ce) and torch.equal(terms["kl"], kl) and torch.equal(out.sigma, out_old.sigma)
        loss.mean().backward()
        assert module.selector.trunk.head.linear.weight.grad.abs().sum() > 0


def test_the_checkpoint_records_the_objective_and_old_checkpoints_load_as_paper(base_ckpt, tmp_path):
    radius = {"_target_": "vrs.selection.objectives.radius.RadiusObjective", "weight": 0.5, "gamma": 3.0, "eps": 1e-4}
    pl.seed_everything(0, verbose=False)
    module = selector_module(base_ckpt, objective=radius)
    module.hparams.diagnostics = {"enabled": False}
    t = trainer(tmp_path, 1, limit_train_batches=2, limit_val_batches=1)
    t.fit(module, datamodule=datamodule())
    assert {"train/radius", "train/reward", "val/radius", "val/reward_lam1", "val/ce_lam0", "val/kl"} <= set(
        t.callback_metrics)
    path = tmp_path / "vrs.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["vrs"]["objective"] == radius and ckpt["hyper_parameters"]["objective"] == radius
    reloaded = SelectorModule.load_from_checkpoint(path)
    assert reloaded.objective.name == "radius" and (reloaded.objective.weight, reloaded.objective.gamma) == (0.5, 3.0)
    # a checkpoint written before the objective group existed: no objective anywhere -> the paper's
    del ckpt["vrs"]["objective"], ckpt["hyper_parameters"]["objective"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    reloaded = SelectorModule.load_from_checkpoint(old)
    assert reloaded.objective.name == "paper"
    assert reloaded.hparams.objective == {"_target_": "vrs.selection.objectives.paper.PaperObjective"}
    assert load_vrs(old).data["name"] == "digits"


def test_selector_fit_writes_a_complete_vrs_checkpoint(base_ckpt, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = selector_module(base_ckpt)
    base_before = {k: v.clone() for k, v in module.base.state_dict().items()}
    t = trainer(tmp_path, 1, limit_train_batches=3, limit_val_batches=1)
    t.fit(module, datamodule=datamodule())
    assert {"val/acc", "val/sigma_mean", "val/kl", "val/acc_lam0", "val/sigma_mean_lam1", "val/kl_lam1"} <= set(
        t.callback_metrics)
    for k, v in module.base.state_dict().items():  # frozen base classifier
        assert torch.equal(v, base_before[k]), k
    pngs = sorted(p.name for p in (tmp_path / "diagnostics").glob("*.png"))
    assert pngs == ["sigma_hist.png", "sigma_vs_confidence.png", "sigma_vs_lambda.png"]
    assert all((tmp_path / "diagnostics" / p).stat().st_size > 5000 for p in pngs)

    path = tmp_path / "vrs.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    meta = ckpt["vrs"]
    assert meta["format"] == 1 and meta["kind"] == "vrs"
    assert meta["data"]["name"] == "digits" and meta["base"]["net"]["_target_"].endswith("LeNet")
    assert (meta["sigma_min"], meta["sigma_max"]) == (0.12, 1.0)
    assert meta["median"]["sigma_h"] == 0.1 and meta["median"]["grid"] == [0.12, 0.25, 0.5, 1.0]
    assert meta["selector"]["posterior"] == "point" and meta["prior"]["name"] == "gaussian"

    # certify/attack need nothing else: move the stage-1 file away and reload everything
    moved = tmp_path / "moved.ckpt"
    shutil.copy(base_ckpt, moved)
    model = load_vrs(path)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.base(x), module.base.eval()(x))
        assert torch.allclose(model.selector.test_sigma(x, 0.3), module.selector.eval().test_sigma(x, 0.3))
    s = model.sigma(x, 0.5, n_h=20, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4,) and set(s.tolist()) <= {0.12, 0.25, 0.5, 1.0}
    reloaded = SelectorModule.load_from_checkpoint(path, base_ckpt=str(tmp_path / "does_not_exist.ckpt"))
    assert torch.equal(reloaded.selector.trunk.head.linear.weight, module.selector.trunk.head.linear.weight)
    # load_base_classifier also accepts the VRS checkpoint (its stored base classifier)
    net, spec = load_base_classifier(path)
    assert spec["data"]["name"] == "digits"


def test_joint_finetune_unfreezes_the_base_classifier(base_ckpt, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = selector_module(base_ckpt, finetune={"epochs": 1, "lr": 1e-2})
    before = {k: v.clone() for k, v in module.base.named_parameters()}
    t = trainer(tmp_path, 2, limit_train_batches=2, limit_val_batches=1)
    module.hparams.diagnostics = {"enabled": False}
    t.fit(module, datamodule=datamodule())
    assert any(not torch.equal(p, before[k]) for k, p in module.base.named_parameters())


def test_selector_paired_with_a_base_classifier_of_another_data_set_is_an_error(base_ckpt, other_base_ckpt,
                                                                                   tmp_path):
    with pytest.raises(VRSError, match="different data set"):
        selector_module(other_base_ckpt)
    module = selector_module(base_ckpt)
    t = trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=0)
    module.hparams.diagnostics = {"enabled": False}
    t.fit(module, datamodule=datamodule())
    path = tmp_path / "vrs.ckpt"
    t.save_checkpoint(path)
    with pytest.raises(VRSError, match="different data set"):
        load_vrs(path, base_ckpt=other_base_ckpt)
    assert load_vrs(path, base_ckpt=base_ckpt).data["name"] == "digits"
    with pytest.raises(VRSError, match="not a VRS selector checkpoint"):
        load_vrs(base_ckpt)
    with pytest.raises(VRSError, match="not found"):
        load_vrs(tmp_path / "missing.ckpt")
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VRSError, match="cannot read checkpoint"):
        load_vrs(bad)
    with pytest.raises(VRSError, match="cannot read checkpoint"):
        selector_module(bad)


def test_bad_selector_settings_are_errors(base_ckpt):
    with pytest.raises(VRSError, match="base_ckpt is not set"):
        selector_module(None)
    with pytest.raises(ConfigError, match="selector.sigma_max"):
        selector_module(base_ckpt, selector={**SELECTOR, "sigma_min": 0.5, "sigma_max": 0.5})
    with pytest.raises(ConfigError, match="module.val_lams"):
        selector_module(base_ckpt, val_lams=[0.0, 1.2])
    with pytest.raises(ConfigError, match="module.lam.high"):
        selector_module(base_ckpt, lam={"high": 2.0})
    with pytest.raises(ConfigError, match="posterior=lognormal"):
        selector_module(base_ckpt, prior={"name": "lognormal", "median": 0.5, "s": 0.5})


def test_diagnostics_log_images_to_a_wandb_logger(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    from vrs.selection.diagnostics import write_diagnostics

    class RecordingWandb(WandbLogger):
        def __init__(self):  # no W&B run: only record what would be logged
            self.calls = []

        def log_image(self, key, images, **kw):
            self.calls.append((key, images, kw))

        def log_metrics(self, metrics, step=None):
            self.calls.append(("metrics", metrics, {}))

    import numpy as np

    rng = np.random.default_rng(0)
    data = {"lams": [0.0, 0.5, 1.0], "sigma": rng.uniform(0.12, 1.0, (3, 50)), "confidence": rng.uniform(0, 1, 50)}
    lg = RecordingWandb()
    paths = write_diagnostics(data, tmp_path, [lg])
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    images = [c for c in lg.calls if c[0] != "metrics"]
    assert images and images[0][0] == "diagnostics/selector" and len(images[0][1]) == 3
    assert (tmp_path / "selector_diagnostics.npz").is_file()


def test_diagnostics_log_the_spread_of_the_chosen_sigma_per_lambda(tmp_path):
    """Known answers: at lambda 0 every image gets 0.25 (no spread); at lambda 1 the 25 images of class 0 get 0.12
    and the 25 of class 1 get 1.0 (the middle half spans grid cells), in the order of the margin (rank correlation 1)."""
    import json

    import numpy as np
    from pytorch_lightning.loggers import Logger

    from vrs.selection.diagnostics import write_diagnostics

    class Recording(Logger):
        name, version = "recording", 0
        def __init__(self):
            super().__init__()
            self.metrics = {}
        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)
        def log_hyperparams(self, *a, **kw):
            pass

    labels = np.repeat([0, 1], 25)
    margin = np.where(labels == 0, 0.1, 0.9) + np.arange(50) * 1e-3
    sigma = np.stack([np.full(50, 0.25), np.where(labels == 0, 0.12, 1.0)])
    data = {"lams": [0.0, 1.0], "sigma": sigma, "confidence": margin, "margin": margin, "labels": labels,
            "grid": [0.12, 0.25, 0.5, 1.0]}
    lg = Recording()
    write_diagnostics(data, tmp_path, [lg])
    m = lg.metrics
    assert m["diagnostics/sigma_lam0/iqr"] == 0 and m["diagnostics/sigma_lam0/spans_step"] == 0
    assert m["diagnostics/sigma_lam0/count_0.25"] == 50 and "diagnostics/sigma_lam0/rho_margin" not in m  # constant
    assert m["diagnostics/sigma_lam1/spans_step"] == 1 and m["diagnostics/sigma_lam1/iqr"] > 0.8
    assert m["diagnostics/sigma_lam1/mean_class0"] == 0.12 and m["diagnostics/sigma_lam1/mean_class1"] == 1.0
    assert m["diagnostics/sigma_lam1/rho_margin"] > 0.8
    assert json.loads((tmp_path / "sigma_summary.json").read_text())["diagnostics/sigma_lam1/spans_step"] == 1


# ---- vrs-train: both stages ------------------------------------------------------------------
VRS_APP = ["experiment=vrs_smoke", "data=digits", "model.width=16", "model.hidden=64", "logger=csv",
           "base_stage.trainer.max_epochs=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
           "module.diagnostics.enabled=false", "test=false"]


def test_vrs_train_runs_both_stages_and_writes_the_selector_checkpoint(tmp_path):
    from conftest import QUIET, compose_config

    from vrs.apps.train import run

    cfg = compose_config(*VRS_APP, *QUIET, output_dir=tmp_path)
    metrics = run(cfg)
    assert "val/acc" in metrics and "val/sigma_mean" in metrics
    base = tmp_path / "base" / "checkpoints"
    assert (base / "last.ckpt").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["vrs"]["kind"] == "vrs" and ckpt["vrs"]["base"]["source"].startswith(str(base))
    assert ckpt["vrs"]["base"]["noise"]["_target_"].endswith("LogUniformSigma")

    # base_ckpt given: the selector stage alone (no new base/ directory)
    out2 = tmp_path / "stage2"
    cfg = compose_config(*VRS_APP, *QUIET, f"base_ckpt={base / 'last.ckpt'}", output_dir=out2)
    run(cfg)
    assert (out2 / "checkpoints" / "last.ckpt").is_file() and not (out2 / "base").exists()


@pytest.mark.parametrize("override,match", [("selector.sigma_min=1.0", "selector.sigma_max"),
                                            ("module.lam.high=1.5", "module.lam.high"),
                                            ("module.val_lams=[0,2]", "module.val_lams"),
                                            ("prior=lognormal", "posterior=lognormal")])
def test_vrs_train_rejects_bad_settings_before_training(tmp_path, override, match):
    from conftest import QUIET, compose_config

    from vrs.apps.train import run

    cfg = compose_config(*VRS_APP, *QUIET, override, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("selector,prior,posterior,per_sample,objective", [
    ("cnn", "gaussian", "point", True, "paper"), ("cnn", "lognormal", "lognormal", False, "paper"),
    ("cnn", "uniform", "lognormal", True, "paper"), ("resnet20", "gaussian", "lognormal", False, "paper"),
    ("cnn", "gaussian", "point", True, "radius"), ("cnn", "lognormal", "lognormal", False, "radius"),
    ("cnn", "gaussian", "point", False, "adversarial"), ("mlp", "gaussian", "point", True, "paper"),
    ("mlp", "lognormal", "lognormal", False, "radius")])
def test_every_selector_prior_and_posterior_trains(base_ckpt, selector, prior, posterior, per_sample, objective):
    """The config groups compose into a working module: a few steps with finite losses that move the
    selector, for each prior / posterior pairing (lambda per batch or per sample) and objective."""
    from omegaconf import OmegaConf

    from conftest import compose_config

    cfg = compose_config("experiment=vrs_smoke", f"selector={selector}", f"prior={prior}", "data=digits",
                         f"selector.posterior={posterior}", f"module.lam.per_sample={str(per_sample).lower()}",
                         f"objective={objective}", f"base_ckpt={base_ckpt}", output_dir=Path("/nonexistent"))
    m = OmegaConf.to_container(cfg.module, resolve=True)
    module = SelectorModule(**{k: v for k, v in m.items() if not k.startswith("_")}, data=datamodule().spec.to_dict())
    assert module.selector.posterior == posterior and type(module.prior).__name__.lower().startswith(prior)
    assert module.objective.name == objective
    pl.seed_everything(0, verbose=False)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(module.selector.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in module.selector.parameters()]
    module.train()
    for _ in range(3):
        lam = module.lam_sampler(16)
        assert (lam.unique().numel() > 1) == per_sample
        loss = module.loss_terms(x, y, lam, sample=True)[0].mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.selector.parameters()))
