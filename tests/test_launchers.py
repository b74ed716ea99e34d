"""Hydra launchers, for real (each app in its own process): a two-job multirun through the basic launcher
(vrs-certify over sigma) and one through `hydra/launcher=submitit_local` (vrs-train over sigma, each job
a process that submitit starts) both finish with one run directory and one offline W&B run per job, and
`vrs-report` on the two sweep directories gives one table row per job with the swept value in it.
(submitit_slurm against a real Slurm: tests/test_slurm.py.)"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from conftest import run_app
from test_attacks_callbacks import wandb_bytes

pytestmark = pytest.mark.slow  # app processes, each sweep job a new one

SIGMAS = (0.25, 0.5)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def check_jobs(sweep: Path, key: str, metric: bytes) -> None:
    """One run directory per job, with the job's swept value in its overrides, and exactly one offline W&B
    run in it that holds the value and a logged metric."""
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    run_ids = set()
    for job, sigma in zip(jobs, SIGMAS):
        assert f"{key}={sigma}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        data = wandb_bytes(job / "wandb", metric)
        assert metric in data and f"sigma={sigma:g}".encode() in data  # a metric, and the run's sigma tag
        run_ids.add(runs[0].name)
    assert len(run_ids) == 2


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launchers")


@pytest.fixture(scope="module")
def certify_sweep(root, digits_ckpt) -> Path:
    """vrs-certify -m certify.sigma=0.25,0.5 through Hydra's basic launcher (jobs one after another)."""
    sweep = root / "basic"
    proc = run_app("certify", "-m", f"ckpt_path={digits_ckpt}", "data=digits", "logger=many",
                   f"certify.sigma={','.join(map(str, SIGMAS))}", "certify.n0=10", "certify.n=100", "certify.max=8",
                   "certify.progress=false", "print_config=false", f"hydra.sweep.dir={sweep}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def train_sweep(root) -> Path:
    """vrs-train -m noise.sigma=0.25,0.5 through hydra/launcher=submitit_local (one process per job)."""
    sweep = root / "submitit"
    proc = run_app("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                   "data=digits", "model.width=8", "logger=many", f"noise.sigma={','.join(map(str, SIGMAS))}",
                   "debug=limit", "trainer.max_epochs=1", "test=false", "trainer=cpu", "print_config=false",
                   "~callbacks.progress_bar", "~callbacks.model_summary", f"hydra.sweep.dir={sweep}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_basic_launcher_two_jobs(certify_sweep):
    check_jobs(certify_sweep, "certify.sigma", b"cert/acr")
    for job in job_dirs(certify_sweep):
        assert (job / "certify.tsv").is_file() and (job / "summary.json").is_file()


def test_submitit_local_two_jobs(train_sweep):
    check_jobs(train_sweep, "noise.sigma", b"val/acc")
    for job in job_dirs(train_sweep):
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "csv" / "metrics.csv").is_file()
    # submitit ran each job as its own process and recorded that it finished
    logs = sorted((train_sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("completed successfully" in p.read_text() for p in logs), logs


def test_report_on_both_sweeps(certify_sweep, train_sweep, root):
    out = root / "report"
    proc = run_app("report", f"report.inputs=[{certify_sweep},{train_sweep}]", f"report.out_dir={out}", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Report: {out / 'report.md'}" in proc.stdout
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # one row per job, with its swept value in the sigma and overrides columns and its run directory
    got = sorted((r["kind"], float(r["sigma"]), r["run_dirs"]) for r in rows)
    want = sorted([("certify", s, str(certify_sweep / str(i))) for i, s in enumerate(SIGMAS)]
                  + [("train", s, str(train_sweep / str(i))) for i, s in enumerate(SIGMAS)])
    assert got == want
    for r in rows:
        key = "certify.sigma" if r["kind"] == "certify" else "noise.sigma"
        assert f"{key}={float(r['sigma']):g}" in r["overrides"].split(" ")
        if r["kind"] == "certify":
            assert r["images"] == "8" and r["n"] == "100" and 0 <= float(r["ACR"])
        else:
            assert r["epochs"] == "1" and 0 <= float(r["clean_acc"]) <= 1
