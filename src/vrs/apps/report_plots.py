"""vrs-report, the plots: certified accuracy, ACR, robust accuracy, chosen sigma, training accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vrs.apps.report_runs import Row, fmt_num
from vrs.smoothing import core
from vrs.utils.io import save_figure


# ---- plots ---------------------------------------------------------------------------------------------
def _figure(nplots: int, width: float = 5.5, height: float = 3.8):
    import matplotlib  # deferred: heavy; vrs-report --help and config errors stay fast

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, nplots, figsize=(width * nplots, height), squeeze=False)
    return plt, fig, list(axes[0])


def save_plot(plt, fig, path: Path) -> None:
    save_figure(fig, path, format="png", dpi=110, bbox_inches="tight")  # "tight": legends outside the axes
    plt.close(fig)


def matplotlib_color(palette: str, i: int) -> tuple:
    import matplotlib  # deferred: heavy; vrs-report --help and config errors stay fast

    cmap = matplotlib.colormaps[palette]
    return cmap(i % cmap.N)


def _style(row: Row) -> dict:
    return {"ls": "-" if row.family in ("vrs", "search") else "--", "color": row.color}


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_certified(rows: list[Row]) -> dict[str, Any] | None:
    curves = [r for r in rows if r.radii is not None and len(r.radii)]
    if not curves:
        return None
    datasets = sorted({str(r.values["data"]) for r in curves})
    plt, fig, axes = _figure(len(datasets))
    for ax, data in zip(axes, datasets):
        mine = [r for r in curves if r.values["data"] == data]
        top = max(max(float(r.radii.max()) for r in mine) * 1.05, 0.1)
        grid = np.linspace(0.0, top, 300)
        for r in mine:
            ax.plot(grid, core.certified_accuracy(r.radii, r.correct, grid), drawstyle="steps-post", label=r.label,
                    **_style(r))
        ax.set(xlabel="L2 radius", ylabel="certified accuracy", ylim=(0, 1), xlim=(0, top),
               title=f"{data}: VRS (solid) vs fixed sigma (dashed)")
        ax.grid(alpha=0.3)
        _legend(ax)
    return {"figure": (plt, fig), "title": "Certified accuracy against radius"}


def plot_acr(rows: list[Row]) -> dict[str, Any] | None:
    bars = [r for r in rows if r.values.get("ACR") is not None]
    if not bars:
        return None
    plt, fig, (ax,) = _figure(1, width=6, height=0.35 * len(bars) + 1.2)
    ax.barh([r.label for r in bars], [r.values["ACR"] for r in bars],
            color=[r.color for r in bars])
    ax.invert_yaxis()
    ax.set(xlabel="average certified radius (ACR)")
    ax.grid(alpha=0.3, axis="x")
    return {"figure": (plt, fig), "title": "ACR"}


def plot_robust(rows: list[Row]) -> dict[str, Any] | None:
    attacks = sorted({a for r in rows for a in r.robust})
    if not attacks:
        return None
    plt, fig, axes = _figure(len(attacks))
    for ax, a in zip(axes, attacks):
        for r in (r for r in rows if a in r.robust):
            pts = sorted(r.robust[a])
            ax.plot([e for e, _ in pts], [acc for _, acc in pts], "o", label=r.label, **_style(r))
        ax.set(xlabel="eps (0: clean)", ylabel="robust accuracy (PREDICT)", ylim=(-0.02, 1.02), title=a)
        ax.grid(alpha=0.3)
        _legend(ax)
    return {"figure": (plt, fig), "title": "Robust accuracy against eps"}


def plot_sigma(rows: list[Row]) -> dict[str, Any] | None:
    chosen = [r for r in rows if r.family == "vrs" and r.sigmas is not None and len(r.sigmas)]
    if not chosen:
        return None
    plt, fig, (ax,) = _figure(1, width=6.5)
    levels = sorted({float(s) for r in chosen for s in r.sigmas})
    if len(levels) <= 12:  # snapped to a grid: bars per level, side by side
        width = 0.8 / len(chosen)
        for i, r in enumerate(chosen):
            counts = [float(np.mean(np.isclose(r.sigmas, s))) for s in levels]
            ax.bar(np.arange(len(levels)) + i * width - 0.4 + width / 2, counts, width, label=r.label, color=r.color)
        ax.set_xticks(range(len(levels)), [fmt_num(s) for s in levels])
    else:
        for r in chosen:
            ax.hist(r.sigmas, bins=20, histtype="step", weights=np.full(len(r.sigmas), 1 / len(r.sigmas)),
                    label=r.label, color=r.color)
    ax.set(xlabel="sigma chosen by the VRS selector", ylabel="fraction of images")
    ax.grid(alpha=0.3, axis="y")
    _legend(ax)
    return {"figure": (plt, fig), "title": "Chosen sigma (VRS)"}


def plot_train(rows: list[Row]) -> dict[str, Any] | None:
    trained = [r for r in rows if r.kind == "train"]
    if not trained:
        return None
    plt, fig, (ax,) = _figure(1, width=6.5, height=0.45 * len(trained) + 1.4)
    y = np.arange(len(trained))
    for off, key, what in ((-0.2, "clean_acc", "clean"), (0.2, "noisy_acc", "under training noise")):
        vals = [r.values.get(key) for r in trained]
        ax.barh(y + off, [v if v is not None else 0 for v in vals], 0.4, label=what)
    ax.set_yticks(y, [r.label for r in trained])
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy (val when test was not run)", xlim=(0, 1))
    ax.grid(alpha=0.3, axis="x")
    _legend(ax)
    return {"figure": (plt, fig), "title": "Training runs: accuracy"}


PLOTS = {"certified_accuracy.png": plot_certified, "acr.png": plot_acr, "robust_accuracy.png": plot_robust,
         "sigma_histogram.png": plot_sigma, "train_accuracy.png": plot_train}
