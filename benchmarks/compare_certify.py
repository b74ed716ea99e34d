"""Compare certify.tsv files row by row: are they identical (all columns but `time`), and where not, how far
apart are predictions, radii, certified accuracy and ACR?

    python benchmarks/compare_certify.py RUN_A RUN_B [--out diff.json]

RUN_A / RUN_B are run directories (or certify.tsv files). Used by benchmarks/gpu/repro.sh to measure what
varies between GPU runs (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def read_tsv(path: Path) -> dict[int, dict[str, str]]:
    path = path / "certify.tsv" if path.is_dir() else path
    with open(path, newline="") as fh:
        return {int(r["idx"]): r for r in csv.DictReader(fh, delimiter="\t")}


def summary(rows: list[dict[str, str]]) -> dict:
    radius = np.array([float(r["radius"]) for r in rows])
    correct = np.array([r["correct"] == "1" for r in rows])
    return {"acr": float(np.mean(np.where(correct, radius, 0.0))),
            **{f"cert_acc@{t}": float(np.mean(correct & (radius >= t))) for t in RADII}}


def compare(a: dict[int, dict], b: dict[int, dict]) -> dict:
    common = sorted(set(a) & set(b))
    keys = [k for k in a[common[0]] if k != "time"]
    same = sum(all(a[i][k] == b[i][k] for k in keys) for i in common)
    pred_diff = sum(a[i]["predict"] != b[i]["predict"] for i in common)
    rad = np.array([abs(float(a[i]["radius"]) - float(b[i]["radius"])) for i in common])
    return {"images": len(common), "identical_rows": same, "different_predictions": pred_diff,
            "radius_abs_diff_max": float(rad.max()), "radius_abs_diff_mean": float(rad.mean()),
            "summary_a": summary([a[i] for i in common]), "summary_b": summary([b[i] for i in common])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = {"a": str(args.a), "b": str(args.b), **compare(read_tsv(args.a), read_tsv(args.b))}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
