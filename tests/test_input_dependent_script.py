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


def test_estimate_lists_every_method_on_one_base_classifier_and_the_cpu_size_fits_the_hour():
    res = subprocess.run([sys.executable, str(SCRIPT), "--size", "cpu", "--estimate"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("train/base", "train/vrs", "train/dual_rs", "cert/fixed_0.12", "atk/fixed_1", "cert/vrs_0.5",
                 "atk/dual_rs_0.5", "cert/multiscale", "atk/dds", "report", "total"):
        assert name in res.stdout, name
    total = float(res.stdout.splitlines()[-1].split()[0])
    assert 0 < total <= 50 * 60  # the "under 60 minutes on 2 CPUs", with the estimate's margin


def test_unit_estimate_counts_each_methods_samples():
    """The count-based estimate (rates per noisy sample): fixed sigma pays n0 + n forwards an image; VRS adds its
    selector draws, Multiscale its levels, DDS its search; attacks pay the gradients and PREDICT twice."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import input_dependent as idm

    size = idm.SIZES["cpu"]
    r = dict(fwd=1.0, grad=10.0, sel_fwd=100.0, sel_grad=1000.0, dds_step=7.0)
    assert idm.unit_seconds(size, r, "fixed_0.5", "cert") == size.n0 + size.n
    assert idm.unit_seconds(size, r, "vrs_0.5", "cert") == size.n0 + size.n + 100.0 * (64 + 1000)
    assert idm.unit_seconds(size, r, "dual_rs_0.5", "cert") == idm.unit_seconds(size, r, "vrs_0.5", "cert")
    assert idm.unit_seconds(size, r, "multiscale", "cert") == idm.MULTISCALE_LEVELS * (size.n0 + size.n)
    assert idm.unit_seconds(size, r, "dds", "cert") == size.n0 + size.n + 100 * 7.0
    passes = size.steps * size.eot
    assert idm.unit_seconds(size, r, "fixed_1", "attack") == passes * size.m * 10.0 + 2 * size.predict_n
    assert idm.unit_seconds(size, r, "vrs_0", "attack") == (passes * (size.m * 10.0 + 8 * 1000.0)
                                                           + 2 * (size.predict_n + size.deployed_n_h * 100.0))


def test_the_cpu_sizes_steps_compose(tmp_path):
    """One step of each kind of the cpu size composes as its app would and passes the config's value checks, so the
    hour's run does not fail on a config error after its training."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import input_dependent as idm
    from vrs.config_schema import check_values

    steps = {s.name: s for s in idm.build_steps(idm.SIZES["cpu"], tmp_path, None, "oracle_labels")}
    cfgs = {}
    for name in ("train/base", "train/dual_rs", "cert/vrs_0.5", "atk/dual_rs_0.5", "atk/dds"):  # the size's overrides
        s = steps[name]
        cfgs[name] = idm.compose(s.app, s.args, tmp_path / name)
        check_values(cfgs[name], s.app)
    assert cfgs["train/base"].model._target_ == "vrs.models.mlp.MLP" and cfgs["train/base"].trainer.max_epochs == 5
    assert cfgs["train/dual_rs"].selector.net.width == 8 and cfgs["train/dual_rs"].data.train_subset == 10_000
    atk = cfgs["atk/dual_rs_0.5"]
    assert (atk.attack.steps, atk.attack.eot, atk.defense.m, atk.predict.n, atk.defense.deployed_n_h) == (10, 1, 4,
                                                                                                         100, 100)
    assert cfgs["atk/dds"].defense.search_surrogate == {"steps": 10}


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
