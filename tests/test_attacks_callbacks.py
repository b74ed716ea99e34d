"""Robustness callbacks (vrs.callbacks.robustness) on a digits classifier: they run at validation end every k
epochs and at test end, log robust/acc@..., cert/acc@..., cert/acr to every logger (CSV and W&B offline here),
count abstentions as errors, and leave the training module as they found it."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import DIGITS_OVERRIDES, QUIET, compose_config
from vrs.callbacks.robustness import CertifiedRobustness, EmpiricalRobustness, evaluation_state
from vrs.errors import ConfigError
from vrs.modules.classifier import NoisyClassifierModule

SMALL = ["callbacks=[default,robustness]", "callbacks.empirical_robustness.num_images=12",
         "callbacks.empirical_robustness.attacks=[{name: pgd_l2, norm: l2, eps: [0.5], steps: 3}]",
         "callbacks.empirical_robustness.predict_n=50", "callbacks.empirical_robustness.m=4",
         "callbacks.certified_robustness.num_images=8", "callbacks.certified_robustness.n0=10",
         "callbacks.certified_robustness.n=100", "callbacks.empirical_robustness.every_n_epochs=2",
         "callbacks.certified_robustness.every_n_epochs=2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def merged(*overrides: str) -> list[str]:
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0]] = o
    return list(out.values())


def test_callbacks_during_training_log_to_every_logger(tmp_path, monkeypatch):
    from vrs.apps.train import train
    from vrs.utils.loggers import finish_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(*merged(*DIGITS_OVERRIDES, *QUIET, "trainer.max_epochs=3", "logger=many", *SMALL),
                         output_dir=tmp_path)
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    keys = ["robust/acc@pgd_l2_0.5", "robust/soft_acc@pgd_l2_0.5", "robust/clean_acc", "cert/acc@0",
            "cert/acc@0.5", "cert/acr", "cert/abstain"]
    for key in keys:  # validation end (epoch 2 of 3, every_n_epochs=2) and test end
        assert key in metrics and "test/" + key in metrics, key
        assert 0.0 <= metrics[key] <= (1.0 if "acr" not in key else 10.0)
    assert metrics["cert/acc@0"] >= metrics["cert/acc@0.5"] >= metrics["cert/acc@1"]
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("robust/acc@pgd_l2_0.5")]
    assert [int(r["epoch"]) for r in logged] == [1]  # once, at the end of the second epoch
    assert any(r.get("test/cert/acr") for r in rows)
    keys = (b"robust/acc@pgd_l2_0.5", b"cert/acr", b"test/cert/acc@0.5")
    data = wandb_bytes(tmp_path / "wandb", *keys)
    assert all(k in data for k in keys)


def wandb_bytes(run_root, *keys: bytes, timeout: float = 60.0) -> bytes:
    """The offline W&B run file under run_root once it holds every key: wandb-core may still be writing it
    for a moment after wandb.finish() returns, so poll (up to `timeout` seconds) instead of reading once."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        runs = list(run_root.glob("offline-run-*/run-*.wandb"))
        data = runs[0].read_bytes() if len(runs) == 1 else b""
        if (len(runs) == 1 and all(k in data for k in keys)) or time.monotonic() > deadline:
            assert len(runs) == 1, runs
            return data
        time.sleep(0.2)


class FakeTrainer(SimpleNamespace):
    """What the callbacks read from a trainer: rank, epoch, sanity flag and the data module's splits."""


def fake_trainer(dm, epoch=0):
    return FakeTrainer(global_rank=0, current_epoch=epoch, sanity_checking=False, datamodule=dm)


@pytest.fixture(scope="module")
def digits_module(digits_ckpt):
    from hydra.utils import instantiate

    module = NoisyClassifierModule.load_from_checkpoint(digits_ckpt, map_location="cpu")
    cfg = compose_config(*DIGITS_OVERRIDES)
    dm = instantiate(cfg.data)
    dm.setup()
    return module, dm


