"""vrs-dashboard: the W&B workspace and report of docs/wandb.md, built in one command from the metric names the
apps log with (vrs.utils.metric_names, through vrs.utils.dashboard_spec), with wandb-workspaces.

    vrs-dashboard dashboard.entity=<team>                           # workspace + report in W&B project vrs
    vrs-dashboard dashboard.groups=[cohen_cifar10,vrs_cifar10]       # only these experiments (W&B groups)
    vrs-dashboard dashboard.sections=[certification,frontier] dashboard.radii=[0.25,0.5,1.0]
    vrs-dashboard dashboard.dry_run=true                            # no network: only write dashboard.json

Every run writes the specification (sections, panels, run filters) to dashboard.out, a JSON file for review;
a dry run stops there (no API key, network or wandb-workspaces needed; with wandb-workspaces installed the
specification is also turned into its objects, which checks it against the library offline). Otherwise the
workspace is saved as a new view (or replaces the view at dashboard.workspace_url) and, with dashboard.report,
a report with one panel grid per section, whose run sets select each section's runs by job type (the app) and
the frontier's by method. Without wandb-workspaces, an API key or a reachable W&B server the run stops with one
error line saying what is missing, before writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.apps.before_run import validate_app_config
from vrs.errors import VRSError, check, first_line, hydra_errors_exit, user_errors_exit
from vrs.utils.dashboard_spec import (GROUP, JOB_TYPE, SPEC_FORMAT, TAGS, Dashboard, Filter, Options, Panel,
                                     build_dashboard, check_upload_needs, has_workspaces, parse_options,
                                     specification)
from vrs.utils.io import atomic_write
from vrs.utils.output_folders import run_or_put_back

# The runs table's columns as wandb-workspaces names them (a metric: summary:<key>).
COLUMNS = {GROUP: "run:group", JOB_TYPE: "run:jobType", TAGS: "tags:__ALL__"}
FILTER_FIELDS = {GROUP: 'Metric("Group")', JOB_TYPE: 'Metric("JobType")', TAGS: 'Metric("Tags")'}


# ---- the specification as wandb-workspaces objects ----------------------------------------------------------
def literal(value: str) -> str:
    """`value` as a string literal of wandb-workspaces' filter expressions. Its parser (0.4.13) turns every
    `=` into `==` (and `<` / `>` into `<=` / `>=`) before parsing, inside quoted strings too, so the tag
    `method=vrs` would become `method==vrs`; a \\u escape is not touched by that and is decoded by Python's
    parser, which the library uses next (tests/test_dashboard.py checks the round trip)."""
    return "'" + "".join(c if c.isalnum() or c in "_-./@ :," else f"\\u{ord(c):04x}" for c in value) + "'"


def filter_expression(filters: tuple[Filter, ...]) -> str:
    """The run filters as one wandb-workspaces filter expression ('' selects every run)."""
    return " and ".join(f"{FILTER_FIELDS[f.field]} {f.op} [{', '.join(literal(v) for v in f.values)}]"
                        for f in filters)


def columns(dash: Dashboard) -> list[str]:
    return [COLUMNS.get(c, f"summary:{c}") for c in dash.table_columns]


def panel(p: Panel) -> Any:
    import wandb_workspaces.reports.v2 as wr  # deferred: optional (the dashboard extra)

    if p.kind == "line":
        return wr.LinePlot(title=p.title, x=p.x, y=list(p.metrics), metric_regex=p.regex)
    if p.kind == "scatter":
        return wr.ScatterPlot(title=p.title, x=p.x, y=p.metrics[0])
    if p.kind == "bar":
        return wr.BarPlot(title=p.title, metrics=list(p.metrics), groupby=p.groupby)
    if p.kind == "scalar":
        return wr.ScalarChart(title=p.title, metric=p.metrics[0])
    if p.kind == "media":
        return wr.MediaBrowser(title=p.title, media_keys=list(p.metrics))
    if p.kind == "table":
        return wr.WeavePanelSummaryTable(table_name=p.metrics[0])
    raise ValueError(f"unknown panel kind {p.kind!r}")


def workspace(dash: Dashboard, entity: str) -> Any:
    """The workspace: one section per dashboard section that has panels; runs grouped by W&B group, filtered
    by the group and tag filters (a workspace has one run selection, so its sections are not filtered by job
    type: a panel shows the runs that logged its metric), the runs table's columns pinned."""
    import wandb_workspaces.workspaces as ws  # deferred: optional (the dashboard extra)
    from wandb_workspaces import expr  # deferred: optional (the dashboard extra)

    return ws.Workspace(
        entity=entity, project=dash.project, name=dash.name,
        sections=[ws.Section(name=s.name, panels=[panel(p) for p in s.panels], is_open=True)
                  for s in dash.sections if s.panels],
        runset_settings=ws.RunsetSettings(filters=filter_expression(dash.filters), groupby=[expr.Metric("Group")],
                                          pinned_columns=columns(dash)))


