"""vrs.analysis is a low layer: numpy and scipy only, nothing of vrs (no torch, no Lightning, no apps)."""

from __future__ import annotations

import subprocess
import sys


def test_analysis_imports_no_torch_and_nothing_of_vrs():
    code = ("import sys, vrs.analysis.frontier, vrs.analysis.oracle, vrs.analysis.outcomes, "
            "vrs.analysis.sigma_spread, vrs.analysis.standard_error\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning', 'hydra')"
            " or (m.startswith('vrs.') and not m.startswith('vrs.analysis'))]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
