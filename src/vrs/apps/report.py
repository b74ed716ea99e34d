"""vrs-report: one comparison table (report.md + report.csv) and plots from run and multirun directories.

    vrs-report report.inputs=outputs/certify/multiruns/<ts>                  # a sweep
    vrs-report report.inputs=[outputs/train/runs/<ts>,outputs/certify,outputs/attack] report.out_dir=results
    vrs-report report.inputs=[...] report.radii=[0.5,1.0,2.0]               # other radii in the table

Every directory under the inputs is looked at; these are results:
  - vrs-certify:  certify.meta.json + certify.tsv (Cohen's or VRS rows; summary.json when it finished),
  - vrs-attack:   settings.json + summary.json + attack.csv,
  - vrs-train:    .hydra/config.yaml of a training run + csv/metrics.csv (and base/csv/metrics.csv: the
                  base classifier stage of a VRS run).
A run's config comes from its .hydra/config.yaml and .hydra/overrides.yaml (the overrides column shows
what a sweep varied). One row per config: the certification of a defended model (a checkpoint with a
fixed sigma, or VRS at a lambda) and attacks on the same defended model share a row; training runs get
their own rows. Certified accuracy, ACR and sigma statistics are recomputed from the TSV rows, so every
run is measured on the same radii. Writes report.md, report.csv and PNGs (certified accuracy, ACR,
robust accuracy, chosen sigma, training accuracy: each only when there is something to plot) in
report.out_dir; each file atomically, and only after every input was read: a bad input leaves an earlier
report in place. report.meta.json records the inputs: a later report of other inputs into the same folder is
refused (vrs.utils.output_folders), one of the same inputs rewrites it (a refresh).

Also VRS against fixed sigma on the same base classifier (issue 17, vrs.apps.report_frontier): report.md's
"Frontier", "Sigma diagnostics" and "Oracle headroom (diagnostic)" sections, frontier.csv,
sigma_diagnostics.csv, frontier_robust.png and frontier_certified.png.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from vrs.apps import CONFIG_DIR
from vrs.utils.output_folders import REPORT_META, report_inputs, run_or_put_back
from vrs.apps.report_frontier import FRONTIER_PLOTS, build_frontier, frontier_csv, plot_frontier, sigma_csv
from vrs.apps.report_frontier import markdown as frontier_markdown
from vrs.apps.report_plots import PLOTS, matplotlib_color, save_plot
from vrs.apps.report_runs import collect
from vrs.apps.report_table import (LEGEND, attack_names, cell, merge, name_rows, order_key, settings_lines, table,
                                   to_csv, to_markdown)
from vrs.config import to_typed
from vrs.config.report import ReportConfig
from vrs.apps.before_run import validate_app_config
from vrs.preflight import parse_inputs
from vrs.errors import VRSError, check, hydra_errors_exit, user_errors_exit
from vrs.smoothing.core import radius_grid
from vrs.utils.io import atomic_write, write_json_atomic

log = logging.getLogger(__name__)


# ---- the app -------------------------------------------------------------------------------------------
@dataclass
class Report:
    out_dir: Path
    columns: list[str]
    records: list[dict[str, Any]]
    files: list[Path]
    skipped: list[str]
    markdown: str
    frontier: Any = None            # vrs.apps.report_frontier.Frontier


def build_report(cfg: DictConfig) -> Report:
    """Read every run under report.inputs, then write the table and the plots to report.out_dir."""
    r: ReportConfig = to_typed(cfg.report, ReportConfig)  # checked (vrs.config.report)
    inputs = parse_inputs(r.inputs)
    radii = radius_grid(r.radii, "report.radii")
    out = Path(r.out_dir)
    check(not out.exists() or out.is_dir(), "report.out_dir", str(out), "a directory (this is a file)")

    found = collect(inputs, [float(x) for x in radii])
    if not found.rows:
        why = f" ({len(found.skipped)} skipped: {found.skipped[0]})" if found.skipped else ""
        raise VRSError(f"report.inputs={[str(p) for p in inputs]} holds no runs: no certify.tsv + certify.meta.json, "
                       f"attack.csv + summary.json or training run (.hydra/config.yaml + csv/metrics.csv) under "
                       f"them{why}")
    attack_names(found)
    frontier = build_frontier(found.rows, [float(x) for x in radii])  # on the runs as read, before merging
    rows = merge(found.rows)
    name_rows(rows, set(r.hide_overrides))
    rows.sort(key=order_key)
    palette = "tab10" if len(rows) <= 10 else "tab20"
    for i, row in enumerate(rows):  # one colour per config, the same in every plot
        row.color = matplotlib_color(palette, i)
    cols, records = table(rows, [float(x) for x in radii])

    # Everything is computed; only now is anything written (the sidecar first, then the plots, the table last).
    # report.meta.json: what the folder is the report of (vrs.utils.output_folders.check_report_folder refuses a report
    # of other inputs into it). First: after a crash mid-way the folder belongs to the report that was being
    # written, which the same command completes.
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / REPORT_META, {"inputs": report_inputs(inputs), "radii": [float(x) for x in radii],
                                          "title": r.title})
    files: list[Path] = []
    figures = []
    for name, make in PLOTS.items():
        made = make(rows)
        if made is not None:
            plt, fig = made["figure"]
            save_plot(plt, fig, out / name)
            files.append(out / name)
            figures.append((made["title"], name))
    frontier_figures = []
    for name, (kinds, title) in FRONTIER_PLOTS.items():
        made = plot_frontier(frontier, kinds)
        if made is not None:
            save_plot(*made, out / name)
            files.append(out / name)
            frontier_figures.append((title, name))
    title = r.title or "VRS report"
    md = [f"# {title}", "",
          f"Made by `vrs-report` on {datetime.now().strftime('%Y-%m-%d %H:%M')} from "
          + ", ".join(f"`{p}`" for p in inputs) + f": {len(records)} rows from "
          + f"{sum(len(x.dirs) for x in rows)} run directories.", ""]
    settings = settings_lines(rows, found)
    if settings:
        md += ["Settings:", ""] + [f"- {s}" for s in settings] + [""]
    md += [to_markdown(cols, records), "Columns:", ""]
    prefixes = {c.split("@")[0].split("[")[0] for c in cols}  # cert_acc@r=R, robust_acc[A]@eps=E: one entry each
    md += [f"- `{c}`: {LEGEND[c]}" for c in LEGEND if c.split("@")[0].split("[")[0] in prefixes]
    md += [""] + [f"## {t}\n\n![{t}]({f})\n" for t, f in figures]
    md += frontier_markdown(frontier) + [f"### {t}\n\n![{t}]({f})\n" for t, f in frontier_figures]
    md += ["## Runs", ""] + [f"{i}. {rec['config']}: " + ", ".join(f"`{d}`" for d in rec["run_dirs"].split(" "))
                             for i, rec in enumerate(records, 1)]
    if found.skipped:
        md += ["", "## Skipped", ""] + [f"- {s}" for s in found.skipped]
    text = "\n".join(md) + "\n"
    atomic_write(out / "frontier.csv", frontier_csv(frontier))
    atomic_write(out / "sigma_diagnostics.csv", sigma_csv(frontier))
    atomic_write(out / "report.csv", to_csv(cols, records))
    atomic_write(out / "report.md", text)
    files = [out / "report.md", out / "report.csv", out / "frontier.csv", out / "sigma_diagnostics.csv"] + files
    return Report(out, cols, records, files, found.skipped, text, frontier)


def print_summary(rep: Report) -> None:
    """The table's headline columns on the terminal (report.md and report.csv have all of them)."""
    from rich.console import Console  # deferred: only the printed summary needs rich
    from rich.table import Table
    from rich.text import Text

    headline = ("config", "images", "clean_acc", "noisy_acc", "ACR", "sigma_mean")
    shown = [c for c in rep.columns if c in headline or c.startswith(("cert_acc@", "robust_acc["))]
    short = {c: c.replace("robust_acc[", "").replace("]@eps=", " eps=").replace("cert_acc@", "cert ") for c in shown}
    t = Table(title=f"{len(rep.records)} configs (all columns: report.md / report.csv)")
    for c in shown:
        t.add_column(Text(short[c]), no_wrap=c == "config")
    for rec in rep.records:  # Text: labels like "[seed=1]" are not rich markup
        t.add_row(*(Text(cell(rec.get(c), c)) for c in shown))
    Console(width=max(120, 11 * len(shown) + 30)).print(t)


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    validate_app_config(cfg, "report")  # before any compute or output: one clear error line
    rep = run_or_put_back(lambda: build_report(cfg))  # a refused run leaves the run directory as it was
    print_summary(rep)
    for s in rep.skipped:
        log.warning("skipped %s", s)
    print(f"Report: {rep.out_dir / 'report.md'}")
    for f in rep.files[1:]:
        print(f"  {f}")


if __name__ == "__main__":
    main()
