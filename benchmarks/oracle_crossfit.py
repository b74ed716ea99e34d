"""How much of the oracle's robust headroom is luck? The fixed-sigma attacks of a vrs_frontier run, repeated with
other seeds, and the robust oracle chosen on one run and scored on the other (issue 17, instruments).

The oracle of vrs-report picks, per image, the grid sigma under which that image survived the attack, and scores
it on the same outcomes. Each outcome is partly chance (the attack's EOT noise and PREDICT's votes), so a maximum
over seven sigmas also selects luck: seven coin flips with p = 0.5 give an "oracle" of 0.99 although no sigma is
better than another. Scored on an independent repeat of the same attacks (other seed, same images, same base
classifier) the cross-fitted oracle keeps only the part a selector that knew the label could use
(`vrs.analysis.oracle.cross_fitted_robust_oracle`). If that part lies on the fixed-sigma frontier, no selector of
sigma can beat fixed sigma on this base classifier under this attack, whatever it sees.

    python benchmarks/oracle_crossfit.py --out <vrs_frontier --out folder> --size gpu [--data-root DIR] [--seeds 1]

It runs `<split>/atk_fixed_seed<k>` (the run's own `<split>/atk_fixed` command with seed=k; resumable, skipped
when done) and writes `<split>/oracle_crossfit.json` and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vrs_frontier as vf

from vrs.analysis.frontier import frontier_gap
from vrs.analysis.oracle import cross_fitted_robust_oracle, outcome_agreement, robust_oracle


def repeat_step(step: vf.Step, seed: int) -> vf.Step:
    """The same attack step with another seed, into its own sweep folder."""
    folder = step.folder.with_name(f"{step.folder.name}_seed{seed}")
    args = [f"seed={seed}" if a.startswith("seed=") else
            f"hydra.sweep.dir={folder}" if a.startswith("hydra.sweep.dir=") else a for a in step.args]
    return vf.Step(f"{step.name}_seed{seed}", step.group, step.app, args, folder, step.estimate_s)


def per_sigma(folder: Path) -> dict[float, dict]:
    return {float(cfg["defense"]["sigma"]): out for cfg, out in vf.read_attack_runs(folder)}


def stack(runs: dict[float, dict], sigmas: list[float], eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = [runs[s][eps][0] for s in sigmas]
    if any(not np.array_equal(i, idx[0]) for i in idx):
        raise SystemExit(f"the fixed-sigma runs do not hold the same images at eps {eps}")
    return idx[0], np.stack([runs[s][eps][1] for s in sigmas]), np.stack([runs[s][eps][2] for s in sigmas])


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over the same images and its paired standard error."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(np.std(d, ddof=1) / np.sqrt(d.size))
    return {"diff": float(d.mean()), "se": se, "z": float(d.mean() / se) if se > 0 else float("nan")}


def against_each_sigma(sigmas: list[float], oracle, clean: np.ndarray, robust: np.ndarray) -> dict:
    """The oracle's clean and robust outcomes against each fixed sigma's, paired over the images (the frontier
    gap cannot be read when the oracle's clean accuracy lies above every fixed sigma's: then this says whether it
    dominates them)."""
    return {f"{s:g}": {"clean": paired(oracle.clean, clean[k]), "robust": paired(oracle.robust, robust[k])}
            for k, s in enumerate(sigmas)}


def analyse(base: Path, repeats: list[Path]) -> dict:
    runs = [per_sigma(base)] + [per_sigma(r) for r in repeats]
    sigmas = sorted(runs[0])
    if any(sorted(r) != sigmas for r in runs):
        raise SystemExit(f"the runs hold different sigmas: {[sorted(r) for r in runs]}")
    out = {"sigmas": sigmas, "runs": [str(base)] + [str(r) for r in repeats], "eps": {}}
    for eps in sorted(runs[0][sigmas[0]]):
        tabs = [stack(r, sigmas, eps) for r in runs]
        if any(not np.array_equal(t[0], tabs[0][0]) for t in tabs):
            raise SystemExit(f"the runs hold different images at eps {eps}")
        n = tabs[0][0].size
        rows = {"n_images": int(n), "fixed_robust": [[float(x) for x in t[2].mean(1)] for t in tabs],
                "fixed_clean": [[float(x) for x in t[1].mean(1)] for t in tabs], "pairs": []}
        for a in range(len(tabs)):
            for b in range(len(tabs)):
                if a == b:
                    continue
                _, ca, ra = tabs[a]
                _, cb, rb = tabs[b]
                in_sample = robust_oracle(sigmas, rb, cb)
                cross = cross_fitted_robust_oracle(sigmas, ra, ca, rb, cb)
                gaps = {name: frontier_gap(sigmas, cb, rb, o.clean, o.robust)
                        for name, o in (("in_sample", in_sample), ("cross_fitted", cross))}
                rows["pairs"].append({
                    "pick_run": a, "score_run": b,
                    "agreement_robust": [float(x) for x in outcome_agreement(ra, rb)],
                    "agreement_clean": [float(x) for x in outcome_agreement(ca, cb)],
                    **{name: {"robust": float(o.robust.mean()), "clean": float(o.clean.mean()),
                              "robust_se": float(o.robust.std(ddof=1) / np.sqrt(n)),
                              "gap": gaps[name].gap, "gap_se": gaps[name].se, "z": gaps[name].z,
                              "verdict": gaps[name].verdict,
                              "against_each_sigma": against_each_sigma(sigmas, o, cb, rb)}
                       for name, o in (("in_sample", in_sample), ("cross_fitted", cross))}})
        out["eps"][f"{eps:g}"] = rows
    return out


def best_robust_sigma(rows: dict, score_run: int, sigmas: list[float]) -> str:
    rob = rows["fixed_robust"][score_run]
    return f"{sigmas[int(np.argmax(rob))]:g}"


def table(res: dict) -> str:
    sig = res["sigmas"]
    lines = ["| eps | pick run -> score run | in-sample oracle: clean / robust (gap to frontier) | "
             "cross-fitted oracle: clean / robust (gap to frontier) | cross-fitted minus the most robust fixed sigma: "
             "clean, robust (paired) | robust agreement between runs, per sigma |",
             "|---|---|---|---|---|---|"]
    for eps, rows in res["eps"].items():
        for p in rows["pairs"]:
            i, c = p["in_sample"], p["cross_fitted"]
            agree = " / ".join(f"{s:g}: {x:.2f}" for s, x in zip(sig, p["agreement_robust"]))
            best = best_robust_sigma(rows, p["score_run"], sig)
            vs = c["against_each_sigma"][best]
            versus = (f"sigma {best}: {vs['clean']['diff']:+.3f} ({vs['clean']['z']:+.1f} SE), "
                      f"{vs['robust']['diff']:+.3f} ({vs['robust']['z']:+.1f} SE)")
            lines.append(f"| {eps} | {p['pick_run']} -> {p['score_run']} | {i['clean']:.3f} / {i['robust']:.3f} "
                         f"± {i['robust_se']:.3f} ({i['verdict']}) | {c['clean']:.3f} / {c['robust']:.3f} ± "
                         f"{c['robust_se']:.3f} ({c['verdict']}) | {versus} | {agree} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the vrs_frontier run folder (its --out)")
    p.add_argument("--size", choices=sorted(vf.SIZES), default="cpu", help="the vrs_frontier run's --size")
    p.add_argument("--data-root", help="as for vrs_frontier (GPU: .device-data/fashion-mnist)")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--seeds", default="1", help="comma list of repeat seeds (the run itself used seed 0)")
    p.add_argument("--analyse-only", action="store_true", help="run no attack; analyse the repeats there are")
    args = p.parse_args(argv)
    out = args.out.resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    if vf.SEED in seeds:
        p.error(f"--seeds must differ from the run's own seed {vf.SEED}")
    steps = {s.name: s for s in vf.build_steps(vf.SIZES[args.size], out, args.data_root, [args.split])}
    base = steps[f"{args.split}/atk_fixed"]
    if not (base.folder / vf.DONE).is_file():
        p.error(f"{base.folder} is not a finished vrs_frontier step: run benchmarks/vrs_frontier.py first")
    repeats = [repeat_step(base, s) for s in seeds]
    for step in repeats:
        if args.analyse_only or (step.folder / vf.DONE).is_file():
            continue
        print(f"== {step.name}", flush=True)
        t0 = time.time()
        rc, timed_out = vf.run_app(step, None, out / "logs" / (step.name.replace("/", "_") + ".log"))
        if rc or timed_out:
            print(f"oracle_crossfit: {step.name} failed (exit {rc}); log in {out / 'logs'}", file=sys.stderr)
            return 1
        (step.folder / vf.DONE).write_text(json.dumps({"wall_s": round(time.time() - t0, 1)}) + "\n")
        print(f"== {step.name}: done in {time.time() - t0:.0f} s", flush=True)
    done = [s.folder for s in repeats if (s.folder / vf.DONE).is_file()]
    if not done:
        p.error("no finished repeat to analyse")
    res = analyse(base.folder, done)
    path = out / args.split / "oracle_crossfit.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"oracle_crossfit: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
