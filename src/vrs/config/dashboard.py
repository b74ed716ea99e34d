"""vrs-dashboard's options (conf/dashboard.yaml: dashboard), typed. The W&B names, sections, radii and attacks are
vrs.utils.dashboard_spec.parse_options' rules (the dashboard app reads the node through it); whether a save can
reach W&B (its key, wandb-workspaces) is vrs.preflight's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import BOOL, TEXT, Checked, Rule, key, optional
from vrs.utils.dashboard_spec import parse_options

URL = Rule(lambda v: isinstance(v, str) and v.startswith(("http://", "https://")),
           "the URL of a saved workspace view to replace")


@dataclass(kw_only=True)
class DashboardConfig(Checked):
    NODE = "dashboard"

    project: str = key(None, absent_ok=True)
    entity: str | None = key(None, absent_ok=True)
    name: str = key(None, absent_ok=True)
    groups: Any = key(None, absent_ok=True)
    tags: Any = key(None, absent_ok=True)
    sections: Any = key(None, absent_ok=True)
    radii: Any = key(None, absent_ok=True)
    attacks: Any = key(None, absent_ok=True)
    eps: Any = key(None, absent_ok=True)
    report: bool = key(BOOL, absent_ok=True)
    workspace_url: str | None = key(optional(URL, " (a new view)"), absent_ok=True)
    dry_run: bool = key(BOOL, absent_ok=True)
    out: str = key(TEXT, absent_ok=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_options(self.given())
