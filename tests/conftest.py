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
  `make test-fast` (`-m "not slow"`) leaves it out; `make test` runs everything. FAST_LOOP_SLOW below marks
  the longest of the rest in one place (the fast loop's budget: under 2 minutes on 2 cores).
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



# `make test-fast` leaves these out too (marked slow at collection): the tests that kept it over 2 minutes on the
# 2-core machine. They are the longest of the unmarked tests in `make test-fast --durations=0` (2026-12-06, 2
# workers, machine shared with other jobs at load ~8: 1,001 tests, 19 min 34 s wall, 11 min 31 s CPU); together
# they held 78% of its summed per-test seconds (1,689 of 2,173 s; every parametrization of each). App
# subprocesses, trainings, preset smoke runs and the in-process bad-input tables; `make test` runs them all.
FAST_LOOP_SLOW = frozenset({
    "test_attacks_app.py::test_metrics_and_plot_reach_csv_and_wandb_loggers",
    "test_attacks_app.py::test_vrs_checkpoint_sigma_down_and_fixed_sigma_baseline",
    "test_certify_app.py::test_bad_checkpoints_in_process_leave_results_untouched",
    "test_fused_blocks.py::test_kernel_matches_the_blocks_in_triton_interpreter",
    "test_fuzz.py::test_a_bad_multirun_job_stops_the_sweep_before_any_job_runs",
    "test_fuzz.py::test_a_refusal_in_its_own_run_directory_leaves_hydras_files",
    "test_fuzz.py::test_a_refused_resume_writes_nothing",
    "test_fuzz.py::test_a_resume_with_nothing_to_do_describes_the_whole_store",
    "test_fuzz.py::test_a_training_run_resumes_in_its_own_folder_and_only_so",
    "test_fuzz.py::test_malformed_input_gives_one_line_and_changes_nothing",
    "test_fuzz.py::test_repeated_result_rows_count_once_with_a_note",
    "test_importers.py::test_an_imagenet_resnet50_in_dataparallel_imports_with_its_constants",
    "test_importers.py::test_the_imported_network_gives_the_original_logits",
    "test_input_dependent.py::test_each_method_certifies_and_is_attacked_on_digits_and_the_report_puts_them_on_one_frontier",
    "test_presets.py::test_certify_and_attack_preset_smoke_variant_runs",
    "test_presets.py::test_training_preset_smoke_variant_runs",
    "test_reliability.py::test_bf16_certification_agrees_with_fp32_within_monte_carlo_error",
    "test_reliability.py::test_same_seed_gives_the_same_certify_tsv_whatever_the_batching",
    "test_report.py::test_a_report_folder_takes_only_a_report_of_the_same_inputs",
    "test_report.py::test_bad_input_is_one_error_and_keeps_the_old_report",
    "test_report.py::test_markdown_plots_and_atomic_files",
    "test_report.py::test_one_row_per_config_with_each_runs_numbers",
    "test_report_frontier.py::test_every_selector_trained_on_one_stage1_file_gets_the_frontier",
    "test_report_frontier.py::test_unpaired_stage1_when_fine_tuned",
    "test_report_frontier.py::test_vrs_points_above_below_and_outside_the_frontier",
    "test_resume.py::test_resume_from_a_bad_checkpoint_is_one_clear_error",
    "test_resume.py::test_resume_from_an_epoch_end_checkpoint_is_bit_identical",
    "test_resume.py::test_without_reseeding_the_resumed_run_differs",
    "test_schemas.py::test_bad_values_name_the_key",
    "test_schemas.py::test_shipped_configs_pass",
    "test_step_graph.py::test_cuda_graph_true_names_what_conflicts",
    "test_step_graph.py::test_lightning_training_with_the_captured_step_equals_eager_training",
    "test_sweeps.py::test_attack_sweep_runs_one_job_per_attack",
    "test_sweeps.py::test_optuna_optimises_the_metric_named_in_config",
    "test_sweeps.py::test_wandb_runs_are_grouped_by_experiment_and_tagged",
    "test_train.py::test_bad_input_gives_one_clear_line",
    "test_train.py::test_python_m_vrs_apps_train_help",
    "test_training_methods_script.py::test_every_training_step_passes_the_config_check",
    "test_vrs_certify.py::test_c1_is_the_default_for_vrs_checkpoints_and_matches_the_pure_certificate",
    "test_vrs_objectives.py::test_adversarial_objective_on_the_two_cluster_toy",
    "test_vrs_objectives.py::test_oracle_labels_objective_picks_a_larger_sigma_for_the_easy_cluster",
    "test_vrs_objectives.py::test_paper_objective_on_the_two_cluster_toy_collapses_onto_the_prior_target",
    "test_vrs_objectives.py::test_radius_objective_picks_a_larger_sigma_for_the_easy_cluster",
    "test_vrs_train.py::test_every_selector_prior_and_posterior_trains",
    "test_vrs_train.py::test_paper_objective_reproduces_the_old_loss_exactly",
    "test_vrs_train.py::test_vrs_train_runs_both_stages_and_writes_the_selector_checkpoint",
    # the longest left in a second run of the fast loop (load ~7; 7 min 51 s wall, 4 min 31 s CPU), 9-26 s each
    "test_attacks_app.py::test_resume_adds_new_eps_and_repairs_a_crash",
    "test_attacks_callbacks.py::test_callbacks_during_training_log_to_every_logger",
    "test_importers.py::test_every_app_accepts_an_imported_checkpoint",
    "test_sweeps.py::test_sigma_and_lambda_sweeps_expand_to_one_config_per_job",
    "test_training_methods.py::test_a_smoothadv_run_resumed_mid_epoch_is_bit_identical",
})


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if f"{item.path.name}::{item.originalname}" in FAST_LOOP_SLOW:
            item.add_marker(pytest.mark.slow)


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
