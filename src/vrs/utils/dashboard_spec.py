"""The W&B dashboard of docs/wandb.md as data: sections, panels and run filters, built from the metric names
the apps log with (vrs.utils.metric_names), so a renamed metric renames its panel.

This module knows nothing of W&B's libraries: `build_dashboard(options)` returns plain dataclasses that
`specification` gives as the JSON that vrs-dashboard writes for review (`vrs-dashboard dashboard.dry_run=true`)
and vrs.apps.dashboard turns into wandb-workspaces objects (a workspace and a saved report).

Sections (docs/wandb.md, "Dashboard layout"); each names the runs it shows by their W&B job type (the app):

    training        Training        job type train:   curves against the epoch; VRS's per-lambda families
    certification   Certification   job type certify: ACR and certified accuracy against sigma and lambda
    robustness      Robustness      job type attack:  robust accuracy against sigma and lambda
    frontier        Frontier        certify + attack: clean against certified / robust accuracy, one run set
                                    per method (fixed sigma, VRS, every other method), so each fixed-sigma
                                    run is one point beside every VRS lambda and every other method's run
    runs            Runs table      every run: the runs table, grouped by experiment (W&B group)
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from vrs.errors import VRSError, check
from vrs.utils import metric_names as names
from vrs.utils.loggers import wandb_has_credentials, wandb_unreachable

SECTIONS = ("training", "certification", "robustness", "frontier", "runs")
PANEL_KINDS = ("line", "scatter", "bar", "scalar", "media", "table")
# Run fields the filters use (W&B's names for a run's group, job type and tags).
GROUP, JOB_TYPE, TAGS = "Group", "JobType", "Tags"
# The `method=` tag of each family of defences (vrs.utils.loggers.run_tags, from each app's run_facts).
FIXED_SIGMA, VRS = "method=cohen", "method=vrs"
WORKSPACES_PIN = "wandb-workspaces==0.4.13"  # requirements.lock; pyproject's `dashboard` extra
SPEC_FORMAT = "vrs-dashboard/1"  # the JSON file's "format": what tells a dashboard spec from other files


@dataclass(frozen=True)
class Filter:
    """Runs whose `field` (Group | JobType | Tags) is (op "in") or is not (op "not in") one of `values`; for
    Tags: has any of them / none of them."""
    field: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Runset:
    """A named set of runs (a report's run set): every filter holds."""
    name: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Panel:
    """One W&B panel. kind: line (metrics against x, or every key matching `regex`), scatter (metrics[0]
    against x, one point per run), bar (metrics per run, grouped by `groupby`), scalar (metrics[0]), media
    (images logged under metrics), table (a W&B table logged under metrics[0])."""
    kind: str
    title: str
    metrics: tuple[str, ...] = ()
    x: str | None = None
    regex: str | None = None
    groupby: str | None = None


@dataclass(frozen=True)
class Section:
    key: str
    name: str                    # the heading in docs/wandb.md
    job_types: tuple[str, ...]   # the apps whose runs it shows (empty: every run)
    runsets: tuple[Runset, ...]
    panels: tuple[Panel, ...]


@dataclass
class Dashboard:
    entity: str | None
    project: str
    name: str
    filters: tuple[Filter, ...]          # every run set's (and the workspace's): the group and tag filters
    sections: list[Section] = field(default_factory=list)
    table_columns: tuple[str, ...] = ()  # the runs table's columns: run fields and summary metrics

    def panels(self) -> list[Panel]:
        return [p for s in self.sections for p in s.panels]

    def metric_keys(self) -> set[str]:
        """Every metric key a panel reads (x axes included; `epoch` too), not the regex families."""
        keys = {k for p in self.panels() for k in p.metrics}
        keys |= {p.x for p in self.panels() if p.x}
        return keys | {c for c in self.table_columns if "/" in c}

    def regexes(self) -> list[str]:
        return [p.regex for p in self.panels() if p.regex]


# ---- options ----------------------------------------------------------------------------------------------
@dataclass
class Options:
    project: str
    entity: str | None = None
    name: str = "VRS"
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sections: tuple[str, ...] = SECTIONS
    radii: tuple[float, ...] = (0.5, 1.0)
    attacks: tuple[str, ...] = ()
    eps: tuple[float, ...] = (0.5,)


def _texts(key: str, value: Any, what: str, pattern: str = r".+") -> tuple[str, ...]:
    value = [] if value is None else value
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) and re.fullmatch(pattern, v) for v in value)
    check(ok and len(set(value)) == len(value), key, value, f"a list of distinct {what}")
    return tuple(value)


