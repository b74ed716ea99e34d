"""Hydra apps: train, certify, attack, report, importer, dashboard. Each is also `python -m vrs.<app>`."""

import os
from pathlib import Path

from vrs.config import register_configs

# conf/ sits at the repository root (editable install / Docker image copy); VRS_CONFIG_DIR overrides it.
CONFIG_DIR = os.environ.get("VRS_CONFIG_DIR", str(Path(__file__).resolve().parents[3] / "conf"))

# The typed configs (vrs.config) that conf/'s defaults lists name (`/schema@_here_: certify`), in Hydra's
# ConfigStore before any app or test composes a config.
register_configs()
