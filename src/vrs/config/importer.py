"""vrs-import's published checkpoint (conf/import.yaml: source), typed; what each codebase wrote:
vrs.importers.codebases."""

from __future__ import annotations

from dataclasses import dataclass

from vrs.config.rules import Checked, key, number, one_of, optional
from vrs.importers.codebases import CODEBASES, NORMALIZATIONS


@dataclass(kw_only=True)
class SourceConfig(Checked):
    NODE = "source"

    format: str = key(one_of(*CODEBASES))
    sigma: float = key(number(gt=0))
    normalization: str | None = key(optional(one_of(*NORMALIZATIONS), " (what the codebase's code applies)"))
