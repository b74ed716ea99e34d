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
report in place.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.apps.certify_store import COLUMNS, META_NAME, TSV_NAME, typed_row
from vrs.apps.results import normalize_settings
from vrs.config_schema import parse_inputs
from vrs.errors import VRSError, check, hydra_errors_exit, user_errors_exit
from vrs.smoothing import core
from vrs.utils.io import atomic_write, read_table

log = logging.getLogger(__name__)
# Directories that never hold results (or hold thousands of files): not walked.
PRUNE = {"wandb", "checkpoints", ".submitit", ".hydra", "tensorboard", "diagnostics", "csv", "__pycache__", ".git"}


# ---- reading one run's config -------------------------------------------------------------------------
def load_run_config(run_dir: Path) -> tuple[DictConfig | None, list[str]]:
    """(.hydra/config.yaml, .hydra/overrides.yaml) of a run directory; (None, []) when it has none."""
    hydra_dir = run_dir / ".hydra"
    cfg = OmegaConf.load(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").is_file() else None
    overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").is_file() else []
    return cfg, [str(o) for o in overrides]


def value(cfg: DictConfig | None, key: str, default: Any = None) -> Any:
    """cfg's value at a dotted key, interpolations resolved where they can be outside Hydra (the saved
    config keeps `${hydra:...}` and the like); default when missing or unresolvable."""
    if cfg is None:
        return default
    try:
        v = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - a saved config that no longer resolves: treat the key as unknown
        return default
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) or OmegaConf.is_list(v) else v


def app_of(cfg: DictConfig | None) -> str | None:
    """Which app wrote a config: train, certify, attack or report (None: not one of ours)."""
    if cfg is None:
        return None
    for key, app in (("report", "report"), ("certify", "certify"), ("defense", "attack"), ("module", "train")):
        if key in cfg:
            return app
    return None


def training_config(ckpt_path: str | None) -> DictConfig | None:
    """The config of the vrs-train run that wrote <run>/checkpoints/<file>.ckpt, when it is still there."""
    if not ckpt_path:
        return None
    run_dir = Path(ckpt_path).parent.parent
    return load_run_config(run_dir)[0] if (run_dir / ".hydra" / "config.yaml").is_file() else None


def describe_prior(train_cfg: DictConfig | None) -> str | None:
    prior = value(train_cfg, "prior")
    if not isinstance(prior, dict) or not prior.get("name"):
        return None
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in prior.items() if k != "name")
    return f"{prior['name']}({params})" if params else str(prior["name"])


# ---- one row of the table -----------------------------------------------------------------------------
@dataclass
class Row:
    """One config: its table values plus what the plots need."""

    kind: str                                        # train | certify | attack | certify+attack
    family: str                                      # fixed | vrs | train (line style in plots)
    label: str                                       # a name for the legend and the table's `config`
    values: dict[str, Any] = field(default_factory=dict)
    identity: tuple | None = None                    # the defended model: rows with equal identity merge
    dirs: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    ckpt: str | None = None                          # the checkpoint, shortly (tells equal labels apart)
    color: str = "C0"
    radii: np.ndarray | None = None                  # certification: per-image radius ...
    correct: np.ndarray | None = None                # ... and whether it counts (abstain = wrong)
    sigmas: np.ndarray | None = None                 # the sigma chosen per image (VRS)
    robust: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # attack -> [(eps, acc)]


def fmt_num(v: float) -> str:
    return f"{v:g}"


def short_ckpt(path: str | None) -> str | None:
    """<run>/checkpoints/last.ckpt -> '<run>' (a VRS run's base classifier: '<run>/base')."""
    if not path:
        return None
    p = Path(path)
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    name = f"{run.parent.name}/{run.name}" if run.name == "base" else run.name
    return name if p.name == "last.ckpt" else f"{name}/{p.name}"


