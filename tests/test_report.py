"""vrs-report on outputs written by the real apps (in-process): one row per config with the numbers of each
run's own summary.json / metrics.csv, certification and attack of the same defended model in one row, VRS
sigma statistics from the TSV, the plots; equal names told apart; bad input gives one clear error and
leaves an earlier report as it was (also through the real `vrs-report` process: exit code 2)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf

from conftest import compose_config, run_app
from vrs.apps.report import build_report, name_rows
from vrs.apps.report_runs import Row
from vrs.errors import VRSError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

CERTIFY = ["data=digits", "certify.n0=10", "certify.n=100", "certify.max=8", "certify.progress=false",
           "print_config=false", "logger=none"]
ATTACK = ["data=digits", "attack=pgd_l2", "attack.steps=3", "attack.eps=[0.25,0.5]", "attack.max=8",
          "attack.batch_size=8", "defense.m=2", "predict.n=50", "print_config=false", "logger=none"]
PNG = b"\x89PNG\r\n\x1a\n"


def certify_into(out: Path, ckpt: Path, *overrides: str) -> dict:
    from vrs.apps.certify import certify

    return certify(compose_config(f"ckpt_path={ckpt}", *CERTIFY, f"certify.out_dir={out}", *overrides,
                                  config_name="certify", output_dir=out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_run):
    """A tree of real results: a training run (digits_run with the .hydra files Hydra writes), Cohen's
    certification at sigma 0.25 and 0.5 and an L2 PGD attack at sigma 0.25 of its checkpoint, and VRS C1
    certification of a briefly trained selector at lambda 0.5. Returns (root, the runs' summaries)."""
    from test_vrs_train import datamodule, fit_base, selector_module, trainer
    from vrs.apps.attack import run as attack

    root = tmp_path_factory.mktemp("report_runs")
    train_dir = root / "train" / "runs" / "t0"
    shutil.copytree(digits_run.run_dir / "csv", train_dir / "csv")
    (train_dir / ".hydra").mkdir()
    OmegaConf.save(digits_run.cfg, train_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(digits_run.overrides), train_dir / ".hydra" / "overrides.yaml")

    ckpt = digits_run.ckpt
    out = {"cohen_0.25": certify_into(root / "certify" / "0", ckpt, "certify.sigma=0.25"),
           "cohen_0.5": certify_into(root / "certify" / "1", ckpt, "certify.sigma=0.5")}
    att = root / "attack" / "0"
    out["attack_0.25"] = attack(compose_config(f"ckpt_path={ckpt}", *ATTACK, "defense.sigma=0.25",
                                               f"attack.out_dir={att}", config_name="attack", output_dir=att))

    vrs_dir = root / "vrs_model"
    vrs_dir.mkdir()
    base = fit_base(vrs_dir, epochs=4)
    pl.seed_everything(0, verbose=False)
    t = trainer(vrs_dir, 1, limit_train_batches=5, limit_val_batches=1)
    t.fit(selector_module(base, diagnostics={"enabled": False}), datamodule=datamodule())
    t.save_checkpoint(vrs_dir / "vrs.ckpt")
    out["vrs_0.5"] = certify_into(root / "certify_vrs", vrs_dir / "vrs.ckpt", "certify=vrs_c1", "certify.lam=0.5")
    return root, out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def report_cfg(inputs, out: Path, *overrides: str):
    inputs = inputs if isinstance(inputs, str) else "[" + ",".join(str(p) for p in inputs) + "]"
    return compose_config(f"report.inputs={inputs}", f"report.out_dir={out}", *overrides, config_name="report",
                          output_dir=out)


def test_one_row_per_config_with_each_runs_numbers(runs, digits_run, tmp_path):
    root, s = runs
    # the root and a sub-directory of it: each run is counted once
    rep = build_report(report_cfg([root, root / "certify"], tmp_path / "rep"))
    rows = {r["config"]: r for r in read_csv(tmp_path / "rep" / "report.csv")}
    assert sorted(rows) == ["VRS C1 lambda=0.5", "fixed sigma=0.25", "fixed sigma=0.5", "train fixed-sigma sigma=0.25"]
    assert len(rep.records) == 4

    def num(row, col):
        return float(rows[row][col])

    # Cohen: every number equals the certify run's own summary.json (computed there from the same rows)
    for sigma in ("0.25", "0.5"):
        row, summ = f"fixed sigma={sigma}", s[f"cohen_{sigma}"]
        assert rows[row]["method"] == "fixed-sigma" and num(row, "sigma") == float(sigma)
        assert num(row, "images") == summ["num_images"] == 8 and num(row, "n") == 100 and num(row, "n0") == 10
        assert num(row, "clean_acc") == pytest.approx(summ["clean_accuracy"])
        assert num(row, "ACR") == pytest.approx(summ["acr"], abs=1e-6)
        for r in ("0.25", "0.5", "0.75", "1"):
            assert num(row, f"cert_acc@r={r}") == pytest.approx(summ["certified_accuracy"][r])
        assert num(row, "sigma_mean") == num(row, "sigma_median") == float(sigma)
    # the attack on sigma = 0.25 of the same checkpoint joins that row; sigma = 0.5 was not attacked
    att = s["attack_0.25"]
    assert rows["fixed sigma=0.25"]["kind"] == "certify+attack" and rows["fixed sigma=0.5"]["kind"] == "certify"
    for p in att["per_eps"]:
        col = f"robust_acc[pgd_l2 l2]@eps={p['eps']:g}"
        assert num("fixed sigma=0.25", col) == pytest.approx(p["robust_acc"])
        assert rows["fixed sigma=0.5"][col] == ""
    assert num("fixed sigma=0.25", "attack_clean_acc") == pytest.approx(att["clean"]["acc"])
    assert num("fixed sigma=0.25", "attack_images") == 8
    # VRS: lambda, alpha + alpha_h, and the sigma statistics of the TSV's per-image sigma
    vrs, summ = rows["VRS C1 lambda=0.5"], s["vrs_0.5"]
    assert vrs["method"] == "vrs-c1" and float(vrs["lambda"]) == 0.5 and vrs["sigma"] == ""
    assert vrs["alpha"] == f"{summ['alpha']:g}+{summ['alpha_budget']['alpha_h']:g}"
    assert float(vrs["sigma_mean"]) == pytest.approx(summ["mean_sigma"])
    tsv = [line.split("\t") for line in (root / "certify_vrs" / "certify.tsv").read_text().splitlines()[1:]]
    assert float(vrs["sigma_median"]) == pytest.approx(np.median([float(f[6]) for f in tsv]))
    assert float(vrs["ACR"]) == pytest.approx(summ["acr"], abs=1e-6)
    # training: the metrics the run logged, its swept-able settings in the overrides column
    train = rows["train fixed-sigma sigma=0.25"]
    assert train["kind"] == "train" and float(train["sigma"]) == 0.25 and int(train["epochs"]) == 6
    assert float(train["clean_acc"]) == pytest.approx(digits_run.metrics["test/acc_clean"], abs=1e-6)
    assert float(train["noisy_acc"]) == pytest.approx(digits_run.metrics["test/acc"], abs=1e-6)
    assert "noise.sigma=0.25" in train["overrides"] and "print_config" not in train["overrides"]


def test_markdown_plots_and_atomic_files(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "rep"
    rep = build_report(report_cfg(str(root), out, "report.title=Digits", "report.radii=[0.1]"))
    md = (out / "report.md").read_text()
    assert md.startswith("# Digits\n")
    assert "certification: 8 digits images, n0 = 10, n = 100, alpha = 0.001" in md  # the settings header
    header = next(line for line in md.splitlines() if line.startswith("| # | config |"))
    assert "cert_acc@r=0.1" in header and "cert_acc@r=0.25" not in header and "run_dirs" not in header
    assert sum(line.startswith("| ") and line[2].isdigit() for line in md.splitlines()) == len(rep.records) == 4
    for name in ("certified_accuracy.png", "acr.png", "robust_accuracy.png", "sigma_histogram.png",
                 "train_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in md
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_bad_input_is_one_error_and_keeps_the_old_report(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "rep"
    build_report(report_cfg(str(root / "certify"), out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(VRSError, match=r"report.inputs: '.*missing' does not exist"):
        build_report(report_cfg(str(tmp_path / "missing"), out))
    with pytest.raises(VRSError, match=r"holds no runs"):
        build_report(report_cfg(str(tmp_path / "empty"), out))
    with pytest.raises(VRSError, match=r"report.radii=\[-1\] is not allowed"):
        build_report(report_cfg(str(root), out, "report.radii=[-1]"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the real process: exit code 2, one line naming the key, no report folder made (into `out`, a report of
    # other inputs is refused before: test_a_report_folder_takes_only_a_report_of_the_same_inputs)
    proc = run_app("report", f"report.inputs={tmp_path / 'empty'}", f"report.out_dir={tmp_path / 'new'}", root=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: report.inputs=['{tmp_path / 'empty'}'] holds no runs: no "
                                               "certify.tsv + certify.meta.json, attack.csv + summary.json or "
                                               "training run (.hydra/config.yaml + csv/metrics.csv) under them"]
    assert not (tmp_path / "new").exists()


def test_a_report_folder_takes_only_a_report_of_the_same_inputs(runs, tmp_path):
    """Issue 23: report.meta.json records the report's inputs (resolved). A report of other inputs into the folder
    is refused by the config check (before Hydra's run directory, so nothing changes); one of the same inputs,
    however written, is a refresh (title and radii may change). A folder of an older version, without the
    sidecar, is taken and gets one."""
    from vrs.config_schema import validate_config

    root, _ = runs
    out = tmp_path / "rep"
    build_report(report_cfg(str(root / "certify"), out))
    meta = json.loads((out / "report.meta.json").read_text())
    assert meta == {"inputs": [str((root / "certify").resolve())], "radii": [0.25, 0.5, 0.75, 1.0], "title": None}
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(VRSError) as err:
        validate_config(report_cfg([root / "certify", root / "attack"], out), "report")
    assert str(err.value) == (f"report.out_dir={out} holds the report of other inputs (report.inputs=[{root.resolve()}"
                              f"/certify]); a report folder is rewritten only by a report of the same inputs (a "
                              f"refresh): use another report.out_dir for report.inputs=[{root.resolve()}/attack,"
                              f"{root.resolve()}/certify]")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    same = report_cfg([root / "certify" / ".." / "certify", root / "certify"], out, "report.title=Again")
    validate_config(same, "report")
    build_report(same)
    assert json.loads((out / "report.meta.json").read_text())["title"] == "Again"
    (out / "report.meta.json").unlink()  # as an older version left it
    validate_config(report_cfg(str(root), out), "report")


def test_equal_names_get_what_tells_them_apart():
    def row(ckpt, *overrides):
        return Row("certify", "fixed", "fixed sigma=0.25", ckpt=ckpt, overrides=list(overrides))

    by_ckpt = [row("a", "certify.sigma=0.25"), row("b", "certify.sigma=0.25")]
    by_seed = [row("a", "seed=0", "certify.sigma=0.25"), row("a", "seed=1", "certify.sigma=0.25")]
    same = [row("a", "ckpt_path=x"), row("a", "ckpt_path=x")]
    name_rows(by_ckpt, hidden=set())
    name_rows(by_seed, hidden=set())
    name_rows(same, hidden={"ckpt_path"})
    assert [r.label for r in by_ckpt] == ["fixed sigma=0.25 [ckpt=a]", "fixed sigma=0.25 [ckpt=b]"]
    assert [r.label for r in by_seed] == ["fixed sigma=0.25 [seed=0]", "fixed sigma=0.25 [seed=1]"]
    assert [r.label for r in same] == ["fixed sigma=0.25 [#1]", "fixed sigma=0.25 [#2]"]
    assert same[0].overrides == []  # hidden overrides leave the overrides column


def test_interrupted_attack_is_listed_as_skipped(runs, tmp_path):
    root, _ = runs
    tree = tmp_path / "tree"
    shutil.copytree(root / "attack", tree / "attack")
    shutil.copytree(root / "certify" / "0", tree / "certify")
    (tree / "attack" / "0" / "summary.json").unlink()  # as a run killed before its end leaves it
    rep = build_report(report_cfg(str(tree), tmp_path / "rep"))
    assert [r["config"] for r in rep.records] == ["fixed sigma=0.25"] and rep.records[0]["kind"] == "certify"
    assert len(rep.skipped) == 1 and "attack.csv without summary.json" in rep.skipped[0]
    assert "## Skipped" in rep.markdown


def test_every_make_demo_step_composes(tmp_path):
    """`make demo` (src/vrs/demo.py) takes minutes, so the suite does not run it; this checks that each of
    its commands still composes with the app's config (the first value of each sweep) and sets what the
    demo relies on."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vrs.demo import steps

    parser = OverridesParser.create()
    apps, attacked = [], []
    for _, app, args in steps(tmp_path / "demo", []):
        parsed = parser.parse_overrides([a for a in args if a != "-m"])
        first = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
                 for o in parsed]
        cfg = compose_config(*first, config_name=app)
        apps.append(app)
        if app == "train":
            assert cfg.task_name == "demo" and cfg.data.name == "fashion_mnist"
            assert cfg.module._target_.endswith("SelectorModule")
        elif app == "certify":
            assert cfg.certify.n == 500 and cfg.certify.max == 50
            assert cfg.ckpt_path.endswith("train/checkpoints/last.ckpt")
        elif app == "attack":
            assert cfg.attack.norm == "l2" and list(cfg.attack.eps) == [0.25, 0.5, 1.0]
            attacked.append(cfg.defense.sigma)
        else:
            assert cfg.report.inputs == str(tmp_path / "demo") and cfg.report.title.startswith("make demo")
    assert apps == ["train", "certify", "certify", "attack", "attack", "report"]
    assert attacked == [None, 0.25]  # VRS (over lambda), then fixed sigma (over sigma): the frontier's two curves


def test_a_selector_setting_does_not_split_fixed_sigma_from_vrs_columns():
    """A VRS attack with defense.deployed_n_h=100 and a fixed-sigma attack of the same budget share a column: the
    selector's settings are not part of a fixed sigma's attack; two VRS attacks that differ in them do not share."""
    from vrs.apps.report_runs import attack_setup
    from vrs.apps.report_table import differing

    def settings(deployed):
        return {"attack": {"name": "eot_pgd", "norm": "l2", "steps": 10}, "predict": {"n": 1000},
                "defense": {"m": 4, "noise": "gaussian", "tau": 1.0, "n_h": 8, "deployed_n_h": deployed}}

    fixed, vrs = attack_setup(settings(None), selector=False), attack_setup(settings(100), selector=True)
    assert "defense.deployed_n_h" not in fixed and vrs["defense.deployed_n_h"] == 100
    assert differing([fixed, vrs], absent_differs=False) == [{}, {}]
    other = attack_setup(settings(32), selector=True)
    assert differing([fixed, vrs, other], absent_differs=False) == [
        {}, {"defense.deployed_n_h": 100}, {"defense.deployed_n_h": 32}]
    assert differing([{"seed": 1}, {}]) == [{"seed": 1}, {}]  # labels (name_rows): an absent key still differs
