"""Hydra apps: train, certify, attack, report, importer, dashboard. Each is also `python -m vrs.<app>`."""

import os
from pathlib import Path

# conf/ sits at the repository root (editable install / Docker image copy); VRS_CONFIG_DIR overrides it.
CONFIG_DIR = os.environ.get("VRS_CONFIG_DIR", str(Path(__file__).resolve().parents[3] / "conf"))
