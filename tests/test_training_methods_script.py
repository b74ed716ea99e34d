"""benchmarks/training_methods.py without running it: every step is listed with an estimate, and each training step's
overrides (one job of its sweep) pass the config check of vrs-train, so a size does not fail hours in. The end-to-end
smoke size (~12 minutes on 2 shared cores) is run by hand: docs/training.md, "Measured"."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT, compose_config

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import training_methods as tm


def test_estimate_lists_every_step():
    res = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "training_methods.py"), "--size", "cpu",
                          "--estimate"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("train/gaussian/g0", "train/macer/g1", "train/vrs_smoothadv", "cert/fixed", "cert/vrs", "atk/fixed",
                 "atk/vrs", "report", "total"):
        assert name in res.stdout, name


def one_job(args: list[str]) -> list[str]:
    """The overrides of a sweep's first job: `-m` dropped, `key=a,b` -> `key=a`, Hydra's own keys left out."""
    out = []
    for a in args:
        if a == "-m" or a.startswith("hydra."):
            continue
        key, _, value = a.partition("=")
        out.append(f"{key}={value.split(',')[0]}" if "," in value and not value.startswith("[") else a)
    return out


def test_every_training_step_of_the_cpu_size_passes_the_config_check(tmp_path):
    """The cpu size (the gpu size differs in trainer and data only; the smoke size is run end to end by hand)."""
    from vrs.config_schema import check_values

    size = "cpu"
    steps, ckpts = tm.build_steps(tm.SIZES[size], tmp_path, None, tm.METHODS)
    train = [s for s in steps if s.app == "train"]
    assert len(train) == len(tm.METHODS) * 2 + (1 if 1.0 in tm.SIZES[size].sigmas else 0)  # MACER's lambda at 1.0
    assert sum(len(v) for v in ckpts["fixed"].values()) == len(tm.METHODS) * len(tm.SIZES[size].sigmas)
    for s in train:
        check_values(compose_config(*one_job(s.args), output_dir=tmp_path), "train")
