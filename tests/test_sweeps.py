"""Sweeps and W&B bookkeeping (README "Sweeps", docs/wandb.md).

- `-m` over sigma, lambda, priors and attacks expands into one composed config per job (the sweeps of
  sigma with vrs-train and of lambda with vrs-certify are run for real in test_train / test_vrs_certify;
  an attack sweep runs here).
- `hparams_search=optuna` (in-memory storage) optimises the metric named by `optimized_metric`, and a
  name that no run logs is one clear error.
- W&B offline runs carry the experiment's group, the app's job type and the data/method/sigma|lam tags,
  read back from the run files that `wandb sync` would upload.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import QUIET, compose_config
from vrs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# Hydra's own logging set-up would attach file handlers to this process's root logger: keep it out.
NO_HYDRA_LOGGING = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
TINY_TRAIN = ["data=digits", "model.width=8", "model.hidden=32", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
              "+trainer.limit_val_batches=2", "test=false", "logger=csv", *QUIET]


def sweep_jobs(*overrides: str) -> list[list[str]]:
    """The per-job override lists Hydra's basic sweeper makes of `-m` overrides."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def run_multirun(app: str, *args: str, monkeypatch, root: Path) -> None:
    """`vrs-<app> -m args...` in this process (its real entry point, Hydra's sweeper and launcher)."""
    import importlib

    monkeypatch.setenv("VRS_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", [f"vrs-{app}", "-m", *args, *NO_HYDRA_LOGGING])
    GlobalHydra.instance().clear()
    importlib.import_module(f"vrs.apps.{app}").main()


# ---- -m over sigma, lambda, priors, attacks ------------------------------------------------------------------
def test_sigma_and_lambda_sweeps_expand_to_one_config_per_job():
    jobs = sweep_jobs("experiment=cohen_fmnist", "noise.sigma=0.12,0.25,0.5,1.0")
    cfgs = [compose_config(*job) for job in jobs]
    assert [c.noise.sigma for c in cfgs] == [0.12, 0.25, 0.5, 1.0] and {c.task_name for c in cfgs} == {"cohen_fmnist"}
    jobs = sweep_jobs("ckpt_path=x.ckpt", "certify=vrs_c1", "certify.lam=0,0.25,0.5,0.75,1")
    assert [compose_config(*job, config_name="certify").certify.lam for job in jobs] == [0, 0.25, 0.5, 0.75, 1]


def test_prior_sweep_composes_and_each_job_passes_the_selector_checks():
    from vrs.modules.selector import SelectorModule
    from omegaconf import OmegaConf

    def checked(job):
        cfg = compose_config(*job)
        SelectorModule.check_config(**OmegaConf.to_container(cfg.module, resolve=True))  # what vrs-train runs first
        return cfg.prior.name

    jobs = sweep_jobs("experiment=vrs_fmnist", "selector.posterior=lognormal", "prior=gaussian,lognormal,uniform")
    assert [checked(job) for job in jobs] == ["gaussian", "lognormal", "uniform"]
    # the default point posterior has no KL against a prior over sigma: that job stops with the key named
    with pytest.raises(ConfigError, match="prior=lognormal needs selector.posterior=lognormal"):
        checked(sweep_jobs("experiment=vrs_fmnist", "prior=gaussian,lognormal")[1])


def test_attack_sweep_runs_one_job_per_attack(digits_ckpt, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    run_multirun("attack", f"ckpt_path={digits_ckpt}", "data=digits", "attack=fgsm,pgd_l2", "attack.eps=0.1",
                 "++attack.steps=2", "attack.max=3", "defense.m=2", "predict.n=20", "print_config=false",
                 "logger=csv", f"hydra.sweep.dir={sweep}", monkeypatch=monkeypatch, root=tmp_path)
    summaries = [yaml.safe_load((sweep / str(j) / "summary.json").read_text()) for j in (0, 1)]
    assert [s["attack"] for s in summaries] == ["fgsm", "pgd_l2"]
    assert all(s["complete"] and s["subset"]["count"] == 3 for s in summaries)
    assert "attack=fgsm" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()


# ---- hparams_search=optuna ------------------------------------------------------------------------------------
def last_logged(metrics_csv: Path, key: str) -> float:
    with open(metrics_csv, newline="") as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r.get(key)][-1]


