"""Certified accuracy and ACR of the anchors' own certification logs (docs/importing.md, "What it should reproduce").

    python scripts/published_numbers.py <certify output of locuslab/smoothing's code/certify.py> ...

Each file is the TSV that locuslab/smoothing's certify.py writes (idx, label, predict, radius, correct, time; its forks
write the same), e.g. data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25 of that repository. Prints one
markdown row per file: images, certified accuracy at r = 0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0 (with this project's
vrs.smoothing.core, the functions vrs-certify's summary uses), ACR, and the binomial standard error of the
accuracy at r = 0, which is about what a re-certification with fresh noise may differ by.
"""

from __future__ import annotations

import csv
import math
import sys

from vrs.smoothing.core import average_certified_radius, certified_accuracy

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def row(path: str) -> str:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    radii = [float(r["radius"]) for r in rows]
    correct = [int(r["correct"]) == 1 for r in rows]
    acc = certified_accuracy(radii, correct, RADII)
    se = math.sqrt(acc[0] * (1 - acc[0]) / len(rows))
    return (f"| {path} | {len(rows)} | " + " | ".join(f"{a:.3f}" for a in acc)
            + f" | {average_certified_radius(radii, correct):.3f} | {se:.3f} |")


if __name__ == "__main__":
    print("| log | images | " + " | ".join(f"r={r:g}" for r in RADII) + " | ACR | s.e. at r=0 |")
    print("| --- | --- | " + " | ".join("---" for _ in RADII) + " | --- | --- |")
    for path in sys.argv[1:]:
        print(row(path))
