"""benchmarks/training_methods.py without running it: every step is listed with an estimate, and each training step's
overrides (one job of its sweep) pass the config check of vrs-train, so a size does not fail hours in. The end-to-end
smoke size (~12 minutes on 2 shared cores) is run by hand: docs/training.md, "Measured"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT, compose_config

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import training_methods as tm


@pytest.mark.parametrize("size, vrs", [("cpu", True), ("cpu-lenet", False), ("gpu", True)])
def test_estimate_lists_every_step(size, vrs):
    """The cpu and gpu sizes add VRS on each method's base; the first cpu size (cpu-lenet) has none."""
    res = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "training_methods.py"), "--size", size,
                          "--estimate"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("train/gaussian/g0", "train/macer/g1", "cert/fixed", "atk/fixed", "report", "total"):
        assert name in res.stdout, name
    for name in ("train/vrs_smoothadv", "cert/vrs", "atk/vrs"):
        assert (name in res.stdout) == vrs, name


def one_job(args: list[str]) -> list[str]:
    """The overrides of a sweep's first job: `-m` dropped, `key=a,b` -> `key=a`, Hydra's own keys left out."""
    out = []
    for a in args:
        if a == "-m" or a.startswith("hydra."):
            continue
        key, _, value = a.partition("=")
        out.append(f"{key}={value.split(',')[0]}" if "," in value and not value.startswith("[") else a)
    return out


@pytest.mark.parametrize("size", ["cpu", "cpu-lenet", "gpu"])
def test_every_training_step_passes_the_config_check(tmp_path, size):
    """Every training step of the cpu and gpu sizes composes and passes the checks (the gpu size's trainer=gpu is
    checked by values only here; the smoke size is run end to end by hand)."""
    from vrs.config_schema import check_values

    spec = tm.SIZES[size]
    steps, ckpts = tm.build_steps(spec, tmp_path, None, tm.METHODS)
    train = [s for s in steps if s.app == "train"]
    # one sweep per method, VRS on each base (cpu, gpu), and MACER's second sweep (its lambda at sigma 1.0)
    assert len(train) == len(tm.METHODS) * (2 if spec.vrs else 1) + (1 if 1.0 in spec.sigmas else 0)
    assert sum(len(v) for v in ckpts["fixed"].values()) == len(tm.METHODS) * len(tm.SIZES[size].sigmas)
    for s in train:
        check_values(compose_config(*one_job(s.args), output_dir=tmp_path), "train")
