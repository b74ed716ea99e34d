"""`make demo` = `python -m vrs.demo [OVERRIDES...]`: the main job, briefly, on the CPU.

Trains the default base classifier (LeNet on Fashion-MNIST, Gaussian noise augmentation at sigma = 0.25)
with `experiment=smoke` (2,048 training images, one epoch: about half a minute on 2 CPU cores) through the
real `vrs-train` app, then prints where its outputs are. Extra arguments are passed on to vrs-train as
Hydra overrides, e.g. `python -m vrs.demo trainer.max_epochs=3`.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path


def last_metrics(metrics_csv: Path) -> dict[str, str]:
    """The last logged value of every column of a Lightning CSVLogger metrics.csv."""
    out: dict[str, str] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            out.update({k: v for k, v in row.items() if v})
    return out


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    run_dir = Path("outputs") / "demo" / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, "-m", "vrs.train", "experiment=smoke", "task_name=demo", "tags=[demo]",
           f"hydra.run.dir={run_dir}", *overrides]
    print("demo: training the default classifier briefly on the CPU:\n  " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - start
    if code != 0:
        print(f"demo: vrs-train failed (exit code {code})", file=sys.stderr)
        return code
    run_dir = run_dir.resolve()
    ckpt_dir = run_dir / "checkpoints"
    metrics = last_metrics(run_dir / "csv" / "metrics.csv") if (run_dir / "csv" / "metrics.csv").is_file() else {}
    print(f"\ndemo: done in {wall:.0f} s. Outputs:")
    print(f"  run directory   {run_dir}")
    print(f"  resolved config {run_dir / '.hydra' / 'config.yaml'}")
    print(f"  checkpoints     {ckpt_dir} ({', '.join(sorted(p.name for p in ckpt_dir.glob('*.ckpt')))})")
    print(f"  metrics (CSV)   {run_dir / 'csv' / 'metrics.csv'}")
    print(f"  log             {run_dir / 'demo.log'}")
    for key in ("test/acc_clean", "test/acc"):
        if key in metrics:
            what = "clean test accuracy" if key.endswith("clean") else "test accuracy under sigma=0.25 noise"
            print(f"  {what}: {float(metrics[key]):.3f}")
    print("\nNext: train longer with `vrs-train experiment=cohen_fmnist` (see README.md), or resume this run with\n"
          f"  vrs-train experiment=smoke ckpt_path={ckpt_dir / 'last.ckpt'} trainer.max_epochs=3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
