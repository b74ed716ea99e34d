"""Issue 17: how well can an image's best grid sigma (the `oracle_labels` label) be predicted from what a selector
sees? A CPU measurement (~5 minutes on 2 cores) that tells whether `selector.sees_base` has something to add.

    python benchmarks/label_predictability.py --ckpt <multi-sigma base classifier .ckpt> \\
        --data-root /usr/share/datasets/fashion-mnist --images 3000 --out docs/data/label_predictability.json

On --images training images (the first of the seeded training split, seed 0 as in every app) it computes the
oracle labels of vrs.selection.oracle_labels (--votes votes per grid sigma, radius cap 1), takes each image's best
grid sigma at --lam, and fits multinomial logistic regressions (scikit-learn, 5-fold cross-validation) from:
  pixels      the image plus the selector's input noise (x + eta, eta ~ N(0, sigma_h^2 I)), what `selector=cnn` sees
              (a linear model: a lower bound on what a CNN extracts from it);
  base        the base classifier's class probabilities at --copies draws of x + eta, averaged (what
              `selector.sees_base=true` adds, and roughly what median smoothing over copies averages);
  both        the two together;
  grid        the base classifier's mean class probabilities at each grid sigma around the selector's input:
              --copies draws of x' + sqrt(sigma_i^2 - sigma_h^2) z (total noise sigma_i around x; x' itself where
              sigma_i <= sigma_h), concatenated over the grid (what a selector that looks at the base classifier's
              votes at every level would see);
  clean       the image without noise and the base classifier's probabilities at it: more than any defended
              selector may see (its input is noised so that it can be certified), an upper bound on what x tells.
--probe boosting replaces the logistic regressions with gradient-boosted trees: a non-linear probe.
It reports accuracy and balanced accuracy (the mean of per-class recalls: the majority sigma alone scores 1/G)
against the majority baseline, with their standard errors over the folds. --reliability also recomputes the labels
from fresh votes (another seed) and reports how often an image's best sigma agrees between the two, and Cohen's
kappa: the ceiling any predictor of these labels runs into.
--sigma-h takes a comma list: the pixels / base / both / grid probes are repeated at each selector noise level
(results under "sigma_h=<value>"; a smaller sigma_h shows the selector more of x, at the price of a smaller C1
certificate cap). --device cuda runs the forward passes on a GPU. --views picks the probes (default all; the
boosted trees on the 784 pixels are the slow part on a CPU, so `--views base,grid` answers the grid question alone).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vrs.checkpoint import load_base_classifier
from vrs.data.datamodule import ImageDataModule, to_float
from vrs.selection.oracle_labels import OracleTable, grid_votes, label_score

GRID = (0.12, 0.25, 0.5, 1.0)
VIEWS = ("clean", "pixels", "base", "both", "grid")


def make_probe(kind: str, seed: int):
    """linear: standardised multinomial logistic regression; boosting: gradient-boosted trees (non-linear, classes
    weighted by 1 / share, as the `oracle_labels` objective weights them)."""
    if kind == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, class_weight="balanced",
                                          random_state=seed)


def cross_validated(features: np.ndarray, labels: np.ndarray, folds: int, seed: int, probe: str = "linear") -> dict:
    """Accuracy and balanced accuracy of a probe (`make_probe`) over stratified folds."""
    acc, bal = [], []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        model = make_probe(probe, seed).fit(features[train], labels[train])
        pred = model.predict(features[test])
        acc.append(float(np.mean(pred == labels[test])))
        bal.append(float(balanced_accuracy_score(labels[test], pred)))
    se = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v)))  # noqa: E731
    return {"accuracy": float(np.mean(acc)), "accuracy_se": se(acc), "balanced_accuracy": float(np.mean(bal)),
            "balanced_accuracy_se": se(bal)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="the multi-sigma base classifier (stage 1 of VRS)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--votes", type=int, default=64)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--sigma-h", default="0.5", help="the selector's input noise; a comma list repeats the probes")
    p.add_argument("--device", default="cpu", help="where the forward passes run (cpu, cuda)")
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--reliability", action="store_true", help="also label from a second set of votes (seed 1)")
    p.add_argument("--probe", choices=("linear", "boosting"), default="linear",
                   help="linear: logistic regression (default); boosting: gradient-boosted trees, non-linear")
    p.add_argument("--views", default=",".join(VIEWS), help="comma subset of " + ",".join(VIEWS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    views_wanted = args.views.split(",")
    if not views_wanted or set(views_wanted) - set(VIEWS):
        p.error(f"--views={args.views!r}: a comma subset of {','.join(VIEWS)}")
    t0 = time.time()
    torch.manual_seed(0)
    sigma_hs = [float(v) for v in str(args.sigma_h).split(",")]
    f, spec = load_base_classifier(args.ckpt)
    f = f.eval().to(args.device)
    d = spec["data"]
    dm = ImageDataModule.from_spec(d, root=args.data_root, val_size=5000, seed=0)
    dm.setup()
    x, y = dm.splits["train"]
    x, y = to_float(x[: args.images]).to(args.device), y[: args.images].to(args.device)
    y_device = y  # the votes' labels (y itself moves to the host for the probes)
    def best_sigma(seed: int) -> np.ndarray:
        count_y, top_is_y = grid_votes(f, x, y_device, GRID, args.votes, seed=seed, batch_size=4096)
        count_y, top_is_y = count_y.cpu(), top_is_y.cpu()  # the table's arithmetic is on the host (--device cuda)
        table = OracleTable.from_votes(count_y, top_is_y, GRID, args.votes, 1.0)
        score = label_score(table.p.cpu(), table.radius.cpu(), torch.full((len(y),), args.lam, dtype=torch.float64),
                            1.0)
        return score.argmax(1).numpy()

    labels = best_sigma(0)
    y = y.cpu()
    shares = np.bincount(labels, minlength=len(GRID)) / len(labels)

    gen = torch.Generator(device=args.device).manual_seed(1)
    randn = lambda: torch.randn(x.shape, generator=gen, device=args.device)  # noqa: E731

    def mean_probs(center: torch.Tensor, sigma: float) -> torch.Tensor:
        """softmax(f) averaged over --copies draws of center + sigma z, batched."""
        out = torch.zeros(len(y), d["num_classes"], device=args.device)
        for _ in range(args.copies):
            noisy = center + sigma * randn()
            out += torch.cat([torch.softmax(f(b), 1) for b in noisy.split(4096)])
        return out / args.copies

    with torch.no_grad():
        clean_probs = torch.softmax(f(x), 1).cpu()
        views = {}
        for sigma_h in sigma_hs:
            noisy = x + sigma_h * randn()
            base = mean_probs(x, sigma_h)  # copies of x + eta: the selector's input, redrawn
            grid = torch.cat([mean_probs(noisy, math.sqrt(max(s * s - sigma_h * sigma_h, 0.0))) for s in GRID], 1)
            views[sigma_h] = (noisy.flatten(1).cpu().numpy(), base.cpu().numpy(), grid.cpu().numpy())
    reliability = None
    if args.reliability:
        again = best_sigma(1)
        agree = float(np.mean(again == labels))
        chance = float(sum(np.mean(labels == g) * np.mean(again == g) for g in range(len(GRID))))
        reliability = {"agreement": agree, "agreement_se": float(np.sqrt(agree * (1 - agree) / len(labels))),
                       "cohen_kappa": (agree - chance) / (1 - chance)}
    clean = np.concatenate([x.flatten(1).cpu().numpy(), clean_probs.numpy()], 1)
    cv = lambda feats: cross_validated(feats, labels, args.folds, 0, args.probe)  # noqa: E731
    results = {"majority": {"accuracy": float(shares.max()), "balanced_accuracy": 1.0 / len(GRID)}}
    if "clean" in views_wanted:
        results["clean"] = cv(clean)
    for sigma_h, (pixels, base, grid) in views.items():
        features = {"pixels": pixels, "base": base, "both": np.concatenate([pixels, base], 1), "grid": grid}
        probes = {name: cv(v) for name, v in features.items() if name in views_wanted}
        if len(sigma_hs) == 1:
            results.update(probes)
        else:
            results[f"sigma_h={sigma_h:g}"] = probes
    out = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "machine": f"{platform.node()} {platform.machine()}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads",
           "ckpt": str(args.ckpt), "images": len(y), "votes": args.votes, "lam": args.lam,
           "sigma_h": sigma_hs if len(sigma_hs) > 1 else sigma_hs[0],
           "copies": args.copies, "probe": args.probe, "grid": GRID, "best_sigma_shares": shares.tolist(),
           "results": results, "reliability": reliability,
           "wall_s": round(time.time() - t0, 1)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