def report(dash: Dashboard, entity: str) -> Any:
    """The report: per section a heading and a panel grid whose run sets select the section's runs (its job
    types; the frontier: one run set per method), grouped by W&B group, with the runs table's columns."""
    import wandb_workspaces.reports.v2 as wr  # deferred: optional (the dashboard extra)

    blocks: list[Any] = [wr.P(f"Built by vrs-dashboard from the metric names the apps log with (docs/wandb.md); "
                              f"sections: {', '.join(s.name for s in dash.sections)}.")]
    for s in dash.sections:
        runsets = [wr.Runset(entity=entity, project=dash.project, name=r.name, filters=filter_expression(r.filters),
                             groupby=["group"], pinned_columns=columns(dash)) for r in s.runsets]
        blocks += [wr.H2(s.name), wr.PanelGrid(runsets=runsets, panels=[panel(p) for p in s.panels])]
    return wr.Report(project=dash.project, entity=entity, title=f"{dash.name}: training, certification, robustness",
                     description="Variational Randomized Smoothing against fixed sigma and other defences.",
                     blocks=blocks)


# ---- the spec file ----------------------------------------------------------------------------------------
def check_out(out: Any) -> Path:
    """dashboard.out: a path for the JSON file; an existing file only when it is an earlier dashboard spec."""
    check(isinstance(out, str) and out != "", "dashboard.out", out, "the path of the JSON file to write")
    path = Path(out)
    check(not path.is_dir(), "dashboard.out", out, "a file path (this is a directory)")
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("format") == SPEC_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        check(ours, "dashboard.out", out, "a new file, or an earlier vrs-dashboard spec to replace (this file is "
                                          "something else)")
    return path


# ---- the app ----------------------------------------------------------------------------------------------------
def build(cfg: DictConfig) -> dict:
    """Build the dashboard as configured; save it to W&B unless dashboard.dry_run. Returns what was done:
    {"out": the spec's path, "workspace": url | None, "report": url | None, "sections": [...]}."""
    node = OmegaConf.to_container(cfg.dashboard, resolve=True)
    opts: Options = parse_options(node)
    # their types: vrs.config.dashboard.DashboardConfig, before the run started
    dry_run, with_report, url = bool(node.get("dry_run")), bool(node.get("report")), node.get("workspace_url")
    out = check_out(node.get("out"))
    dash = build_dashboard(opts)
    spec = specification(dash, opts)
    result: dict[str, Any] = {"out": out, "workspace": None, "report": None,
                              "sections": [s.name for s in dash.sections], "dry_run": dry_run}
    if dry_run:
        if has_workspaces():  # the library's own checks, offline: every panel and filter is one it takes
            workspace(dash, opts.entity or "entity"), report(dash, opts.entity or "entity")
        atomic_write(out, json.dumps(spec, indent=2) + "\n")
        return result
    check_upload_needs(node)  # vrs.config_schema checked it before the run; again for a direct call
    try:
        entity = save(dash, opts, url, with_report, result)
    except Exception as err:  # noqa: BLE001 - W&B's answer (a refused key, a missing project, ...): one line
        done = f"; the workspace was saved ({result['workspace']})" if result["workspace"] else ""
        raise VRSError(f"saving the dashboard to W&B failed: {type(err).__name__}: {first_line(err, 300)}{done}; "
                       f"dashboard.dry_run=true writes the specification without W&B") from None
    spec.update(entity=entity, saved={"workspace": result["workspace"], "report": result["report"]})
    atomic_write(out, json.dumps(spec, indent=2) + "\n")
    return result


def save(dash: Dashboard, opts: Options, url: str | None, with_report: bool, result: dict) -> str:
    """Save the workspace (a new view, or the view at `url`) and, with_report, the report; their URLs go into
    result as they are saved. Returns the entity they were saved under."""
    import wandb  # deferred: only an upload needs it

    entity = opts.entity or wandb.Api().default_entity
    ws = workspace(dash, entity)
    if url:
        import wandb_workspaces.workspaces as wsl  # deferred: optional (the dashboard extra)

        view = wsl.Workspace.from_url(url)
        view.sections, view.runset_settings, view.name = ws.sections, ws.runset_settings, ws.name
        ws = view
    result["workspace"] = ws.save().url
    if with_report:
        rep = report(dash, entity)
        rep.save()
        result["report"] = rep.url
    return entity


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="dashboard")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    validate_app_config(cfg, "dashboard")  # before any output: one clear error line
    result = run_or_put_back(lambda: build(cfg))  # a refused run leaves the run directory as it was
    print(f"Dashboard: {', '.join(result['sections'])}")
    if result["dry_run"]:
        print(f"Specification (dry run, nothing saved to W&B): {result['out']}")
        return
    print(f"Workspace: {result['workspace']}")
    if result["report"]:
        print(f"Report: {result['report']}")
    print(f"Specification: {result['out']}")


if __name__ == "__main__":
    main()
