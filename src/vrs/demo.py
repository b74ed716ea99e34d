"""`make demo` = `python -m vrs.demo`: VRS against fixed-sigma smoothing on Fashion-MNIST, end to end on a CPU.

Runs the real apps one after another (each as its own process, exactly as you would type them) into
outputs/demo/<time>/:
  1. train/          vrs-train experiment=demo: a narrow multi-sigma LeNet (4,096 images, 3 epochs), then
                     the VRS noise-level selector on it (1 epoch);
  2. certify_vrs/    vrs-certify certify=vrs_c1 at three lambdas,
     certify_fixed/  vrs-certify certify=cohen at three fixed sigmas (the same base classifier);
  3. attack_vrs/     vrs-attack: L2 EOT-PGD at three eps against VRS at each lambda,
     attack_fixed/   and against each fixed sigma;
  4. report/         vrs-report over all of it: report.md, report.csv and the plots, among them the Pareto
                     frontier (frontier_robust.png: clean accuracy against robust accuracy, fixed sigma one
                     curve over sigma, VRS one curve over lambda; README "Reading the frontier").
Small settings keep it to a few minutes on 2 cores (n = 500 samples, 50 test images certified, 24
attacked): the numbers are real but rough; report.md's header lists the settings. Extra arguments are
Hydra overrides for the training step, e.g. `python -m vrs.demo base_stage.trainer.max_epochs=5`.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

LAMBDAS = "0,0.5,1"      # VRS's test-time trade-off knob: 0 = accuracy first, larger = larger sigma (one curve)
SIGMAS = "0.25,0.5,1.0"  # the fixed-sigma baselines (the other curve of the frontier)
CERTIFY = ["certify.n0=32", "certify.n=500", "certify.alpha=0.001", "certify.skip=200", "certify.max=50",
           "certify.progress=false"]
# L2 EOT-PGD with small budgets; the VRS defence's deployed sigma from 32 selector draws, as certify's sigma0
ATTACK = ["attack=eot_pgd", "attack.norm=l2", "attack.eps=[0.25,0.5,1.0]", "attack.steps=5", "attack.eot=2",
          "attack.skip=400", "attack.max=24", "attack.batch_size=24", "defense.m=4", "defense.n_h=4",
          "defense.deployed_n_h=32", "predict.n=100"]
QUIET = ["print_config=false"]


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(step: str, app: str, *args: str) -> float:
    """Run `python -m vrs.apps.<app> args...`; stop the demo (with the app's exit code) when it fails."""
    cmd = [sys.executable, "-m", f"vrs.apps.{app}", *args]
    print(f"\n== demo {step}: vrs-{app} " + " ".join(args), flush=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    code = subprocess.call(cmd)
    if code != 0:
        print(f"demo: step {step} (vrs-{app}) failed with exit code {code}", file=sys.stderr)
        raise SystemExit(code)
    took = time.perf_counter() - start
    # CPU time as well: on a shared machine the wall time says more about the neighbours than the job
    print(f"== demo {step}: done in {took:.0f} s (CPU time {cpu_seconds() - cpu:.0f} s)", flush=True)
    return took


def steps(root: Path, train_overrides: list[str]) -> list[tuple[str, str, list[str]]]:
    """The demo: (step, app, arguments) for each app run, in order, writing under root."""
    ckpt = root / "train" / "checkpoints" / "last.ckpt"  # the final selector (its base classifier inside)
    return [
        ("1/4 train", "train", ["experiment=demo", f"hydra.run.dir={root / 'train'}", *QUIET,
                                "~callbacks.progress_bar", *train_overrides]),
        ("2/4 certify (VRS)", "certify", ["-m", f"ckpt_path={ckpt}", "certify=vrs_c1", f"certify.lam={LAMBDAS}",
                                          *CERTIFY, f"hydra.sweep.dir={root / 'certify_vrs'}", *QUIET]),
        ("2/4 certify (fixed sigma)", "certify", ["-m", f"ckpt_path={ckpt}", "certify=cohen",
                                                  f"certify.sigma={SIGMAS}", *CERTIFY,
                                                  f"hydra.sweep.dir={root / 'certify_fixed'}", *QUIET]),
        # defense.sigma=null is VRS (at each lambda); a number is fixed sigma with the same base classifier
        ("3/4 attack (VRS)", "attack", ["-m", f"ckpt_path={ckpt}", "defense.sigma=null", f"defense.lam={LAMBDAS}",
                                        *ATTACK, f"hydra.sweep.dir={root / 'attack_vrs'}", *QUIET]),
        ("3/4 attack (fixed sigma)", "attack", ["-m", f"ckpt_path={ckpt}", f"defense.sigma={SIGMAS}", *ATTACK,
                                                f"hydra.sweep.dir={root / 'attack_fixed'}", *QUIET]),
        ("4/4 report", "report", [f"report.inputs={root}", "report.title='make demo: VRS vs fixed sigma on "
                                  "Fashion-MNIST (CPU, small settings)'", f"hydra.run.dir={root / 'report'}"]),
    ]


def main(argv: list[str] | None = None) -> int:
    train_overrides = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in train_overrides):
        print(__doc__)
        return 0
    root = Path("outputs") / "demo" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    start = time.perf_counter()
    for step, app, args in steps(root, train_overrides):
        run(step, app, *args)

    report = (root / "report").resolve()
    print(f"\ndemo: done in {time.perf_counter() - start:.0f} s. Everything is in {root.resolve()}:")
    print(f"  report           {report / 'report.md'} (+ report.csv and the plots next to it)")
    print(f"  training run     {root / 'train'} (checkpoints/last.ckpt: the VRS model; base/: its base classifier)")
    print(f"  certification    {root / 'certify_vrs'}/<job>/, {root / 'certify_fixed'}/<job>/ "
          "(certify.tsv, summary.json)")
    print(f"  attacks          {root / 'attack_vrs'}/<job>/, {root / 'attack_fixed'}/<job>/ "
          "(attack.csv, summary.json)")
    print(f"  the frontier     {report / 'frontier_robust.png'} (how to read it: README.md, Reading the frontier)")
    print("Next: the same steps with the paper's settings are in README.md (experiment=vrs_fmnist, certify.n=100000).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
