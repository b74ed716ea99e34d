"""Shared test helpers and fixtures.

Running the suite:
- `make test`: the whole suite on TEST_WORKERS (default 2) pytest-xdist workers (`-n 2 --dist worksteal`),
  the setting measured fastest on 2 CPU cores; `make test-fast` leaves out the tests marked `slow` (the
  inner loop). A plain `python -m pytest tests/test_x.py` runs in one process, as before.
- Under xdist each worker uses one intra-op thread, and so does every app process it starts
  (OMP_NUM_THREADS=1 is inherited): the models here are tiny, and two workers on two cores fill the machine.
  Measured on the 2-core CPU machine, shared with other jobs (load 4-5), 2026-12-06, on a quarter of the
  suite (test_train, test_certify_app, test_vrs_objectives, test_schemas, test_configs, test_attacks_app;
  250 tests), wall / CPU seconds: before this set-up, one process 440 s / 328 s; now, one process 300 s /
  290 s, 2 workers 231 s / 212 s, 3 workers 230 s / 229 s (no faster, more CPU: 2 it is).
- Mark a test `@pytest.mark.slow` if it starts app processes or trains for more than a few seconds:
  `make test-fast` (`-m "not slow"`) leaves it out; `make test` runs everything.
- Tests may run at the same time in other processes: each writes only under its own tmp_path (or a
  tmp_path_factory folder), runs apps with `run_app(..., root=tmp_path)` (VRS_ROOT, never the repository's
  outputs/), and picks no fixed port. `shared_across_workers` makes an expensive artefact once for all workers.

Helpers and fixtures:
- `compose_config(*overrides, config_name="train", output_dir=None)`: compose a config from conf/
  with Hydra's compose API (no run directory is made; pass output_dir to resolve `paths.output_dir`).
- `run_app(app, *args, root=...)`: run a console app (`python -m vrs.apps.<app>`) in a subprocess with
  outputs under `root`, W&B offline; returns the CompletedProcess (stdout/stderr as text).
- `call_main(app, argv, capsys)`: `vrs-<app> argv...` through the app's `main` in this process (Hydra's
  command line, the error handling and its exit code, without the seconds a new process spends importing
  torch and Lightning): (exit code, stderr); `one_error_line(code, stderr)` checks a refusal's exit code 2,
  single `error:` line and no traceback, and returns that line.
- `shared_across_workers(tmp_path_factory, name, make)`: a folder that `make(folder)` fills once per test
  run, whichever xdist worker asks first (the others wait for it and reuse it).
- fixture `digits_run` (session, one for all workers): a small LeNet trained in-process on data=digits with
  noise.sigma=0.25 for a few epochs; a `TrainedRun` with run_dir, ckpt (last.ckpt), best_ckpt,
  metrics, overrides (to resume or rebuild it) and the composed cfg. Read-only: copy it to change it.
- fixture `digits_ckpt` (session): the Path of that run's last.ckpt, for tests that need a trained
  classifier checkpoint (certification, prediction, attacks).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# An xdist worker (`make test`): one thread here and in the app processes it starts, set before torch loads.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vrs.apps import CONFIG_DIR

if XDIST_WORKER:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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
    return [sys.executable, "-m", f"vrs.apps.{app}", *args]


def run_app(app: str, *args: str, root: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m vrs.apps.<app> args...` with outputs under root; returns the finished process."""
    return subprocess.run(app_command(app, *args), cwd=REPO_ROOT, env=app_env(root, **env), capture_output=True,
                          text=True, timeout=timeout)


def call_main(app: str, argv: list[str], capsys) -> tuple[int | str | None, str]:
    """`vrs-<app> argv...` in this process: (exit code, stderr). Set VRS_ROOT (monkeypatch) for its outputs."""
    module = importlib.import_module(f"vrs.apps.{app}")
    GlobalHydra.instance().clear()
    old = sys.argv
    sys.argv = [f"vrs-{app}", *argv]
    try:
        module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def one_error_line(code: int | str | None, err: str) -> str:
    """The one `error:` line of an app that refused its input: exit code 2, no traceback, one such line."""
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def shared_across_workers(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `make(folder)` once per test run: by the first xdist worker that asks,
    under a file lock that the others wait on (in a run without xdist, simply made here)."""
    base = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        base = base.parent  # pytest-of-<user>/pytest-<n>/: the run's folder, above each worker's own
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed here left
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


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
    """A LeNet trained on data=digits (sigma = 0.25, 6 epochs) in-process; ~85-95% clean test accuracy.
    Trained once per test run and shared by the xdist workers: do not write into its run directory."""
    overrides = DIGITS_OVERRIDES + QUIET

    def make(folder: Path) -> None:
        from vrs.apps.train import train

        metrics = train(compose_config(*overrides, output_dir=folder / "run"))
        (folder / "metrics.json").write_text(json.dumps(metrics))

    folder = shared_across_workers(tmp_path_factory, "digits_run", make)
    run_dir = folder / "run"
    cfg = compose_config(*overrides, output_dir=run_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
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