def read_certify(path: Path, radii: list[float]) -> Row:
    """A vrs-certify results directory: certify.meta.json + certify.tsv (+ summary.json)."""
    meta = normalize_settings(json.loads((path / META_NAME).read_text()))
    table = meta.get("mode", "certify")
    if table not in COLUMNS:
        raise VRSError(f"{path / META_NAME} has mode={table!r}, not one of {', '.join(COLUMNS)}: not a vrs-certify "
                       "results directory this version reads")
    rows = [typed_row(r) for r in read_table(path / TSV_NAME, COLUMNS[table], "\t", typed_row)[0]]
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    notes = [] if summary else ["no summary.json (interrupted? rerun vrs-certify with this out_dir to finish)"]
    if list(path.glob("certify.rank*.tsv")):
        notes.append("unmerged shard files (certify.rank*.tsv) not counted")
    correct = np.array([bool(r["correct"]) for r in rows])
    sigmas = np.array([r["sigma"] for r in rows])
    vrs = table == "vrs"
    alpha = fmt_num(meta["alpha"]) + (f"+{fmt_num(meta['alpha_h'])}" if vrs else "")
    if vrs:
        family, method = "vrs", f"vrs-{meta['certificate']}"
        label = f"VRS {meta['certificate'].upper()} lambda={fmt_num(meta['lam'])}"
        identity = (meta["data"], meta["checkpoint_sha256"], "vrs", float(meta["lam"]))
    else:
        family, method = "fixed", "fixed-sigma" if table == "certify" else "fixed-sigma (predict)"
        label = f"fixed sigma={fmt_num(meta['sigma'])}"
        identity = (meta["data"], meta["checkpoint_sha256"], "fixed", float(meta["sigma"]))
    values: dict[str, Any] = {
        "method": method, "data": meta["data"], "sigma": None if vrs else meta["sigma"],
        "lambda": meta.get("lam") if vrs else None,
        "prior": describe_prior(training_config(meta.get("checkpoint"))) if vrs else None,
        "n0": meta.get("n0"), "n": meta["n"], "alpha": alpha, "images": len(rows),
        "clean_acc": float(correct.mean()) if rows else None,
        "abstain": core.abstain_rate([r["predict"] for r in rows]) if rows else None,
    }
    row = Row("certify", family, label, values, identity, [str(path)], sigmas=sigmas,
              ckpt=short_ckpt(meta.get("checkpoint")))
    if table != "predict":
        row.radii = np.array([r["radius"] for r in rows])
        row.correct = correct
        values["ACR"] = core.average_certified_radius(row.radii, correct) if rows else None
        for r, acc in zip(radii, core.certified_accuracy(row.radii, correct, radii)):
            values[f"cert_acc@r={fmt_num(r)}"] = float(acc) if rows else None
    if rows:
        values["sigma_mean"] = float(sigmas.mean())
        values["sigma_median"] = float(np.median(sigmas))
        values["s/img"] = float(np.mean([r["time"] for r in rows]))
    values["notes"] = "; ".join(notes) or None
    return row


def attack_setup(settings: dict) -> dict:
    """What makes two attacks on the same defended model different attacks (beyond name and norm)."""
    attack = {k: v for k, v in settings.get("attack", {}).items() if k not in ("name", "norm", "split")}
    d = settings.get("defense", {})
    attack.update({f"defense.{k}": d.get(k) for k in ("m", "noise", "tau", "selector_grad", "n_h", "deployed_n_h")
                   if k in d})
    attack["predict.n"] = settings.get("predict", {}).get("n")
    return attack


def attack_name(summary: dict) -> str:
    return f"{summary['attack']} {summary.get('norm') or ''}".strip()


