"""Issue 17 section 2: why the paper's objective collapses, measured on a trained selector (CPU, ~2 minutes).

    python benchmarks/selector_diagnosis.py --ckpt <run>/checkpoints/last.ckpt --data-root <fashion-mnist folder> \\
        --images 200 --out docs/figures/selector_diagnosis.json

On `--images` validation images (every k-th of the data.val_size images held out from training; seed 0 as in
every app) it measures, with the checkpoint's own base classifier, selector and prior:
  1. the per-sample optimum of the paper's objective: for each image, the soft-smoothed CE at each sigma of a fine
     log grid over the selector's range (n_trf = --draws noise draws, common random numbers across sigma) and
     the prior's per-dimension KL there; the sigma minimising (1 - lambda) CE + lambda KL, per image, per lambda:
     its spread says whether the objective itself, optimised perfectly, asks for input-dependent sigma;
  2. how fast each image's CE rises with sigma (the slope d CE / d log sigma between the grid's ends), against
     the KL's slope: where the KL's is steeper, the prior wins for that image;
  3. the selector's own choice per lambda (one pass on x + eta, sigma_h from the checkpoint): mean, IQR, the
     lambda at which the mean crosses the middle of the range (geometric), and the share of images whose raw
     output saturates the squash (|raw| > 4: sigmoid within 2 % of its ends);
  4. the gradient norms reaching the selector's parameters at lambda = 0.5 from the CE term and the KL term
     separately, on one batch.
Writes one JSON (every number, the command, the machine, the wall time) and prints a summary.
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

from vrs.checkpoint import load_checkpoint
from vrs.data.datamodule import ImageDataModule, to_float
from vrs.selection.networks import SelectorOutput
from vrs.selection.priors import build_prior
from vrs.selection.soft import log_mean_softmax, soft_smooth_log, soft_smooth_nll_log
from vrs.smoothing.noise import add_noise, standard_normal

LAMS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def ce_curves(f, x, y, sigmas, draws, seed) -> np.ndarray:
    """(n, S) soft-smoothed CE of each image at each sigma, the same noise z for every sigma (common random
    numbers: the curves' differences are not noise)."""
    gen = torch.Generator().manual_seed(seed)
    out = np.zeros((len(y), len(sigmas)))
    with torch.no_grad():
        for i in range(len(y)):
            z = standard_normal((draws, *x.shape[1:]), generator=gen)
            for j, s in enumerate(sigmas):
                log_g = log_mean_softmax(f(x[i : i + 1] + s * z).unsqueeze(0))  # (1, K): log g_s at x_i
                out[i, j] = float(soft_smooth_nll_log(log_g, y[i : i + 1]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="a VRS checkpoint (vrs-train experiment=vrs_*)")
    p.add_argument("--data-root", default=None, help="folder of the data set (default: the data module's search)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--draws", type=int, default=32, help="noise draws per (image, sigma) for the CE curves")
    p.add_argument("--sigmas", type=int, default=15, help="points of the log grid over the selector's range")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(0)
    loaded = load_checkpoint(args.ckpt, kinds=("vrs",))
    model = loaded.vrs_model("cpu")
    f, sel = model.base.eval(), model.selector.eval()
    meta = loaded.meta
    prior_cfg = meta.get("prior") or {"name": "gaussian", "sigma_t": 1.0}
    prior = build_prior(prior_cfg, sel.posterior)
    data = dict(loaded.data)
    dm = ImageDataModule.from_spec(data, root=args.data_root, val_size=5000, seed=0)
    dm.setup()
    vx, vy = dm.splits["val"]
    step = max(1, len(vy) // args.images)
    idx = torch.arange(0, len(vy), step)[: args.images]
    x, y = to_float(vx[idx]), vy[idx]
    sigma_h = float(model.median.sigma_h)

    # 1-2: the per-sample optimum of the paper's objective
    sigmas = np.exp(np.linspace(math.log(sel.sigma_min), math.log(sel.sigma_max), args.sigmas))
    ce = ce_curves(f, x, y, sigmas, args.draws, seed=1)
    grid_t = torch.tensor(sigmas, dtype=torch.float32)
    kl = prior.kl(SelectorOutput(grid_t, grid_t.log(), None, grid_t.log())).double().numpy()  # point posterior
    optimum = {}
    for lam in LAMS:
        best = sigmas[np.argmin((1 - lam) * ce + lam * kl[None, :], axis=1)]
        q1, q3 = np.percentile(best, [25, 75])
        optimum[f"{lam:g}"] = {"mean": float(best.mean()), "q1": float(q1), "median": float(np.median(best)),
                               "q3": float(q3), "share_at_max": float(np.mean(best >= sigmas[-1] * 0.999)),
                               "share_at_min": float(np.mean(best <= sigmas[0] * 1.001))}
    dlog = math.log(sigmas[-1]) - math.log(sigmas[0])
    ce_slope = (ce[:, -1] - ce[:, 0]) / dlog
    kl_slope = (kl[-1] - kl[0]) / dlog
    slopes = {"ce_slope_per_log_sigma": {"q1": float(np.percentile(ce_slope, 25)), "median": float(np.median(ce_slope)),
                                         "q3": float(np.percentile(ce_slope, 75)), "mean": float(ce_slope.mean())},
              "kl_slope_per_log_sigma": float(kl_slope),
              "share_ce_slope_below_minus_kl_slope": float(np.mean(ce_slope < -kl_slope)),
              "kl_at_sigma_min": float(kl[0]), "kl_at_sigma_max": float(kl[-1])}

    # 3: the selector's own choice
    chosen, saturation = {}, {}
    lo, hi = math.log(sel.sigma_min), math.log(sel.sigma_max)
    with torch.no_grad():
        xn = add_noise(x, sigma_h)
        for lam in LAMS:
            out = sel(xn, lam, sample=False)
            s = out.sigma.numpy()
            raw = torch.logit(((out.mu - lo) / (hi - lo)).clamp(1e-7, 1 - 1e-7)).numpy()
            q1, q3 = np.percentile(s, [25, 75])
            chosen[f"{lam:g}"] = {"mean": float(s.mean()), "q1": float(q1), "q3": float(q3)}
            saturation[f"{lam:g}"] = float(np.mean(np.abs(raw) > 4))
    middle = math.sqrt(sel.sigma_min * sel.sigma_max)
    means = [chosen[f"{lam:g}"]["mean"] for lam in LAMS]
    crossing = next((LAMS[i] for i, m in enumerate(means) if m >= middle), None)

    # 4: gradient norms at lambda = 0.5, CE and KL separately
    sel.train()
    b = min(128, len(y))
    out = sel(add_noise(x[:b], sigma_h), 0.5, sample=True)
    log_g = soft_smooth_log(f, x[:b], out.sigma, 4)  # the training loss's soft smoothing, n_trf = 4
    ce_term = soft_smooth_nll_log(log_g, y[:b]).mean() * 0.5
    kl_term = prior.kl(out).mean() * 0.5
    norms = {}
    for name, term in (("ce", ce_term), ("kl", kl_term)):
        grads = torch.autograd.grad(term, [q for q in sel.parameters() if q.requires_grad], retain_graph=True,
                                    allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))
    sel.eval()

    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}",
              "ckpt": str(args.ckpt), "objective": meta.get("objective"), "prior": prior_cfg,
              "images": len(y), "draws": args.draws, "sigmas": sigmas.tolist(), "sigma_h": sigma_h,
              "per_sample_optimum": optimum, "slopes": slopes, "selector_choice": chosen,
              "lambda_mean_crosses_middle": crossing, "middle": middle, "squash_saturated_share": saturation,
              "grad_norm_lam0.5": norms, "wall_s": round(time.time() - t0, 1)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("per_sample_optimum", "slopes", "selector_choice",
                                             "lambda_mean_crosses_middle", "squash_saturated_share",
                                             "grad_norm_lam0.5", "wall_s")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
