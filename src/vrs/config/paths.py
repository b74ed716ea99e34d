"""Where runs read and write (conf/paths/default.yaml), typed."""

from __future__ import annotations

from dataclasses import dataclass

from vrs.config.rules import TEXT, Checked, key, number


@dataclass
class PathsConfig(Checked):
    NODE = "paths"

    root_dir: str = key(TEXT)
    data_dir: str = key(TEXT)
    log_dir: str = key(TEXT)
    output_dir: str = key(TEXT)
    min_free_mb: float = key(number(ge=0))  # vrs.preflight refuses an output directory's disk with less free
