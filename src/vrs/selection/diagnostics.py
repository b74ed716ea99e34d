"""Selector diagnostics: which noise level does h pick, and how does lambda move it?

`collect` evaluates the deployed sigma (`deployed_sigma`: median over n_h noisy copies, snapped to the
grid) on a batch of images at several lambdas, together with the base classifier's clean confidence (max
softmax probability) and margin (p_y - max_{c != y} p_c with labels, else p_top1 - p_top2). `write_diagnostics`
logs, per lambda, the spread of the chosen sigma (`vrs.analysis.sigma_summary`: std, IQR, grid steps the middle
half of the images spans, histogram, mean per class, rank correlation with the margin) to every logger as
`diagnostics/sigma_lam<l>/<name>` and to sigma_summary.json, and draws three figures (matplotlib, Agg backend) as
PNG files, logged as W&B images when a WandbLogger is among the loggers:

* sigma_hist.png: histogram of the chosen sigma for a few lambdas;
* sigma_vs_lambda.png: mean (and 10-90% band) of the chosen sigma against lambda;
* sigma_vs_confidence.png: chosen sigma against the base classifier's clean confidence, per lambda.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vrs.analysis.sigma_spread import classifier_margin, sigma_summary
from vrs.selection.median import MedianSmoothing, deployed_sigma
from vrs.utils.io import atomic_path, save_figure, write_json_atomic
from vrs.utils import metric_names as names


@torch.no_grad()
def collect(base, selector, x: torch.Tensor, lams, sigma_h: float, n_h: int = 16,
            grid: list[float] | None = None, batch_size: int = 256, labels: torch.Tensor | None = None) -> dict:
    """{"lams": [...], "sigma": (L, N), "confidence": (N,), "margin": (N,), "labels": (N,) or None, "grid"} for
    images x (N, C, H, W) in [0,1] (labels: their classes, for the margin p_y - max_{c != y} p_c)."""
    was_training = selector.training
    selector.eval()
    sigmas = np.zeros((len(lams), len(x)))
    conf, margin = np.zeros(len(x)), np.zeros(len(x))
    y = None if labels is None else labels.cpu().numpy()
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        b = xb.shape[0]
        probs = torch.softmax(base(xb).float(), dim=-1).cpu().numpy()
        conf[start:start + b] = probs.max(axis=-1)
        margin[start:start + b] = classifier_margin(probs, None if y is None else y[start:start + b])
        # the same noisy copies at every lambda (one seed per batch), so the curves over lambda are smooth
        seed = int(torch.randint(0, 2**62, (1,)))
        median = MedianSmoothing(sigma_h=sigma_h, n_h=n_h, grid=grid, batch_size=b * n_h)
        for i, lam in enumerate(lams):
            gen = torch.Generator(device=xb.device)
            gen.manual_seed(seed)
            sigmas[i, start:start + b] = deployed_sigma(selector, xb, float(lam), median, generator=gen).cpu().numpy()
    selector.train(was_training)
    return {"lams": [float(v) for v in lams], "sigma": sigmas, "confidence": conf, "margin": margin, "labels": y,
            "grid": grid}


def sigma_summaries(data: dict) -> dict[str, float]:
    """Per lambda, `sigma_summary` of the chosen sigma as flat scalars `diagnostics/sigma_lam<l>/<name>`: the
    spread that issue 17 asks of a selector (does it pick different sigmas for different images?). Without a grid
    (continuous sigma) the grid steps are counted on the two ends of the chosen sigmas' range."""
    sig = data["sigma"]
    grid = data.get("grid") or sorted({float(sig.min()), float(sig.max())})
    out: dict[str, float] = {}
    for i, lam in enumerate(data["lams"]):
        out.update(sigma_summary(sig[i], grid, labels=data.get("labels"), margin=data.get("margin"),
                                 prefix=names.sigma_spread_prefix(lam)))
    return out


def _label(fig, ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()


def figures(data: dict) -> dict:
    """name -> matplotlib Figure."""
    import matplotlib  # deferred: heavy; only the end of training plots

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # deferred: heavy; only the end of training plots

    lams, sig, conf = np.asarray(data["lams"]), data["sigma"], data["confidence"]
    show = sorted({0, len(lams) // 2, len(lams) - 1})
    out = {}

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.geomspace(max(sig.min(), 1e-3) * 0.95, sig.max() * 1.05, 30) if sig.max() > sig.min() else 10
    for i in show:
        ax.hist(sig[i], bins=bins, alpha=0.5, label=f"lambda={lams[i]:g}")
    ax.set_xscale("log")
    _label(fig, ax, "chosen sigma", "images", "Chosen noise level")
    out["sigma_hist"] = fig

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(lams, sig.mean(axis=1), "o-", label="mean")
    ax.fill_between(lams, np.quantile(sig, 0.1, axis=1), np.quantile(sig, 0.9, axis=1), alpha=0.25,
                    label="10-90%")
    _label(fig, ax, "lambda", "chosen sigma", "Noise level against the trade-off knob")
    out["sigma_vs_lambda"] = fig

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i in show:
        ax.scatter(conf, sig[i], s=6, alpha=0.5, label=f"lambda={lams[i]:g}")
    _label(fig, ax, "base classifier clean confidence", "chosen sigma", "Noise level against confidence")
    out["sigma_vs_confidence"] = fig
    return out


def write_diagnostics(data: dict, out_dir: str | Path, loggers=()) -> list[Path]:
    """Save the figures as PNG files under out_dir (plus the raw numbers as an .npz and the per-lambda sigma
    spread as sigma_summary.json); log the spread to every logger and the figures to W&B when a WandbLogger is
    present. Returns the PNG paths."""
    import matplotlib.pyplot as plt  # deferred: heavy; only the end of training plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "selector_diagnostics.npz") as tmp:
        np.savez(tmp, lams=np.asarray(data["lams"]), sigma=data["sigma"], confidence=data["confidence"])
    scalars = sigma_summaries(data)
    write_json_atomic(out_dir / "sigma_summary.json", scalars)
    for lg in loggers or ():
        lg.log_metrics({k: v for k, v in scalars.items() if np.isfinite(v)})
    paths = []
    for name, fig in figures(data).items():
        path = out_dir / f"{name}.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        paths.append(path)
    _log_wandb(paths, loggers)
    return paths


def _log_wandb(paths: list[Path], loggers) -> None:
    try:
        from pytorch_lightning.loggers import WandbLogger  # deferred: only a run with loggers needs it
    except ImportError:  # pragma: no cover - Lightning always has it
        return
    for lg in loggers or ():
        if isinstance(lg, WandbLogger):
            lg.log_image(key=names.SELECTOR_FIGURES, images=[str(p) for p in paths],
                         caption=[p.stem for p in paths])
