"""vrs-attack end to end on the session's digits classifier (tests/conftest.py) and on a small VRS checkpoint:
outputs, resume after a crash, abstentions counted as errors, bad input leaves existing results untouched."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import QUIET, call_main, compose_config, one_error_line, run_app
from vrs.errors import ConfigError, VRSError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

BASE = ["data=digits", "attack.batch_size=6", "predict.n=200", "logger=none", "print_config=false", "defense.m=4"]
PGD = ["attack=pgd_l2", "attack.steps=5"]  # the default attack here (unless a test names another)


def merged(*overrides: str) -> list[str]:
    """Overrides with later ones replacing earlier ones of the same key (Hydra keeps the first)."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0]] = o
    return list(out.values())


def attack_cfg(ckpt, out, *overrides, hydra_dir):
    attack = [] if any(o.startswith("attack=") for o in overrides) else PGD
    return compose_config(*merged(f"ckpt_path={ckpt}", *BASE, *attack, f"attack.out_dir={out}", *overrides),
                          config_name="attack", output_dir=hydra_dir)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def without_time(rows: list[dict]) -> list[tuple]:
    return [tuple(v for k, v in r.items() if k != "time") for r in rows]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(digits_ckpt, tmp_path_factory):
    """12 digits test images attacked at eps 0.5 (in-process): (out dir, summary)."""
    from vrs.apps.attack import run

    root = tmp_path_factory.mktemp("attack_app")
    out = root / "out"
    summary = run(attack_cfg(digits_ckpt, out, "attack.eps=[0.5]", "attack.max=12", hydra_dir=root / "h"))
    return out, summary


def test_outputs(first_run):
    out, summary = first_run
    assert {p.name for p in out.iterdir()} >= {"attack.csv", "summary.json", "settings.json", "robust_accuracy.png"}
    rows = read_rows(out / "attack.csv")
    assert list(rows[0]) == ["idx", "eps", "label", "clean_predict", "adv_predict", "correct", "soft_predict",
                             "soft_correct", "clean_soft_predict", "l2", "linf", "sigma_clean", "sigma_adv", "time"]
    assert [int(r["idx"]) for r in rows] == list(range(12)) and {r["eps"] for r in rows} == {"0.5"}
    assert all(float(r["l2"]) <= 0.5 * (1 + 1e-5) and float(r["sigma_clean"]) == 0.25 for r in rows)
    on_disk = json.loads((out / "summary.json").read_text())
    per = on_disk["per_eps"][0]
    correct = [int(r["adv_predict"]) == int(r["label"]) for r in rows]
    assert per["n"] == 12 and math.isclose(per["robust_acc"], sum(correct) / 12)
    assert on_disk["robust_acc"] == {"0.5": per["robust_acc"]} and on_disk["complete"] is True
    assert on_disk["clean"]["acc"] > 0.6  # the digits classifier is decent under sigma = 0.25
    assert on_disk["subset"]["count"] == 12 and on_disk["defense"]["sigma"] == 0.25
    assert on_disk["settings"]["predict"]["n"] == 200 and summary["per_eps"] == on_disk["per_eps"]
    assert (out / "robust_accuracy.png").stat().st_size > 5000