def read_attack(path: Path) -> tuple[Row, dict]:
    """A vrs-attack results directory; returns the row and the attack's setup (attack_setup)."""
    summary = json.loads((path / "summary.json").read_text())
    settings = normalize_settings(summary.get("settings") or json.loads((path / "settings.json").read_text()))
    info = summary["defense"]
    name = attack_name(summary)
    if info.get("defense") == "vrs":
        family, method, label = "vrs", "vrs", f"VRS lambda={fmt_num(info['lam'])}"
        identity = (settings["data"], settings["checkpoint_sha256"], "vrs", float(info["lam"]))
    else:
        family, method, label = "fixed", "fixed-sigma", f"fixed sigma={fmt_num(info['sigma'])}"
        identity = (settings["data"], settings["checkpoint_sha256"], "fixed", float(info["sigma"]))
    per_eps = sorted(summary["per_eps"], key=lambda p: p["eps"])
    clean = summary["clean"]
    values: dict[str, Any] = {
        "method": method, "data": settings["data"], "sigma": info.get("sigma"), "lambda": info.get("lam"),
        "prior": describe_prior(training_config(settings.get("checkpoint"))) if family == "vrs" else None,
        "attack_images": summary.get("subset", {}).get("count", clean.get("n")),
        "attack_clean_acc": clean.get("acc"),
        "attack_s/img": float(sum(p.get("seconds_per_image", 0.0) for p in per_eps)) if per_eps else None,
    }
    if family == "vrs":
        values["sigma_mean"] = per_eps[0].get("sigma_clean_mean") if per_eps else None
    notes = [] if summary.get("complete", True) else [f"{name}: not every image attacked at every eps"]
    values["notes"] = "; ".join(notes) or None
    row = Row("attack", family, label, values, identity, [str(path)], ckpt=short_ckpt(settings.get("checkpoint")))
    row.robust[name] = [(0.0, clean.get("acc"))] + [(float(p["eps"]), p["robust_acc"]) for p in per_eps]
    return row, {"name": name, **attack_setup(settings)}


def last_logged(metrics_csv: Path) -> tuple[dict[str, float], int | None]:
    """The last logged value of every column of a Lightning CSVLogger metrics.csv, and the number of
    epochs trained (the test after fitting logs one epoch more than was trained: not counted)."""
    out: dict[str, float] = {}
    last_epoch = None
    with open(metrics_csv, newline="") as fh:
        for rec in csv.DictReader(fh):
            logged = {k: float(v) for k, v in rec.items() if v not in (None, "")}  # empty: not logged at this step
            out.update(logged)
            if "epoch" in logged and any(k.startswith(("train/", "val/")) for k in logged):
                last_epoch = int(logged["epoch"])
    return out, None if last_epoch is None else last_epoch + 1


def first_of(metrics: dict[str, float], *keys: str) -> float | None:
    return next((metrics[k] for k in keys if k in metrics), None)


def read_train(path: Path, cfg: DictConfig, base_stage: bool = False) -> Row:
    """A vrs-train run (or the base classifier stage, <run>/base, of a VRS run)."""
    m, epochs = last_logged(path / "csv" / "metrics.csv")
    selector = str(value(cfg, "module._target_", "")).endswith("SelectorModule") and not base_stage
    noise = value(cfg, "noise") or {}
    multi = "sigma_min" in noise
    values: dict[str, Any] = {"data": value(cfg, "data.name")}
    if selector:
        lam = value(cfg, "module.lam") or {}
        values.update(method="train: vrs selector", prior=describe_prior(cfg),
                      noisy_acc=first_of(m, "test/acc", "val/acc"),
                      sigma_mean=first_of(m, "test/sigma_mean", "val/sigma_mean"))
        if lam.get("dist") == "uniform":
            values["lambda"] = f"U[{fmt_num(lam['low'])}, {fmt_num(lam['high'])}]"
        label = f"train VRS selector ({values['prior'] or 'no prior'})"
    else:
        sigma = f"[{fmt_num(noise['sigma_min'])}, {fmt_num(noise['sigma_max'])}]" if multi else noise.get("sigma")
        what = "multi-sigma" if multi else "fixed-sigma"
        values.update(method=f"train: {what}" + (" base (VRS stage 1)" if base_stage else ""), sigma=sigma,
                      clean_acc=first_of(m, "test/acc_clean", "val/acc_clean"),
                      noisy_acc=first_of(m, "test/acc", "val/acc"))
        label = f"train {what} sigma={sigma if multi else fmt_num(sigma)}" + (" (VRS stage 1)" if base_stage else "")
    values["epochs"] = epochs
    return Row("train", "train", label, values, None, [str(path)])