def test_optuna_optimises_the_metric_named_in_config(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    # val/loss, minimised: not the preset's val/acc, so the value must come from optimized_metric
    run_multirun("train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "optimized_metric=val/loss",
                 "hydra.sweeper.direction=minimize", *TINY_TRAIN, f"hydra.sweep.dir={sweep}",
                 monkeypatch=monkeypatch, root=tmp_path)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = [last_logged(sweep / str(j) / "csv" / "metrics.csv", "val/loss") for j in (0, 1)]
    assert math.isclose(result["best_value"], min(losses), rel_tol=1e-6), (result, losses)
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    assert not list(tmp_path.rglob("*.db"))  # storage: null keeps the study in memory


@pytest.mark.slow  # three Optuna trials
def test_optuna_study_in_sqlite_runs_two_trials_and_resumes_a_third(tmp_path, monkeypatch):
    """README: `hydra.sweeper.storage=sqlite:///study.db` keeps the study; a second sweep continues it."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna
    import sqlalchemy

    assert int(sqlalchemy.__version__.split(".")[0]) < 2, (
        f"SQLAlchemy {sqlalchemy.__version__} is installed; requirements.lock pins 1.4.54 (optuna 2.10 cannot create a "
        "study in a database under SQLAlchemy 2): reinstall with `make install`")
    storage = f"sqlite:///{tmp_path}/study.db"
    common = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=tiny", *TINY_TRAIN]
    run_multirun("train", *common, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}/a",
                 monkeypatch=monkeypatch, root=tmp_path)
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 2
    run_multirun("train", *common, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path}/b",
                 monkeypatch=monkeypatch, root=tmp_path)
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and trials[2].number == 2
    best = yaml.safe_load((tmp_path / "b" / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t.value for t in trials)  # the resumed sweep knows all three trials


def test_an_optimized_metric_no_run_logs_is_one_clear_error(tmp_path):
    from vrs.apps.train import optimized_value

    with pytest.raises(ConfigError, match=r"optimized_metric='val/nope' is not allowed: .*val/acc"):
        optimized_value({"val/acc": 0.5, "train/loss": 1.0}, "val/nope")
    assert optimized_value({"val/acc": 0.5}, "val/acc") == 0.5 and optimized_value({"val/acc": 0.5}, None) is None


# ---- W&B: group, job type and tags in the offline run files -----------------------------------------------------
def wandb_records(path: Path):
    """The records of an offline run file: W&B's 7-byte header, then LevelDB log chunks (crc32, length,
    type) in 32 KiB blocks; a record is one FULL chunk or FIRST, MIDDLE..., LAST."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            return
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run_record(run_root: Path, timeout: float = 60.0):
    """The RunRecord (run_group, job_type, tags, display_name) of the one offline run under run_root. wandb-core
    may still be writing the file for a moment after wandb.finish() returns: poll instead of reading once."""
    deadline = time.monotonic() + timeout
    while True:
        runs = list(run_root.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) <= 1, runs
        found = [r.run for r in wandb_records(runs[0]) if r.WhichOneof("record_type") == "run"] if runs else []
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no run record under {run_root}/wandb"
        time.sleep(0.2)


@pytest.fixture
def wandb_offline(monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from vrs.utils.loggers import finish_wandb

    yield
    finish_wandb()


def test_wandb_runs_are_grouped_by_experiment_and_tagged(wandb_offline, digits_ckpt, tmp_path):
    from vrs.apps.attack import run as attack
    from vrs.apps.certify import certify
    from vrs.apps.train import run as train
    from vrs.utils.loggers import finish_wandb

    # vrs-train, both VRS stages: one group (the experiment), stage and method in the tags
    cfg = compose_config("experiment=vrs_smoke", *TINY_TRAIN, "module.diagnostics.enabled=false", "logger=wandb",
                         output_dir=tmp_path / "train")
    train(cfg)
    finish_wandb()
    base, selector = wandb_run_record(tmp_path / "train" / "base"), wandb_run_record(tmp_path / "train")
    assert base.run_group == selector.run_group == "vrs_smoke" and base.job_type == selector.job_type == "train"
    assert {"data=digits", "method=vrs", "stage=base", "sigma=0.12-1"} <= set(base.tags)
    assert {"data=digits", "method=vrs", "stage=selector", "prior=gaussian", "vrs"} <= set(selector.tags)
    assert base.display_name == "vrs_smoke-base" and selector.display_name == "vrs_smoke-train"

    # vrs-certify and vrs-attack of a fixed-sigma checkpoint: Cohen's method at its sigma
    cfg = compose_config("data=digits", f"ckpt_path={digits_ckpt}", "certify.n0=10", "certify.n=50", "certify.max=2",
                         "certify.progress=false", "logger=wandb", "task_name=cohen_digits", config_name="certify",
                         output_dir=tmp_path / "certify")
    certify(cfg)
    finish_wandb()
    run = wandb_run_record(tmp_path / "certify")
    assert run.run_group == "cohen_digits" and run.job_type == "certify"
    assert {"data=digits", "method=cohen", "sigma=0.25", "certify"} <= set(run.tags)

    cfg = compose_config("data=digits", f"ckpt_path={digits_ckpt}", "attack=fgsm", "attack.eps=0.1", "attack.max=2",
                         "defense.m=2", "predict.n=20", "defense.lam=0.5", "logger=wandb", config_name="attack",
                         output_dir=tmp_path / "attack")
    attack(cfg)
    finish_wandb()
    run = wandb_run_record(tmp_path / "attack")
    assert run.run_group == "attack" and run.job_type == "attack"
    assert {"data=digits", "method=cohen", "sigma=0.25", "attack=fgsm"} <= set(run.tags)
    assert not any(t.startswith("lam=") for t in run.tags)  # defense.lam does not apply to a fixed sigma
