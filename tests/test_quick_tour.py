"""The README's quick tour, its commands as written (read from README.md), at smoke size: each step's sizes are
replaced by tiny ones (`debug=smoke`, a few images, small n), nothing else. Each step must find the previous
step's outputs where the tour says they are: `R=outputs/vrs_fmnist/runs/<timestamp>` (the run directory step 1
prints), its checkpoints, and `outputs/vrs_fmnist/` holding the certify and attack sweeps for vrs-report.

Runs as real processes in a temporary root (the current directory, and VRS_ROOT), on the installed Fashion-MNIST.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import FASHION_MNIST_DIR, REPO_ROOT, app_command, app_env

# Appended to each app's command, replacing the same keys: sizes only.
SMOKE = {
    "vrs-train": ["debug=smoke", f"data.root={FASHION_MNIST_DIR}", "print_config=false", "logger=csv"],
    "vrs-certify": ["certify.n0=10", "certify.n=50", "certify.max=2", "certify.n_h0=8", "certify.n_h=32",
                    "certify.progress=false", f"data.root={FASHION_MNIST_DIR}", "print_config=false"],
    "vrs-attack": ["attack.max=2", "attack.steps=1", "attack.eot=1", "defense.m=2", "predict.n=20",
                   f"data.root={FASHION_MNIST_DIR}", "print_config=false"],
    "vrs-report": [],
}


def tour_commands() -> list[str]:
    """The quick tour's code block: one command per entry, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"## Quick tour\n.*?```\n(.*?)```", text, re.S).group(1)
    return [" ".join(shlex.split(cmd, comments=True)) for cmd in block.replace("\\\n", " ").splitlines() if cmd.strip()]


def key_of(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def smoke_size(cmd: str, run_dir: str | None) -> list[str]:
    app, *args = shlex.split(cmd.replace("$R", run_dir or "$R"))
    extra = [a for a in SMOKE[app] if not (app == "vrs-certify" and "certify=vrs_c1" not in args and "_h" in a)]
    keys = {key_of(a) for a in extra}
    return [app, *[a for a in args if key_of(a) not in keys], *extra]


@pytest.mark.slow  # about 90 s on 2 CPU cores: five app processes
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_the_quick_tour_runs_as_written_at_smoke_size(tmp_path):
    cmds = tour_commands()
    assert [c.split()[0] for c in cmds] == ["vrs-train", "R=outputs/vrs_fmnist/runs/<timestamp>", "vrs-certify",
                                            "vrs-certify", "vrs-attack", "vrs-report"], cmds
    run_dir = None
    outputs = tmp_path / "outputs" / "vrs_fmnist"
    for cmd in cmds:
        if cmd.startswith("R="):
            runs = list((tmp_path / cmd[2:].split("<")[0]).iterdir())  # the tour's place for step 1's run
            assert len(runs) == 1 and Path(run_dir).resolve() == runs[0].resolve(), (runs, run_dir)
            run_dir = str(runs[0].relative_to(tmp_path))  # as the user would write it: outputs/vrs_fmnist/runs/...
            continue
        app, *args = smoke_size(cmd, run_dir)
        proc = subprocess.run(app_command(app.removeprefix("vrs-"), *args), cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env=app_env(tmp_path, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, (cmd, proc.stderr[-3000:])
        if app == "vrs-train":
            run_dir = re.search(r"^Run directory: (.+)$", proc.stdout, re.M).group(1)
            assert (Path(run_dir) / "checkpoints" / "last.ckpt").is_file()
            assert (Path(run_dir) / "base" / "checkpoints" / "last.ckpt").is_file()
    sweeps = sorted((outputs / "multiruns").iterdir())
    assert len(sweeps) == 3  # certify (VRS), certify (fixed sigma), attack: three jobs each
    assert all(len(list(s.glob("[0-9]*/summary.json"))) == 3 for s in sweeps), sweeps
    report = (next((tmp_path / "outputs" / "report" / "runs").iterdir()) / "report.csv").read_text()
    for sweep in sweeps:  # vrs-report found every job of every sweep under outputs/vrs_fmnist
        assert all(str(job) in report for job in sweep.glob("[0-9]*")), (sweep, report)