# ---- finding results under the inputs ----------------------------------------------------------------
def result_dirs(inputs: list[Path]) -> list[Path]:
    """Every directory under the inputs (the inputs too), each once, in a stable order."""
    seen: dict[Path, None] = {}
    for top in inputs:
        for dirpath, dirnames, _ in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in PRUNE)
            seen.setdefault(Path(dirpath).resolve(), None)
    return list(seen)


@dataclass
class Found:
    rows: list[Row]
    attack_setups: dict[int, dict]   # id(row) -> attack_setup, for rows read from attacks
    skipped: list[str]


def collect(inputs: list[Path], radii: list[float]) -> Found:
    rows: list[Row] = []
    setups: dict[int, dict] = {}
    skipped: list[str] = []
    for d in result_dirs(inputs):
        cfg, overrides = load_run_config(d)
        app = app_of(cfg)
        if app == "report":
            continue
        try:
            new: list[Row] = []
            if (d / META_NAME).is_file() and (d / TSV_NAME).is_file():
                new.append(read_certify(d, radii))
            elif (d / "attack.csv").is_file() and (d / "settings.json").is_file():
                if not (d / "summary.json").is_file():
                    skipped.append(f"{d}: attack.csv without summary.json (interrupted? rerun vrs-attack with "
                                   "attack.out_dir set to it to finish)")
                    continue
                row, setup = read_attack(d)
                setups[id(row)] = setup
                new.append(row)
            elif app == "train":
                if not (d / "csv" / "metrics.csv").is_file():
                    skipped.append(f"{d}: a vrs-train run without csv/metrics.csv (logger=csv or logger=many "
                                   "writes it; debug=fdr writes none)")
                    continue
                new.append(read_train(d, cfg))
                if (d / "base" / "csv" / "metrics.csv").is_file():
                    new.append(read_train(d / "base", cfg, base_stage=True))
            for row in new:
                row.overrides = overrides
            rows += new
        except (OSError, ValueError, KeyError, TypeError, VRSError) as err:
            # one unreadable run must not hide the rest: named in the report's "Skipped" list
            skipped.append(f"{d}: unreadable ({type(err).__name__}: {err})")
    return Found(rows, setups, skipped)


# ---- rows: merge, name, order --------------------------------------------------------------------------
def differing(dicts: list[dict]) -> list[dict]:
    """For each dict, the items whose values are not the same in all of them."""
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in dicts}) > 1]
    return [{k: d.get(k) for k in varying if k in d} for d in dicts]


def attack_names(found: Found) -> None:
    """Name each attack in its row's `robust` by name and norm, plus the settings in which attacks of that
    name and norm differ (steps, eot, PREDICT n, ...): attacks with other settings get other columns."""
    by_name: dict[str, list[Row]] = {}
    for row in found.rows:
        for name in row.robust:
            by_name.setdefault(name, []).append(row)
    for name, rows in by_name.items():
        diffs = differing([found.attack_setups[id(r)] for r in rows])
        for row, diff in zip(rows, diffs):
            if diff:
                full = name + " " + " ".join(f"{k}={v}" for k, v in diff.items())
                row.robust[full] = row.robust.pop(name)