def test_resume_adds_new_eps_and_repairs_a_crash(first_run, digits_ckpt, tmp_path):
    from vrs.apps.attack import run

    src, _ = first_run
    out = tmp_path / "out"
    out.mkdir()
    for name in ("attack.csv", "settings.json"):
        (out / name).write_bytes((src / name).read_bytes())
    before = (out / "attack.csv").read_bytes()
    s = run(attack_cfg(digits_ckpt, out, "attack.eps=[0.5,1.0]", "attack.max=12", hydra_dir=tmp_path / "h"))
    after = (out / "attack.csv").read_bytes()
    assert after.startswith(before)  # earlier rows untouched, new ones appended
    rows = read_rows(out / "attack.csv")
    assert sorted((int(r["idx"]), r["eps"]) for r in rows) == sorted(
        [(i, "0.5") for i in range(12)] + [(i, "1") for i in range(12)])
    assert s["rows_resumed"] == 12 and s["complete"] and [p["n"] for p in s["per_eps"]] == [12, 12]

    # a crash: the last 4 rows lost and half a row left behind -> the rerun redoes exactly those rows,
    # identically (each batch and eps has its own seed), and cuts the torn line
    text = after.decode().splitlines(keepends=True)
    torn = "".join(text[:-4]) + text[-4][: len(text[-4]) // 2]
    (out / "attack.csv").write_text(torn)
    s2 = run(attack_cfg(digits_ckpt, out, "attack.eps=[0.5,1.0]", "attack.max=12", hydra_dir=tmp_path / "h2"))
    again = read_rows(out / "attack.csv")
    assert without_time(again) == without_time(rows)
    assert s2["rows_resumed"] == 20 and s2["per_eps"][1]["robust_acc"] == s["per_eps"][1]["robust_acc"]


def test_abstentions_count_as_errors_end_to_end(digits_ckpt, tmp_path):
    """predict.n = 5 can never reach alpha = 0.001: PREDICT abstains on every image, so clean and robust
    accuracy are 0 although the soft classifier is right on most images."""
    from vrs.apps.attack import run
    from vrs.smoothing.core import SampleSizeWarning

    with pytest.warns(SampleSizeWarning):
        s = run(attack_cfg(digits_ckpt, tmp_path / "out", "attack=none", "attack.max=6", "predict.n=5",
                           hydra_dir=tmp_path / "h"))
    assert s["clean"]["acc"] == 0.0 and s["clean"]["abstain_rate"] == 1.0
    assert s["per_eps"][0]["robust_acc"] == 0.0 and s["per_eps"][0]["abstain_rate"] == 1.0
    assert s["clean"]["soft_acc"] >= 0.5
    rows = read_rows(tmp_path / "out" / "attack.csv")
    assert all(r["adv_predict"] == "-1" and r["correct"] == "0" for r in rows)


def test_metrics_and_plot_reach_csv_and_wandb_loggers(digits_ckpt, tmp_path, monkeypatch):
    from vrs.apps.attack import run
    from vrs.utils.loggers import finish_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    try:
        s = run(attack_cfg(digits_ckpt, out, "attack.eps=[0.5,1.0]", "attack.max=4", "logger=many",
                           hydra_dir=tmp_path / "h"))
    finally:
        finish_wandb()
    with open(tmp_path / "h" / "csv" / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert math.isclose(float(row["robust/acc@pgd_l2_1"]), s["per_eps"][1]["robust_acc"])
    assert float(row["robust/clean_acc"]) == s["clean"]["acc"] and "robust/abstain@pgd_l2_0.5" in row
    from test_attacks_callbacks import wandb_bytes

    keys = (b"robust/acc@pgd_l2_0.5", b"robust/accuracy_vs_eps")
    data = wandb_bytes(tmp_path / "h" / "wandb", *keys)
    assert all(k in data for k in keys)


@pytest.mark.parametrize("override,error,key", [
    ("attack.eps=-0.5", ConfigError, "attack.eps"),
    ("attack.name=bogus", ConfigError, "attack.name"),
    ("attack.steps=3", VRSError, "other settings"),          # a different run in an existing out_dir
    ("defense.m=0", ConfigError, "defense.m"),
    ("defense.noise=stale", ConfigError, "defense.noise"),
    ("predict.alpha=2", ConfigError, "predict.alpha"),
    ("attack.indices=[0,100000]", ConfigError, "attack.indices"),
    ("data=fashion_mnist", VRSError, "pass data=digits"),
])
def test_bad_input_leaves_existing_results_untouched(first_run, digits_ckpt, tmp_path, override, error, key):
    from vrs.apps.attack import run

    out, _ = first_run
    before = snapshot(out)
    cfg = attack_cfg(digits_ckpt, out, "attack.eps=[0.5]", "attack.max=12", override, hydra_dir=tmp_path / "h")
    with pytest.raises(error, match=key.replace(".", r"\.").replace("[", r"\[")):
        run(cfg)
    assert snapshot(out) == before


def test_bad_input_from_the_command_line(first_run, digits_ckpt, tmp_path, capsys, monkeypatch):
    """One `error:` line and exit code 2, through vrs-attack's main in this process (a bad value, found once
    torch is loaded) and through the real console app (an attack that has no config file, where the line lists
    the attacks there are); the existing results are untouched."""
    out, _ = first_run
    before = snapshot(out)
    args = [f"ckpt_path={digits_ckpt}", *BASE, *PGD, f"attack.out_dir={out}", "attack.max=12"]
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    assert "attack.eps" in one_error_line(*call_main("attack", merged(*args, "attack.eps=-1"), capsys))
    proc = run_app("attack", *merged(*[a for a in args if a not in PGD], "attack=unknown_attack"), root=tmp_path,
                   OMP_NUM_THREADS="1")
    assert proc.returncode == 2 and "error: attack='unknown_attack' is not allowed: one of" in proc.stderr, \
        proc.stderr[-2000:]
    assert "pgd_l2" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before


# ---- a VRS checkpoint ------------------------------------------------------------------------------------
VRS_APP = ["experiment=vrs_smoke", "data=digits", "model.width=16", "model.hidden=64", "logger=csv",
           "base_stage.trainer.max_epochs=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
           "module.diagnostics.enabled=false", "test=false", "module.median.n_h=50", "module.median.n_h0=8"]


@pytest.fixture(scope="module")
def vrs_ckpt(tmp_path_factory) -> Path:
    """A small VRS checkpoint (both stages of `vrs-train experiment=vrs_smoke` on digits, a few seconds)."""
    from vrs.apps.train import run

    root = tmp_path_factory.mktemp("vrs_run")
    run(compose_config(*VRS_APP, *QUIET, output_dir=root))
    return root / "checkpoints" / "last.ckpt"


def test_vrs_checkpoint_sigma_down_and_fixed_sigma_baseline(vrs_ckpt, tmp_path):
    from vrs.apps.attack import run

    s = run(attack_cfg(vrs_ckpt, tmp_path / "vrs", "attack=sigma_down", "attack.eps=[0.5]", "attack.max=6",
                       "attack.eot=2", hydra_dir=tmp_path / "h"))
    assert s["defense"]["defense"] == "vrs" and s["defense"]["lam"] == 0.5
    rows = read_rows(tmp_path / "vrs" / "attack.csv")
    grid = {0.12, 0.25, 0.5, 1.0}
    assert len(rows) == 6 and all(float(r["sigma_clean"]) in grid and float(r["sigma_adv"]) in grid for r in rows)
    assert all(float(r["l2"]) <= 0.5 * (1 + 1e-5) for r in rows)
    # the same base classifier at a fixed sigma: the baseline of the headline comparison
    b = run(attack_cfg(vrs_ckpt, tmp_path / "fixed", "attack.eps=[0.5]", "attack.max=6", "defense.sigma=0.25",
                       hydra_dir=tmp_path / "h2"))
    assert b["defense"] == {"kind": "vrs", "defense": "fixed_sigma", "sigma": 0.25, "noise": "fresh", "m": 4}
    assert all(r["sigma_adv"] == "0.25" for r in read_rows(tmp_path / "fixed" / "attack.csv"))


def test_a_vrs_attack_reads_the_checkpoint_once(vrs_ckpt, tmp_path, monkeypatch):
    """The config check before the run (vrs.config_schema, from Hydra's callback) and the app use one read of
    the file (vrs.checkpoint remembers it): one torch.load in the process."""
    from vrs.apps.attack import run
    from vrs.config_schema import validate_config

    ckpt = tmp_path / "vrs.ckpt"
    ckpt.write_bytes(vrs_ckpt.read_bytes())  # a file this process has not read yet
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(1) or real_load(*a, **kw))
    cfg = attack_cfg(ckpt, tmp_path / "out", "attack.eps=[0.5]", "attack.max=2", hydra_dir=tmp_path / "h")
    validate_config(cfg, "attack")
    assert run(cfg)["defense"]["defense"] == "vrs" and len(calls) == 1


def test_multi_sigma_classifier_needs_a_sigma(vrs_ckpt, tmp_path):
    """The VRS run's stage-1 checkpoint is a multi-sigma classifier: no training sigma to default to."""
    from vrs.apps.attack import run

    base = vrs_ckpt.parent.parent / "base" / "checkpoints" / "last.ckpt"
    with pytest.raises(VRSError, match="defense.sigma"):
        run(attack_cfg(base, tmp_path / "o", "attack.max=2", hydra_dir=tmp_path / "h"))
    assert not (tmp_path / "o").exists()
    s = run(attack_cfg(base, tmp_path / "o", "attack.max=2", "defense.sigma=0.5", hydra_dir=tmp_path / "h"))
    assert s["defense"]["sigma"] == 0.5 and torch.isfinite(torch.tensor(s["per_eps"][0]["robust_acc"]))


def test_robustness_callbacks_on_a_vrs_selector_module(vrs_ckpt):
    """The callbacks on a SelectorModule: the median-smoothed selector at each lambda, certificate C1."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from conftest import DIGITS_OVERRIDES
    from vrs.callbacks.robustness import CertifiedRobustness, EmpiricalRobustness
    from vrs.modules.selector import SelectorModule

    module = SelectorModule.load_from_checkpoint(vrs_ckpt, map_location="cpu", base_ckpt="unused.ckpt")
    dm = instantiate(compose_config(*DIGITS_OVERRIDES).data)
    dm.setup()
    trainer = SimpleNamespace(global_rank=0, current_epoch=0, sanity_checking=False, datamodule=dm)
    emp = EmpiricalRobustness(attacks=[{"name": "sigma_down", "norm": "l2", "eps": [0.5], "steps": 3, "eot": 1}],
                              num_images=6, lams=[0.25, 0.75], m=2, n_h=4, deployed_n_h=16, predict_n=50)
    cert = CertifiedRobustness(num_images=6, n0=10, n=100, radii=[0.0, 0.1], lams=[0.25, 0.75], n_h0=8, n_h=50)
    with pytest.warns(UserWarning, match="self.log"):
        emp.on_test_epoch_end(trainer, module)
        cert.on_test_epoch_end(trainer, module)
    for lam in ("0.25", "0.75"):
        assert 0 <= emp.last_metrics[f"test/robust/acc@sigma_down_0.5_lam{lam}"] <= 1
        acc0, acc1 = cert.last_metrics[f"test/cert/acc@0_lam{lam}"], cert.last_metrics[f"test/cert/acc@0.1_lam{lam}"]
        assert 0 <= acc1 <= acc0 <= 1 and cert.last_metrics[f"test/cert/acr_lam{lam}"] >= 0
