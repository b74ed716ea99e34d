"""Shared test helpers and fixtures.

- `compose_config(*overrides, config_name="train", output_dir=None)`: compose a config from conf/
  with Hydra's compose API (no run directory is made; pass output_dir to resolve `paths.output_dir`).
- `run_app(app, *args, root=...)`: run a console app (`python -m vrs.<app>`) in a subprocess with
  outputs under `root`, W&B offline; returns the CompletedProcess (stdout/stderr as text).
- fixture `digits_run` (session): a small LeNet trained in-process on data=digits with
  noise.sigma=0.25 for a few epochs; a `TrainedRun` with run_dir, ckpt (last.ckpt), best_ckpt,
  metrics, overrides (to resume or rebuild it) and the composed cfg.
- fixture `digits_ckpt` (session): the Path of that run's last.ckpt, for tests that need a trained
  classifier checkpoint (certification, prediction, attacks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vrs.apps import CONFIG_DIR

REPO_ROOT = Path(CONFIG_DIR).parent
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Quiet, CPU-only training settings for in-process runs: no progress bars or model summaries.
QUIET = ["trainer=cpu", "print_config=false", "~callbacks.progress_bar", "~callbacks.model_summary",
         "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]

# The session checkpoint: LeNet (narrow) on scikit-learn's 8x8 digits, sigma = 0.25, seconds on a CPU.
DIGITS_OVERRIDES = ["data=digits", "model.width=16", "model.hidden=64", "noise=fixed", "noise.sigma=0.25",
                    "trainer.max_epochs=6", "logger=csv", "seed=0"]


def compose_config(*overrides: str, config_name: str = "train", output_dir: str | Path | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml with overrides; with output_dir, set paths.output_dir to it.

    Hydra's own node is composed too and installed as the current HydraConfig (so `${hydra:...}`
    interpolations resolve), then left out of the returned config, as in a real run.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if output_dir is not None and "paths" in cfg:
            cfg.paths.output_dir = str(output_dir)
    return cfg


def app_env(root: str | Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess app: outputs under root, W&B offline with no key, no colour codes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "VRS_", "HYDRA_"))}
    env.update(VRS_ROOT=str(root), WANDB_MODE="offline", WANDB_SILENT="true", NO_COLOR="1", TERM="dumb",
               COLUMNS="120", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def app_command(app: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"vrs.{app}", *args]


def run_app(app: str, *args: str, root: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m vrs.<app> args...` with outputs under root; returns the finished process."""
    return subprocess.run(app_command(app, *args), cwd=REPO_ROOT, env=app_env(root, **env), capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class TrainedRun:
    run_dir: Path
    ckpt: Path
    best_ckpt: Path
    metrics: dict[str, float]
    overrides: list[str]
    cfg: DictConfig = field(repr=False)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> TrainedRun:
    """A LeNet trained on data=digits (sigma = 0.25, 6 epochs) in-process; ~85-95% clean test accuracy."""
    from vrs.apps.train import train

    run_dir = tmp_path_factory.mktemp("digits_run")
    overrides = DIGITS_OVERRIDES + QUIET
    cfg = compose_config(*overrides, output_dir=run_dir)
    metrics = train(cfg)
    ckpt_dir = run_dir / "checkpoints"
    best = [p for p in ckpt_dir.glob("epoch_*.ckpt")]
    assert (ckpt_dir / "last.ckpt").is_file() and len(best) == 1, sorted(ckpt_dir.iterdir())
    return TrainedRun(run_dir, ckpt_dir / "last.ckpt", best[0], metrics, overrides, cfg)


@pytest.fixture(scope="session")
def digits_ckpt(digits_run: TrainedRun) -> Path:
    """Path of a trained digits classifier checkpoint (Lightning .ckpt of NoisyClassifierModule)."""
    return digits_run.ckpt


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and does not collapse when other jobs share the CPU.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