def merge(rows: list[Row]) -> list[Row]:
    """An attack joins the certification (or other attacks) of the same defended model when exactly one
    row has that identity and no result for that attack yet; otherwise it keeps its own row."""
    out: list[Row] = [r for r in rows if r.kind != "attack"]
    for row in (r for r in rows if r.kind == "attack"):
        same = [o for o in out if o.identity is not None and o.identity == row.identity]
        if len(same) == 1 and not set(same[0].robust) & set(row.robust):
            target = same[0]
            target.robust.update(row.robust)
            target.dirs += row.dirs
            target.overrides += [o for o in row.overrides if o not in target.overrides]
            for k, v in row.values.items():
                if v is not None and target.values.get(k) is None:
                    target.values[k] = v
                elif k == "notes" and v:
                    target.values[k] = f"{target.values[k]}; {v}"
            if target.kind != "certify+attack" and target.kind.startswith("certify"):
                target.kind = "certify+attack"
        else:
            out.append(row)
    return out


def name_rows(rows: list[Row], hidden: set[str]) -> None:
    """Rows with the same label get what tells them apart appended: their checkpoints when that is
    enough, else the overrides in which they differ, e.g. `[seed=1]`."""
    for row in rows:
        row.overrides = [o for o in row.overrides if o.split("=", 1)[0].lstrip("+~") not in hidden]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.label, []).append(row)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        by_ckpt = [{"ckpt": r.ckpt} for r in group]
        by_overrides = [dict(o.split("=", 1) if "=" in o else (o, "") for o in r.overrides) for r in group]
        for candidate in (by_ckpt, by_overrides, [{**a, **b} for a, b in zip(by_ckpt, by_overrides)]):
            diffs = differing(candidate)
            texts = [" ".join(f"{k}={v}" for k, v in d.items()) for d in diffs]
            if all(texts) and len(set(texts)) == len(texts):
                break
        for i, (row, text) in enumerate(zip(group, texts)):
            row.label = f"{label} [{text or f'#{i + 1}'}]"


def order_key(row: Row) -> tuple:
    v = row.values
    number = v.get("sigma") if isinstance(v.get("sigma"), (int, float)) else v.get("lambda")
    number = number if isinstance(number, (int, float)) else -1.0
    return (row.kind != "train", str(v.get("data")), {"train": 0, "fixed": 1, "vrs": 2}[row.family],
            str(v.get("method")), number, row.label)


# ---- the table -----------------------------------------------------------------------------------------
FIXED_COLUMNS = ["config", "kind", "method", "data", "sigma", "lambda", "prior", "epochs", "n0", "n", "alpha",
                 "images", "clean_acc", "noisy_acc", "abstain", "ACR"]
TAIL_COLUMNS = ["sigma_mean", "sigma_median", "s/img", "attack_images", "attack_clean_acc"]
LEGEND = {
    "config": "a name for the row (also in the plots' legends); [..] = the overrides that tell equal names apart",
    "kind": "train: a vrs-train run; certify / attack: a vrs-certify / vrs-attack run; certify+attack: both "
            "on the same defended model (same checkpoint file, data, and sigma or lambda)",
    "method": "fixed-sigma: Cohen's smoothing at one sigma; vrs-c1 / vrs-c2: VRS with certificate C1 / C2; "
              "vrs: VRS under attack; train: <what>: what a vrs-train run trained (a fixed- or multi-sigma base "
              "classifier, the VRS selector)",
    "sigma": "the fixed noise level (train: the training noise; [a, b]: log-uniform multi-sigma)",
    "lambda": "VRS's test-time trade-off knob (train: the distribution lambda was drawn from)",
    "prior": "the selector's KL prior (from the training run's config, when it is still there)",
    "epochs": "training epochs run",
    "n0": "CERTIFY's selection samples", "n": "CERTIFY's estimation samples (PREDICT's for predict runs)",
    "alpha": "failure probability per certificate (VRS: alpha + alpha_h, the selector's interval)",
    "images": "images certified",
    "clean_acc": "certify: smoothed classifier's accuracy on clean images, abstain = wrong; train: the base "
                 "classifier on clean test images (val when test was not run)",
    "noisy_acc": "train: accuracy under the training noise (selector: of the soft-smoothed classifier at the "
                 "selector's sigma, mean over the validation lambdas)",
    "abstain": "fraction of certified images where the smoothed classifier abstained",
    "ACR": "average certified radius over all images (abstain or wrong = 0)",
    "cert_acc@r=R": "certified accuracy at L2 radius R: correct and radius >= R, over all images",
    "robust_acc[A]@eps=E": "PREDICT accuracy on attack A's adversarial inputs at eps = E, abstain = wrong",
    "sigma_mean": "mean sigma the defence used per image (VRS: the selector's snapped median)",
    "sigma_median": "median of the same",
    "s/img": "certification seconds per image (one process)",
    "attack_images": "images attacked", "attack_clean_acc": "PREDICT accuracy on the attacked images, clean",
    "attack_s/img": "attack seconds per image, all eps together",
    "overrides": "the run's command-line overrides (some hidden: report.hide_overrides)",
    "notes": "anything that makes a number less than final",
}