def _numbers(key: str, value: Any, what: str) -> tuple[float, ...]:
    ok = (isinstance(value, (list, tuple)) and len(value) > 0
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf") for v in value))
    check(ok and len(set(value)) == len(value), key, value, f"a non-empty list of distinct {what}")
    return tuple(float(v) for v in value)


def parse_options(node: dict) -> Options:
    """The dashboard node of conf/dashboard.yaml as Options; a bad value is a ConfigError naming its key."""
    project, entity, name = node.get("project"), node.get("entity"), node.get("name")
    check(isinstance(project, str) and re.fullmatch(r"[\w.-]+", project or "") is not None, "dashboard.project",
          project, "a W&B project name (letters, digits, - _ .)")
    check(entity is None or (isinstance(entity, str) and re.fullmatch(r"[\w.-]+", entity) is not None),
          "dashboard.entity", entity, "null (the API key's default entity) or a W&B team / user name")
    check(isinstance(name, str) and name.strip() != "", "dashboard.name", name, "a non-empty workspace name")
    sections = _texts("dashboard.sections", node.get("sections"), "sections")
    check(len(sections) > 0 and set(sections) <= set(SECTIONS), "dashboard.sections", list(sections),
          f"a non-empty list of: {', '.join(SECTIONS)}")
    attacks = _texts("dashboard.attacks", node.get("attacks"), "attack names (conf/attack/: pgd_l2, eot_pgd, ...)",
                     r"\w+")
    return Options(project=project, entity=entity, name=name.strip(),
                   groups=_texts("dashboard.groups", node.get("groups"), "W&B group names (task_name)"),
                   tags=_texts("dashboard.tags", node.get("tags"), "run tags (data=cifar10, method=vrs, ...)"),
                   sections=tuple(s for s in SECTIONS if s in sections),  # the docs' order
                   radii=_numbers("dashboard.radii", node.get("radii"), "radii >= 0"),
                   attacks=attacks, eps=_numbers("dashboard.eps", node.get("eps"), "eps >= 0"))


# ---- the sections -----------------------------------------------------------------------------------------
def _line(*metrics: str) -> list[Panel]:
    return [Panel("line", m, (m,), x=names.EPOCH) for m in metrics]


def _family(title: str, regex: str) -> Panel:
    return Panel("line", title, (), x=names.EPOCH, regex=regex)


def _against_defence(metric: str, lam: str, sigma: str) -> list[Panel]:
    """`metric` against lambda (VRS: the trade-off knob) and against sigma (fixed sigma): the VRS curve
    against the fixed-sigma points."""
    return [Panel("scatter", f"{metric} vs {lam}", (metric,), x=lam),
            Panel("scatter", f"{metric} vs {sigma}", (metric,), x=sigma)]


def training() -> list[Panel]:
    val, train = (lambda n: names.stage_key(names.VAL, n)), (lambda n: names.stage_key(names.TRAIN, n))
    return [*_line(val(names.ACC), val(names.ACC_CLEAN), train(names.LOSS), train(names.ACC), names.LR),
            _family("VRS: val accuracy per lambda", names.lam_key_pattern(names.VAL, names.ACC)),
            _family("VRS: val mean sigma per lambda", names.lam_key_pattern(names.VAL, names.SIGMA_MEAN)),
            *_line(train(names.KL), train(names.SIGMA_MEAN)),
            _family("Multi-sigma: val accuracy per sigma", names.acc_sigma_pattern(names.VAL)),
            Panel("media", "VRS selector diagnostics", (names.SELECTOR_FIGURES,))]


def certification(radii: tuple[float, ...]) -> list[Panel]:
    panels = _against_defence(names.CERT_ACR, names.CERT_LAM, names.CERT_SIGMA)
    for r in radii:
        panels += _against_defence(names.cert_acc(r), names.CERT_LAM, names.CERT_SIGMA)
    return [*panels, Panel("bar", f"{names.CERT_ACR} per run", (names.CERT_ACR,), groupby=GROUP),
            Panel("media", "certified accuracy curves", (names.CERT_PLOT,)),
            Panel("table", "certify.tsv rows", (names.CERT_TABLE,)),
            Panel("scalar", names.CERT_ABSTAIN, (names.CERT_ABSTAIN,)),
            Panel("scalar", names.CERT_SECONDS_PER_IMAGE, (names.CERT_SECONDS_PER_IMAGE,))]


def robust_keys(attacks: tuple[str, ...], eps: tuple[float, ...]) -> list[str]:
    """robust/acc@<attack>_<eps> of every attack at every eps."""
    return [names.robust_acc(a, e) for a in attacks for e in eps]


def robustness(attacks: tuple[str, ...], eps: tuple[float, ...]) -> list[Panel]:
    keys = robust_keys(attacks, eps)
    panels = [p for k in keys for p in _against_defence(k, names.ROBUST_LAM, names.ROBUST_SIGMA)]
    return [*panels, Panel("bar", "robust accuracy per run", (names.ROBUST_CLEAN_ACC, *keys), groupby=GROUP),
            Panel("media", "robust accuracy against eps", (names.ROBUST_PLOT,))]


def frontier(radii: tuple[float, ...], attacks: tuple[str, ...], eps: tuple[float, ...]) -> list[Panel]:
    """Clean accuracy against certified accuracy (each radius, and the ACR) and against robust accuracy (each
    attack and eps): a fixed-sigma run, a VRS lambda or another method's run is one point."""
    certified = [names.cert_acc(r) for r in radii] + [names.CERT_ACR]
    return ([Panel("scatter", f"clean vs certified: {k}", (k,), x=names.CERT_CLEAN_ACC) for k in certified]
            + [Panel("scatter", f"clean vs robust: {k}", (k,), x=names.ROBUST_CLEAN_ACC)
               for k in robust_keys(attacks, eps)])


def table_columns(radii: tuple[float, ...], attacks: tuple[str, ...], eps: tuple[float, ...]) -> tuple[str, ...]:
    """The runs table (docs/wandb.md): Group, Job Type, Tags, then the headline numbers of each app."""
    return (GROUP, JOB_TYPE, TAGS, names.stage_key(names.VAL, names.ACC), names.CERT_ACR,
            *(names.cert_acc(r) for r in radii), *robust_keys(attacks, eps), names.ROBUST_CLEAN_ACC)


def method_runsets(base: tuple[Filter, ...]) -> tuple[Runset, ...]:
    """One run set per family of defences: fixed sigma, VRS, and every other method (Dual RS, the test-time
    sigma searches, ...: whatever `method=` tag is neither)."""
    return (Runset("fixed sigma", (*base, Filter(TAGS, "in", (FIXED_SIGMA,)))),
            Runset("VRS", (*base, Filter(TAGS, "in", (VRS,)))),
            Runset("other methods", (*base, Filter(TAGS, "not in", (FIXED_SIGMA, VRS)))))


def build_dashboard(opts: Options) -> Dashboard:
    """The dashboard of docs/wandb.md for opts (only the chosen sections, in the docs' order)."""
    base: list[Filter] = []
    if opts.groups:
        base.append(Filter(GROUP, "in", opts.groups))
    if opts.tags:
        base.append(Filter(TAGS, "in", opts.tags))
    base_t = tuple(base)

    def runs_of(*job_types: str) -> tuple[Filter, ...]:
        return (*base_t, Filter(JOB_TYPE, "in", job_types)) if job_types else base_t

    make = {
        "training": lambda: Section("training", "Training", ("train",),
                                    (Runset("training runs", runs_of("train")),), tuple(training())),
        "certification": lambda: Section("certification", "Certification", ("certify",),
                                         (Runset("certification runs", runs_of("certify")),),
                                         tuple(certification(opts.radii))),
        "robustness": lambda: Section("robustness", "Robustness", ("attack",),
                                      (Runset("attack runs", runs_of("attack")),),
                                      tuple(robustness(opts.attacks, opts.eps))),
        "frontier": lambda: Section("frontier", "Frontier", ("certify", "attack"),
                                    method_runsets(runs_of("certify", "attack")),
                                    tuple(frontier(opts.radii, opts.attacks, opts.eps))),
        "runs": lambda: Section("runs", "Runs table", (), (Runset("all runs", base_t),), ()),
    }
    return Dashboard(entity=opts.entity, project=opts.project, name=opts.name, filters=base_t,
                     sections=[make[s]() for s in opts.sections],
                     table_columns=table_columns(opts.radii, opts.attacks, opts.eps))


def specification(dash: Dashboard, options: Options) -> dict:
    """The dashboard and the options it was built from, as plain JSON-ready data (dashboard.out)."""
    return {"format": SPEC_FORMAT, "options": asdict(options), **asdict(dash)}


# ---- what saving to W&B needs ---------------------------------------------------------------------------------
def has_workspaces() -> bool:
    """Whether wandb-workspaces (the optional `dashboard` extra) is installed."""
    try:
        import wandb_workspaces  # noqa: F401 - only whether it is installed
    except ImportError:
        return False
    return True


def missing_for_upload() -> list[str]:
    """What this machine lacks to save a workspace and report to W&B (empty: nothing)."""
    missing = []
    if not has_workspaces():
        missing.append(f"wandb-workspaces ({WORKSPACES_PIN}: pip install -e '.[dashboard]')")
    mode = os.environ.get("WANDB_MODE", "")
    if not wandb_has_credentials():
        missing.append("a W&B API key (WANDB_API_KEY, or `wandb login`)")
    elif mode in ("offline", "dryrun", "disabled"):
        missing.append(f"online mode (WANDB_MODE={mode} is set)")
    else:
        unreachable = wandb_unreachable()
        if unreachable:
            missing.append(f"network access to the W&B server ({unreachable})")
    return missing


def check_upload_needs(node: dict) -> None:
    """VRSError naming everything missing for a save to W&B, unless dashboard.dry_run (which needs none of it)."""
    if node.get("dry_run") is True:
        return
    missing = missing_for_upload()
    if missing:
        raise VRSError(f"vrs-dashboard saves to W&B and needs {'; '.join(missing)}; dashboard.dry_run=true writes the "
                       f"specification ({node.get('out')}) without any of them")
