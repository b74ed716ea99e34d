"""Frontier gaps of every VRS point under its strongest attack, recomputed from a benchmarks/vrs_frontier.py run tree
(test split) with vrs.analysis: an independent check of vrs-report's `robust_acc[strongest l2]` frontier tables.

    python benchmarks/frontier_check.py <vrs_frontier --out folder>
"""
import csv
import json
import sys
from pathlib import Path
import numpy as np
from vrs.analysis.frontier import frontier_gap
from vrs.analysis.outcomes import robust_under_all

root = Path(sys.argv[1]) / "test"
def runs(folder):
    out = {}
    for job in sorted((root / folder).iterdir()):
        if not (job / "attack.csv").is_file():
            continue
        s = json.loads((job / "summary.json").read_text())["settings"]["defense"]
        key = s["sigma"] if s["sigma"] is not None else s["lam"]
        rows = list(csv.DictReader(open(job / "attack.csv")))
        out[float(key)] = rows
    return out
def per_image(rows, eps):
    r = sorted((x for x in rows if float(x["eps"]) == eps), key=lambda x: int(x["idx"]))
    idx = np.array([int(x["idx"]) for x in r])
    clean = np.array([x["clean_predict"] == x["label"] for x in r], float)
    rob = np.array([int(x["correct"]) for x in r], float)
    return idx, clean, rob
fixed = runs("atk_fixed")
objectives = sorted({d.name[4:].rsplit("_", 1)[0] for d in root.glob("atk_*_*") if d.name != "atk_fixed"})
for obj in objectives:
    atks = [a for a in ("eot", "down", "median") if (root / f"atk_{obj}_{a}").is_dir()]
    per = {a: runs(f"atk_{obj}_{a}") for a in atks}
    for eps in (0.5, 1.0):
        sig = sorted(fixed)
        fx = [per_image(fixed[s], eps) for s in sig]
        for lam in sorted(per[atks[0]]):
            parts = [per_image(per[a][lam], eps) for a in atks]
            assert all((p[0] == fx[0][0]).all() for p in parts) and all((f[0] == fx[0][0]).all() for f in fx)
            rob = robust_under_all(*[p[2] for p in parts])
            g = frontier_gap(sig, np.stack([f[1] for f in fx]), np.stack([f[2] for f in fx]), parts[0][1], rob)
            print(f"{obj:11s} attacks={'+'.join(atks):10s} eps={eps:g} lam={lam:<4g} clean={parts[0][1].mean():.3f} "
                  f"robust={rob.mean():.3f} n={len(rob)} gap: {g.verdict}")