def table(rows: list[Row], radii: list[float]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (those with a value in some row) and one dict per row."""
    attacks = sorted({a for r in rows for a in r.robust})
    robust_cols = []
    for a in attacks:
        eps = sorted({e for r in rows for e, _ in r.robust.get(a, []) if e > 0})
        robust_cols += [(a, e, f"robust_acc[{a}]@eps={fmt_num(e)}") for e in eps]
    cols = (FIXED_COLUMNS + [f"cert_acc@r={fmt_num(r)}" for r in radii] + TAIL_COLUMNS
            + [c for _, _, c in robust_cols] + ["attack_s/img", "overrides", "notes", "run_dirs"])
    records = []
    for row in rows:
        rec = {**row.values, "config": row.label, "kind": row.kind, "overrides": " ".join(row.overrides) or None,
               "run_dirs": " ".join(row.dirs)}
        for a, e, c in robust_cols:
            rec[c] = next((acc for ee, acc in row.robust.get(a, []) if math.isclose(ee, e)), None)
        records.append(rec)
    cols = [c for c in cols if any(rec.get(c) is not None for rec in records)]
    return cols, records


def cell(v: Any, col: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if col.endswith("s/img") or col in ("sigma", "lambda") else f"{v:.3f}"
    return str(v)


def to_csv(cols: list[str], records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for rec in records:
        w.writerow(["" if rec.get(c) is None else (f"{rec[c]:.6g}" if isinstance(rec[c], float) else rec[c])
                    for c in cols])
    return buf.getvalue()


def to_markdown(cols: list[str], records: list[dict]) -> str:
    shown = [c for c in cols if c != "run_dirs"]  # listed under "Runs" instead: long paths
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| # | " + " | ".join(esc(c) for c in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for i, rec in enumerate(records, 1):
        lines.append(f"| {i} | " + " | ".join(esc(cell(rec.get(c), c)) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def settings_lines(rows: list[Row], found: Found) -> list[str]:
    """The settings behind the numbers (n, images, attack budgets), each distinct combination once."""
    out = []
    cert = sorted({(r.values.get("data"), r.values.get("n0"), r.values.get("n"), r.values.get("alpha"),
                    r.values.get("images")) for r in rows if r.kind.startswith("certify")}, key=str)
    for data, n0, n, alpha, images in cert:
        out.append(f"certification: {images} {data} images, n0 = {n0}, n = {n}, alpha = {alpha}")
    seen = set()
    for setup in found.attack_setups.values():
        text = f"{setup['name']}: " + ", ".join(f"{k} = {v}" for k, v in setup.items() if k != "name" and v is not None)
        if text not in seen:
            seen.add(text)
            out.append(f"attack: {text}")
    images = sorted({r.values.get("attack_images") for r in rows if r.values.get("attack_images")})
    if images:
        out.append(f"attacked images per run: {', '.join(map(str, images))}")
    return out


# ---- plots ---------------------------------------------------------------------------------------------
def _figure(nplots: int, width: float = 5.5, height: float = 3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, nplots, figsize=(width * nplots, height), squeeze=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: Path) -> None:
    """Into memory, then an atomic write: a reader sees the old plot or the new one."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # "tight": legends outside the axes
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def matplotlib_color(palette: str, i: int) -> tuple:
    import matplotlib

    cmap = matplotlib.colormaps[palette]
    return cmap(i % cmap.N)


def _style(row: Row) -> dict:
    return {"ls": "-" if row.family == "vrs" else "--", "color": row.color}


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


# ---- the app -------------------------------------------------------------------------------------------
@dataclass
class Report:
    out_dir: Path
    columns: list[str]
    records: list[dict[str, Any]]
    files: list[Path]
    skipped: list[str]
    markdown: str


def build_report(cfg: DictConfig) -> Report:
    """Read every run under report.inputs, then write the table and the plots to report.out_dir."""
    r = OmegaConf.to_container(cfg.report, resolve=True)
    inputs = parse_inputs(r.get("inputs"))
    radii = r.get("radii") or []
    check(isinstance(radii, list) and all(isinstance(x, (int, float)) and x >= 0 for x in radii), "report.radii",
          radii, "a list of radii >= 0")
    out = r.get("out_dir")
    check(isinstance(out, str) and bool(out), "report.out_dir", out, "a directory path")
    out = Path(out)
    check(not out.exists() or out.is_dir(), "report.out_dir", str(out), "a directory (this is a file)")

    found = collect(inputs, [float(x) for x in radii])
    if not found.rows:
        why = f" ({len(found.skipped)} skipped: {found.skipped[0]})" if found.skipped else ""
        raise VRSError(f"report.inputs={[str(p) for p in inputs]} holds no runs: no certify.tsv + certify.meta.json, "
                       f"attack.csv + summary.json or training run (.hydra/config.yaml + csv/metrics.csv) under "
                       f"them{why}")
    attack_names(found)
    rows = merge(found.rows)
    name_rows(rows, set(r.get("hide_overrides") or []))
    rows.sort(key=order_key)
    palette = "tab10" if len(rows) <= 10 else "tab20"
    for i, row in enumerate(rows):  # one colour per config, the same in every plot
        row.color = matplotlib_color(palette, i)
    cols, records = table(rows, [float(x) for x in radii])

    # Everything is computed; only now is anything written (plots first, the table last).
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    figures = []
    for name, make in PLOTS.items():
        made = make(rows)
        if made is not None:
            plt, fig = made["figure"]
            _save(plt, fig, out / name)
            files.append(out / name)
            figures.append((made["title"], name))
    title = r.get("title") or "VRS report"
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
    md += ["## Runs", ""] + [f"{i}. {rec['config']}: " + ", ".join(f"`{d}`" for d in rec["run_dirs"].split(" "))
                             for i, rec in enumerate(records, 1)]
    if found.skipped:
        md += ["", "## Skipped", ""] + [f"- {s}" for s in found.skipped]
    text = "\n".join(md) + "\n"
    atomic_write(out / "report.csv", to_csv(cols, records))
    atomic_write(out / "report.md", text)
    files = [out / "report.md", out / "report.csv"] + files
    return Report(out, cols, records, files, found.skipped, text)


def print_summary(rep: Report) -> None:
    """The table's headline columns on the terminal (report.md and report.csv have all of them)."""
    from rich.console import Console
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
    from vrs.config_schema import validate_app_config

    validate_app_config(cfg, "report")  # before any compute or output: one clear error line
    rep = build_report(cfg)
    print_summary(rep)
    for s in rep.skipped:
        log.warning("skipped %s", s)
    print(f"Report: {rep.out_dir / 'report.md'}")
    for f in rep.files[1:]:
        print(f"  {f}")


if __name__ == "__main__":
    main()
