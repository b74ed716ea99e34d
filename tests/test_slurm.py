"""The submitit_slurm launcher against a real single-node Slurm (scripts/slurm/local_cluster.sh).

Needs root and Debian's slurm packages (the script installs them with apt when missing). It starts and
stops system daemons, so it runs only when asked: `VRS_TEST_SLURM=1 make test` (a documented check, see
README "Clusters"); skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "local_cluster.sh"


def _can_run_slurm() -> str | None:
    if os.environ.get("VRS_TEST_SLURM") != "1":
        return "starts system daemons: set VRS_TEST_SLURM=1 to run it"
    if os.geteuid() != 0:
        return "needs root to start munged/slurmctld/slurmd"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "no Slurm and no apt-get to install it"
    return None


@pytest.mark.slow
def test_two_job_multirun_through_submitit_slurm(tmp_path):
    reason = _can_run_slurm()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "slurm"
    env = dict(os.environ, VRS_SLURM_DIR=str(state))
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        up = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, up.stderr[-2000:]
        cmd = [sys.executable, "-m", "vrs.apps.train", "-m", "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=0",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
               "data=digits", "debug=fdr", "print_config=false", "logger=csv", "seed=0,1",
               f"paths.root_dir={tmp_path}"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-2000:]
        sweeps = list((tmp_path / "outputs" / "debug" / "multiruns").iterdir())
        assert len(sweeps) == 1
        sweep = sweeps[0]
        seeds = sorted(yaml.safe_load((sweep / str(i) / ".hydra" / "config.yaml").read_text())["seed"] for i in (0, 1))
        assert seeds == [0, 1]
        logs = list((sweep / ".submitit").glob("*/*_log.out"))
        assert len(logs) == 2
        for log in logs:
            assert "Job completed successfully" in log.read_text()
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