def test_callbacks_restore_the_module_and_random_state(digits_module):
    module, dm = digits_module
    module.train()
    flags = [p.requires_grad for p in module.parameters()]
    cb = EmpiricalRobustness(attacks=[{"name": "pgd_l2", "norm": "l2", "eps": [0.5, 1.0], "steps": 3}], num_images=8,
                             predict_n=50, m=4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.inference_mode():  # as in Lightning's validation loop
        with pytest.warns(UserWarning, match="self.log"):  # no real trainer attached: nothing to log to
            cb.on_validation_epoch_end(fake_trainer(dm), module)
    assert torch.equal(torch.rand(3), expected)  # the training run's random stream is untouched
    assert module.training and module.net.training
    assert [p.requires_grad for p in module.parameters()] == flags
    m = cb.last_metrics
    assert set(m) >= {"robust/acc@pgd_l2_0.5", "robust/acc@pgd_l2_1", "robust/soft_acc@pgd_l2_0.5", "robust/clean_acc"}
    assert m["robust/acc@pgd_l2_1"] <= m["robust/clean_acc"] + 0.25
    # every_n_epochs: epoch index 0 with k = 2 -> nothing runs
    cb2 = EmpiricalRobustness(attacks={"name": "none", "norm": "l2", "eps": 0.0}, num_images=4, every_n_epochs=2)
    cb2.on_validation_epoch_end(fake_trainer(dm, epoch=0), module)
    assert cb2.last_metrics == {}


def test_abstentions_are_errors_in_callback_metrics(digits_module):
    """predict_n = 5 (empirical) and n = 5 (certified) can never reach alpha: every image abstains."""
    module, dm = digits_module
    emp = EmpiricalRobustness(attacks={"name": "none", "norm": "l2", "eps": 0.0}, num_images=8, predict_n=5)
    cert = CertifiedRobustness(num_images=8, n0=5, n=5, radii=[0.0, 0.5])
    with pytest.warns(UserWarning):
        emp.on_test_epoch_end(fake_trainer(dm), module)
        cert.on_test_epoch_end(fake_trainer(dm), module)
    assert emp.last_metrics["test/robust/acc@none_0"] == 0.0 and emp.last_metrics["test/robust/clean_acc"] == 0.0
    assert emp.last_metrics["test/robust/soft_acc@none_0"] > 0.5
    assert cert.last_metrics["test/cert/acc@0"] == 0.0 and cert.last_metrics["test/cert/acr"] == 0.0
    assert cert.last_metrics["test/cert/abstain"] == 1.0


def test_certified_callback_matches_cohen_metrics(digits_module):
    """The callback's numbers are core.certified_accuracy / ACR of SmoothedClassifier.certify on the same
    seeded subset."""
    from vrs.data.datamodule import to_float
    from vrs.smoothing import core
    from vrs.smoothing.smoothed import SmoothedClassifier, image_seed

    module, dm = digits_module
    cb = CertifiedRobustness(num_images=10, n0=10, n=200, radii=[0.0, 0.25], seed=5)
    with pytest.warns(UserWarning, match="self.log"):
        cb.on_test_epoch_end(fake_trainer(dm), module)
    x, y = dm.splits["test"]
    x, y = to_float(x[:10].clone()), y[:10]
    pred, radius = SmoothedClassifier(module.net, 10, 0.25).certify(x, 10, 200, 0.001, 1000,
                                                                  seeds=[image_seed(5, i) for i in range(10)])
    correct = pred.numpy() == y.numpy()
    acc = core.certified_accuracy(radius.numpy(), correct, [0.0, 0.25])
    assert math.isclose(cb.last_metrics["test/cert/acc@0"], acc[0])
    assert math.isclose(cb.last_metrics["test/cert/acc@0.25"], acc[1])
    assert math.isclose(cb.last_metrics["test/cert/acr"], core.average_certified_radius(radius.numpy(), correct))
    assert cb.last_metrics["test/cert/acc@0"] > 0.5


def test_evaluation_state_restores_flags_on_error(digits_module):
    module, _ = digits_module
    module.train()
    with pytest.raises(RuntimeError):
        with evaluation_state(module):
            assert not module.training and not any(p.requires_grad for p in module.parameters())
            assert torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert module.training and all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("kwargs,key", [({"attacks": []}, "attacks"),
                                        ({"attacks": {"name": "pgd_l2", "norm": "l2", "eps": -1}}, "attack.eps"),
                                        ({"attacks": {"name": "nope", "eps": 0.5}}, "attack.name"),
                                        ({"attacks": {"name": "none", "eps": 0.0}, "num_images": 0}, "num_images"),
                                        ({"attacks": {"name": "none", "eps": 0.0}, "lams": [2]}, "lams")])
def test_bad_callback_settings(kwargs, key):
    with pytest.raises(ConfigError) as err:
        EmpiricalRobustness(**kwargs)
    assert err.value.key.startswith(key)
    with pytest.raises(ConfigError):
        CertifiedRobustness(n0=100, n=10)
    with pytest.raises(ConfigError):
        CertifiedRobustness(radii=[-1])
