"""benchmarks/input_dependent.py (issue 18): the step list, and (opt-in) the smoke size end to end plus a rerun that
skips every finished step."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, app_env

SCRIPT = REPO_ROOT / "benchmarks" / "input_dependent.py"


def test_estimate_lists_every_method_on_one_base_classifier():
    res = subprocess.run([sys.executable, str(SCRIPT), "--size", "cpu", "--estimate"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("train/base", "train/vrs", "train/dual_rs", "cert/fixed_0.12", "atk/fixed_1", "cert/vrs_0.5",
                 "atk/dual_rs_0.5", "cert/multiscale", "atk/dds", "report", "total"):
        assert name in res.stdout, name


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VRS_TEST_INPUT_DEPENDENT") != "1",
                    reason="~1-2 minutes on 2 shared cores (an experiment's end-to-end run): set "
                           "VRS_TEST_INPUT_DEPENDENT=1 to run it")
def test_smoke_end_to_end_and_rerun_skips(tmp_path):
    out = tmp_path / "idm"
    run = lambda: subprocess.run([sys.executable, str(SCRIPT), "--size", "smoke", "--out", str(out)],  # noqa: E731
                                 cwd=REPO_ROOT, env=app_env(out), capture_output=True, text=True, timeout=900)
    res = run()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    frontier = list(csv.DictReader((out / "report" / "frontier.csv").open()))
    curves = {r["curve"] for r in frontier}
    assert {"fixed sigma", "Multiscale (multiscale)", "DDS (empirical)"} <= curves
    assert any(c.startswith("Dual RS [") for c in curves) and any(c.startswith("VRS C1 [") for c in curves)
    record = json.loads((out / "experiment.json").read_text())
    assert record["status"] == "complete" and all(s.get("wall_s") is not None for s in record["steps"].values())
    again = run()
    assert again.returncode == 0
    assert json.loads((out / "experiment.json").read_text())["invocations"][-1]["ran"] == []
