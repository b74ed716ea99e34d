"""`make lint`'s two tools on this tree, and that the import contracts catch what they are for.

- ruff check (pyproject.toml [tool.ruff]) passes on the repository;
- lint-imports (pyproject.toml [tool.importlinter]) keeps its contracts on src/vrs, and breaks them on a copy of
  src/vrs in which one library module imports the apps (the case the contracts exist for).

Skipped where the tools are not installed (`make install` installs them, pinned in requirements.lock).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

importlinter = pytest.importorskip("importlinter", reason="import-linter is not installed (make install)")

LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"


def lint_imports(root: Path, src: Path) -> subprocess.CompletedProcess:
    """lint-imports with root's pyproject.toml, finding the vrs package under `src` first (then import-linter's
    own folder, wherever it is installed)."""
    path = os.pathsep.join([str(src), str(Path(importlinter.__file__).resolve().parents[1])])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": path, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_ruff_check_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (make install)")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_hold_and_break_on_a_library_module_importing_the_apps(tmp_path):
    kept = lint_imports(REPO_ROOT, REPO_ROOT / "src")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "3 kept, 0 broken" in kept.stdout

    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "src" / "vrs", tmp_path / "src" / "vrs", ignore=shutil.ignore_patterns("__pycache__"))
    core = tmp_path / "src" / "vrs" / "smoothing" / "core.py"
    core.write_text(core.read_text() + "\nfrom vrs.apps import CONFIG_DIR  # a library module importing the apps\n")
    broken = lint_imports(tmp_path, tmp_path / "src")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    out = broken.stdout
    assert "No library module imports the apps BROKEN" in out and "vrs.smoothing.core -> vrs.apps" in out
    assert "Layers: " in out and "apps BROKEN" in out.split("No library module")[0]  # the layers contract too
