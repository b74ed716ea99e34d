"""vrs-dashboard (issue 24): every panel reads a metric key that the apps really log (the columns of the
metrics.csv of a run of each app, and the images / tables they hand to the loggers), the sections and filters
are those of docs/wandb.md, the filters reach wandb-workspaces intact, a dry run writes the specification
offline, and a save without an API key (or network, or the library) is one error line that writes nothing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import QUIET, REPO_ROOT, call_main, compose_config, one_error_line
from vrs.utils import metric_names as names
from vrs.utils.dashboard_spec import (FIXED_SIGMA, SECTIONS, SPEC_FORMAT, VRS, build_dashboard, parse_options)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

# What the runs below log: certify.radius_grid holds these radii; vrs-attack runs pgd_l2 at these eps.
RADII, ATTACKS, EPS = [0.5, 1.0], ["pgd_l2"], [0.25, 0.5]
CERTIFY = ["data=digits", "certify.n0=10", "certify.n=50", "certify.max=3", "certify.progress=false",
           "print_config=false", "logger=csv"]
ATTACK = ["data=digits", "attack=pgd_l2", "attack.steps=1", "attack.eps=[0.25,0.5]", "attack.max=2",
          "attack.batch_size=2", "defense.m=1", "predict.n=20", "print_config=false", "logger=csv"]


def options(**kw):
    node = {"project": "vrs", "entity": None, "name": "VRS", "groups": [], "tags": [], "sections": list(SECTIONS),
            "radii": RADII, "attacks": ATTACKS, "eps": EPS}
    return parse_options({**node, **kw})


def csv_columns(path: Path) -> set[str]:
    with open(path, newline="") as fh:
        return set(next(csv.reader(fh)))


def selector_figures_key(out: Path) -> set[str]:
    """The key the VRS selector's diagnostics log their figures under (to a W&B logger only; the two-stage run
    above leaves them out for time), from vrs.selection.diagnostics on a few made-up chosen sigmas."""
    import numpy as np
    from pytorch_lightning.loggers import WandbLogger

    from vrs.selection.diagnostics import write_diagnostics

    class Recording(WandbLogger):
        def __init__(self):  # no W&B run: only record the keys
            self.keys = set()

        def log_image(self, key, images, **kw):
            self.keys.add(key)

        def log_metrics(self, metrics, step=None):
            pass

    rng = np.random.default_rng(0)
    lg = Recording()
    write_diagnostics({"lams": [0.0, 1.0], "sigma": rng.uniform(0.12, 1.0, (2, 20)), "confidence": rng.uniform(0, 1, 20)},
                      out, [lg])
    return lg.keys


@pytest.fixture(scope="module")
def logged(digits_run, tmp_path_factory) -> set[str]:
    """Every key the apps logged in real runs: the metrics.csv columns of the shared digits training run
    (fixed sigma), of a two-stage VRS training run (the multi-sigma base classifier and the selector), and of
    vrs-certify and vrs-attack on both checkpoints (fixed sigma; VRS at lambda 0.5); plus the image and table
    keys that vrs-certify and vrs-attack hand to their loggers (the CSV logger keeps no images)."""
    import vrs.apps.attack as attack_app
    import vrs.apps.certify as certify_app
    from test_vrs_train import VRS_APP
    from vrs.apps.train import run as train

    root = tmp_path_factory.mktemp("dashboard_runs")
    media: set[str] = set()

    def recording(real):
        def log_results(cfg, facts, metrics, images=None, table=None):
            media.update(images or {})
            media.update([table[0]] if table else [])
            return real(cfg, facts, metrics, images, table)
        return log_results

    vrs_dir = root / "vrs"  # every training step logged (its 4 steps are fewer than the default 50 between rows)
    train(compose_config(*VRS_APP, *QUIET, "++trainer.log_every_n_steps=1", output_dir=vrs_dir))
    vrs_ckpt = vrs_dir / "checkpoints" / "last.ckpt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(certify_app, "log_results", recording(certify_app.log_results))
        mp.setattr(attack_app, "log_results", recording(attack_app.log_results))
        for name, ckpt, extra in (("fixed", digits_run.ckpt, ["certify.sigma=0.25"]),
                                  ("vrs", vrs_ckpt, ["certify=vrs_c1", "certify.lam=0.5", "certify.n_h=20"])):
            out = root / f"certify_{name}"
            certify_app.certify(compose_config(f"ckpt_path={ckpt}", *CERTIFY, *extra, f"certify.out_dir={out}",
                                               config_name="certify", output_dir=out))
        for name, ckpt, extra in (("fixed", digits_run.ckpt, ["defense.sigma=0.25"]),
                                  ("vrs", vrs_ckpt, ["defense.lam=0.5", "defense.n_h=2", "defense.deployed_n_h=8"])):
            out = root / f"attack_{name}"
            attack_app.run(compose_config(f"ckpt_path={ckpt}", *ATTACK, *extra, f"attack.out_dir={out}",
                                          config_name="attack", output_dir=out))
    media.update(selector_figures_key(root / "diagnostics"))
    files = [digits_run.run_dir / "csv" / "metrics.csv", *sorted(root.rglob("metrics.csv"))]
    assert len(files) == 7, files  # training: fixed sigma, VRS base + selector; 2 certify, 2 attack
    return set().union(*(csv_columns(f) for f in files)) | media


@pytest.mark.slow  # trains a VRS selector and runs vrs-certify and vrs-attack (in-process, ~10 s)
def test_every_panel_reads_a_key_the_apps_log(logged):
    dash = build_dashboard(options())
    keys = dash.metric_keys()
    assert not keys - logged, sorted(keys - logged)
    for regex in dash.regexes():  # each family matches logged keys (val/acc_lam0, val/acc_lam1, ...)
        assert len([k for k in logged if re.fullmatch(regex, k)]) >= 2, regex
    # the frontier's axes and the defences' axes, by name: both families of runs logged them
    assert {names.CERT_LAM, names.CERT_SIGMA, names.ROBUST_LAM, names.ROBUST_SIGMA, names.CERT_CLEAN_ACC,
            names.ROBUST_CLEAN_ACC, names.robust_acc("pgd_l2", 0.25), names.cert_acc(1)} <= keys


def test_the_default_radii_and_attacks_are_ones_the_apps_log():
    """conf/dashboard.yaml's radii are in vrs-certify's default radius grid, its attacks are attack configs
    (conf/attack/<name>.yaml, logged under that name), and with them the panels read the same kinds of keys."""
    cfg = compose_config(config_name="dashboard", output_dir="/nonexistent")
    opts = parse_options(OmegaConf.to_container(cfg.dashboard, resolve=True))
    grid = compose_config(config_name="certify", output_dir="/nonexistent").certify.radius_grid
    assert set(opts.radii) <= {float(r) for r in grid}
    for attack in opts.attacks:
        assert compose_config(f"attack={attack}", config_name="attack", output_dir="/nonexistent").attack.name == attack


def docs_layout() -> str:
    text = (REPO_ROOT / "docs" / "wandb.md").read_text()
    return text.split("## Dashboard layout", 1)[1].split("\n## ", 1)[0]


def test_sections_and_filters_match_docs_wandb_md():
    """The numbered sections of docs/wandb.md's "Dashboard layout", their names, order and job-type filters,
    are the dashboard's; each metric key the docs name for a panel is one of its panels' (or families')."""
    layout = docs_layout()
    items = re.findall(r"^\d+\. \*\*(.+?)\*\*(?: \(filter: job type = ([a-z, ]+?)[;)])?", layout, re.M)
    dash = build_dashboard(options())
    assert [name for name, _ in items] == [s.name for s in dash.sections]
    for (name, job_types), section in zip(items, dash.sections):
        want = tuple(t.strip() for t in job_types.replace(" or ", ",").split(",") if t.strip())
        assert want == section.job_types, name
        for r in section.runsets:
            assert [f.values for f in r.filters if f.field == "JobType"] == ([want] if want else []), name
    keys, regexes = dash.metric_keys(), dash.regexes()
    named = {k for k in re.findall(r"`([a-z]+/[^`\s]+)`", layout) if "<" not in k and "..." not in k}
    assert {"val/acc", "cert/acr", "cert/acc@0.5", "robust/clean_acc", "cert/table", "val/acc_lam.*"} <= named
    for key in named:  # a family (val/acc_lam.*): one of its keys matches a panel's regex
        probe = re.sub(r"\.?\*$", "0.5", key)
        assert key in keys or any(re.fullmatch(r, probe) for r in regexes), key
    # the frontier compares fixed sigma with every VRS lambda and every other method: one run set each
    frontier = next(s for s in dash.sections if s.key == "frontier")
    assert [r.name for r in frontier.runsets] == ["fixed sigma", "VRS", "other methods"]
    assert [[(f.op, f.values) for f in r.filters if f.field == "Tags"] for r in frontier.runsets] == \
        [[("in", (FIXED_SIGMA,))], [("in", (VRS,))], [("not in", (FIXED_SIGMA, VRS))]]


def test_group_tag_and_section_options():
    dash = build_dashboard(options(groups=["cohen_cifar10", "vrs_cifar10"], tags=["data=cifar10"],
                                   sections=["frontier", "certification"]))
    assert [s.key for s in dash.sections] == ["certification", "frontier"]  # the docs' order
    for s in dash.sections:
        for r in s.runsets:
            assert [(f.field, f.values) for f in r.filters][:2] == [("Group", ("cohen_cifar10", "vrs_cifar10")),
                                                                    ("Tags", ("data=cifar10",))]


def test_filters_reach_wandb_workspaces_intact():
    """wandb-workspaces 0.4.13 rewrites `=` inside quoted filter values (`method=vrs` -> `method==vrs`); the
    escaped literals of vrs.apps.dashboard survive its parser, and the objects are built offline."""
    pytest.importorskip("wandb_workspaces")
    from wandb_workspaces import expr

    from vrs.apps.dashboard import filter_expression, report, workspace

    dash = build_dashboard(options(groups=["a<b", "vrs_fmnist"], tags=["data=cifar10"]))
    for s in dash.sections:
        for r in s.runsets:
            tree = expr.expr_to_filters(filter_expression(r.filters)).model_dump()
            leaves = tree["filters"] if tree["op"] == "AND" else [tree]
            assert [tuple(leaf["value"]) for leaf in leaves] == [f.values for f in r.filters]
    model = json.loads(workspace(dash, "team")._to_model().model_dump_json(by_alias=True))
    text = json.dumps(model)
    assert '"data=cifar10"' in text and '"a<b"' in text and "==" not in text
    assert [s["name"] for s in model["spec"]["section"]["panelBankConfig"]["sections"]][:4] == \
        ["Training", "Certification", "Robustness", "Frontier"]
    assert len(report(dash, "team").blocks) == 1 + 2 * len(dash.sections)


def test_dry_run_writes_the_spec_and_replaces_only_its_own(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out = tmp_path / "spec.json"
    args = ["dashboard.dry_run=true", f"dashboard.out={out}", "dashboard.groups=[vrs_fmnist]"]
    assert call_main("dashboard", args, capsys)[0] == 0
    spec = json.loads(out.read_text())
    assert spec["format"] == SPEC_FORMAT
    assert spec["filters"] == [{"field": "Group", "op": "in", "values": ["vrs_fmnist"]}]
    assert [s["name"] for s in spec["sections"]] == ["Training", "Certification", "Robustness", "Frontier",
                                                     "Runs table"]
    assert call_main("dashboard", [*args[:2], "dashboard.sections=[runs]"], capsys)[0] == 0  # its own: replaced
    assert [s["key"] for s in json.loads(out.read_text())["sections"]] == ["runs"]
    other = tmp_path / "other.json"
    other.write_text('{"something": "else"}\n')
    code, err = call_main("dashboard", ["dashboard.dry_run=true", f"dashboard.out={other}"], capsys)
    assert "an earlier vrs-dashboard spec to replace" in one_error_line(code, err)
    assert other.read_text() == '{"something": "else"}\n'


def test_a_save_without_an_api_key_is_one_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    code, err = call_main("dashboard", [], capsys)
    line = one_error_line(code, err)
    assert "needs" in line and "a W&B API key (WANDB_API_KEY, or `wandb login`)" in line
    assert "dashboard.dry_run=true writes the specification" in line
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def test_a_save_builds_and_saves_the_workspace_and_the_report(tmp_path, capsys, monkeypatch):
    """The upload path with the network calls replaced: both objects are saved and their URLs recorded."""
    pytest.importorskip("wandb_workspaces")
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    import vrs.utils.dashboard_spec as spec_module

    saved = []
    monkeypatch.setattr(spec_module, "missing_for_upload", lambda: [])
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: "https://wandb.ai/team/vrs?nw=view"))
    monkeypatch.setattr(wr.Report, "save", lambda self, **kw: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "https://wandb.ai/team/vrs/reports/r"))
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out = tmp_path / "spec.json"
    assert call_main("dashboard", ["dashboard.entity=team", f"dashboard.out={out}"], capsys)[0] == 0
    assert [type(o).__name__ for o in saved] == ["Workspace", "Report"]
    assert saved[0].entity == "team" and saved[0].project == "vrs" and len(saved[0].sections) == 4
    assert json.loads(out.read_text())["saved"] == {"workspace": "https://wandb.ai/team/vrs?nw=view",
                                                    "report": "https://wandb.ai/team/vrs/reports/r"}


def test_a_save_that_w_and_b_refuses_is_one_error_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb_workspaces")
    import wandb_workspaces.workspaces as ws

    import vrs.utils.dashboard_spec as spec_module

    def refuse(self):
        raise RuntimeError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(spec_module, "missing_for_upload", lambda: [])
    monkeypatch.setattr(ws.Workspace, "save", refuse)
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out = tmp_path / "spec.json"
    code, err = call_main("dashboard", ["dashboard.entity=team", f"dashboard.out={out}"], capsys)
    line = one_error_line(code, err)
    assert "saving the dashboard to W&B failed: RuntimeError: 401 Client Error: Unauthorized;" in line
    assert not out.exists()
