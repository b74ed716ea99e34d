"""vrs-report's options (conf/report.yaml: report), typed; whether report.inputs exist is vrs.preflight's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import TEXT, Checked, key, list_of, number, optional


@dataclass
class ReportConfig(Checked):
    NODE = "report"

    inputs: Any = key(None)  # a directory or a list of them: vrs.preflight.parse_inputs
    out_dir: str = key(TEXT)
    # Any, not List[float]: an error shows the radii as given
    radii: Any = key(list_of(number(ge=0), distinct=True))
    title: str | None = key(optional(TEXT))
    hide_overrides: list[str] = key(list_of(TEXT, nonempty=False))
