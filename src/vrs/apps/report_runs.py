"""vrs-report, reading: the results under the inputs, one Row per run (certify and attack results directories
of vrs.apps.results, vrs-train runs), with each run's config."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vrs.apps.certify_store import COLUMNS, META_NAME, TSV_NAME, typed_row
from vrs.apps.results import normalize_settings
from vrs.errors import VRSError
from vrs.smoothing import core
from vrs.utils.io import DamagedRow, read_table

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


def training_of(recorded: str | None) -> str:
    """The base classifier's training method as a results file records it (`training` of certify.meta.json /
    settings.json); files written before the key existed come from Gaussian augmentation, the only method then."""
    return str(recorded) if recorded else "gaussian"


def by_training(label: str, training: str, suffix: str = "") -> str:
    """A row's label with its base classifier's training method, unless that is the default (gaussian)."""
    return label if training == "gaussian" else f"{label} ({training}{suffix})"


def training_of_config(cfg: DictConfig | None, base_stage: bool = False) -> str:
    """The training method (vrs.modules.training: its file's name) a vrs-train config ran with: `module.training`
    of a classifier run; VRS stage 1: `base_stage.training`, else the top-level `training` group; none: gaussian."""
    keys = ["base_stage.training._target_"] if base_stage else ["module.training._target_"]
    target = next((t for t in (value(cfg, k) for k in [*keys, "training._target_"]) if t), None)
    return str(target).rsplit(".", 2)[-2] if target and "." in str(target) else "gaussian"


# ---- one row of the table -----------------------------------------------------------------------------
@dataclass
class Row:
    """One config: its table values plus what the plots need."""

    kind: str                                        # train | certify | attack | certify+attack
    family: str                                      # fixed | vrs | search | train (line style in plots)
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
    # per-image results for the frontier (vrs.apps.report_frontier), of the one run this row was read from
    idx: np.ndarray | None = None                    # dataset index per image (certify: per TSV row)
    labels: np.ndarray | None = None                 # label per image
    ckpt_path: str | None = None                     # the checkpoint's full path as the run recorded it
    source: dict = field(default_factory=dict)       # the run's own description (certify meta / attack info)
    per_image: dict | None = None                    # certify: {"correct"}; attack: {"norm", "clean",
                                                     #   "sigma_clean", "eps": {eps: correct}}


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


def once_each(rows: list[dict], key, path: Path, what) -> tuple[list[dict], list[str]]:
    """Rows (typed, in file order; row i on line i + 2) with each key once: a repeated row (equal in every
    column but `time`, e.g. two copies of a file concatenated) is counted once, with a warning and a note;
    one that disagrees with the first is DamagedRow naming both lines (which one is right cannot be told)."""
    first: dict[Any, tuple[int, dict]] = {}
    out, repeated = [], []
    for line, r in enumerate(rows, start=2):
        k = key(r)
        if k in first:
            line0, r0 = first[k]
            differ = [c for c in r if c != "time" and not _same(r0[c], r[c])]
            if differ:
                raise DamagedRow(f"{path}, lines {line0} and {line}: {what(r)} twice with different results "
                                 f"({', '.join(f'{c} {r0[c]} / {r[c]}' for c in differ[:3])}): delete the wrong line")
            repeated.append(line)
            continue
        first[k] = (line, r)
        out.append(r)
    if not repeated:
        return out, []
    lines = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
    note = f"{path.name}: {len(repeated)} repeated row(s) (line {lines}) counted once"
    log.warning("%s: %d repeated row(s) (line %s) counted once", path, len(repeated), lines)
    return out, [note]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def read_certify(path: Path, radii: list[float]) -> Row:
    """A vrs-certify results directory: certify.meta.json + certify.tsv (+ summary.json)."""
    meta = normalize_settings(json.loads((path / META_NAME).read_text()))
    table = meta.get("mode", "certify")
    if table not in COLUMNS:
        raise VRSError(f"{path / META_NAME} has mode={table!r}, not one of {', '.join(COLUMNS)}: not a vrs-certify "
                       "results directory this version reads")
    rows = [typed_row(r) for r in read_table(path / TSV_NAME, COLUMNS[table], "\t", typed_row)[0]]
    rows, repeats = once_each(rows, lambda r: r["idx"], path / TSV_NAME, lambda r: f"image {r['idx']}")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    notes = [] if summary else ["no summary.json (interrupted? rerun vrs-certify with this out_dir to finish)"]
    notes += repeats
    if list(path.glob("certify.rank*.tsv")):
        notes.append("unmerged shard files (certify.rank*.tsv) not counted")
    correct = np.array([bool(r["correct"]) for r in rows])
    sigmas = np.array([r["sigma"] for r in rows])
    table, _, sampling = table.partition("/")  # "<table>/<sampling>": certify.sampling=sequential / radius_target
    vrs = table in ("vrs", "dual_rs")
    search = table == "search"
    alpha = fmt_num(meta["alpha"]) + (f"+{fmt_num(meta['alpha_h'])}" if vrs else "")
    training = training_of(meta.get("training"))
    if table == "dual_rs":
        family, method = "vrs", "dual-rs"
        label = by_training(f"Dual RS lambda={fmt_num(meta['lam'])}", training, " base")
        identity = (meta["data"], meta["checkpoint_sha256"], "dual_rs", float(meta["lam"]))
    elif vrs:
        family, method = "vrs", f"vrs-{meta['certificate']}"
        label = by_training(f"VRS {meta['certificate'].upper()} lambda={fmt_num(meta['lam'])}", training, " base")
        identity = (meta["data"], meta["checkpoint_sha256"], "vrs", float(meta["lam"]))
    elif search:
        name = meta["sigma_search"]["name"]
        family, method = "search", name
        label = by_training(f"{SEARCH_NAMES.get(name, name)} ({meta['certificate']})", training)
        identity = (meta["data"], meta["checkpoint_sha256"], "search", name)
    else:
        family, method = "fixed", "fixed-sigma" if table == "certify" else "fixed-sigma (predict)"
        label = by_training(f"fixed sigma={fmt_num(meta['sigma'])}", training)
        identity = (meta["data"], meta["checkpoint_sha256"], "fixed", float(meta["sigma"]))
    variant = ", ".join(([sampling] if sampling else []) + (["sound"] if meta.get("sound") else []))
    if variant:  # another sampling rule or the sound mode: another curve, never merged with the fixed-n run
        method, label, identity = f"{method} ({variant})", f"{label} ({variant})", identity + (variant,)
    values: dict[str, Any] = {
        "method": method, "certificate": meta.get("certificate", "cohen"), "training": training,
        "data": meta["data"], "sigma": None if vrs or search else meta["sigma"],
        "lambda": meta.get("lam") if vrs else None,
        "prior": describe_prior(training_config(meta.get("checkpoint"))) if vrs else None,
        "n0": meta.get("n0"), "n": meta["n"], "alpha": alpha, "images": len(rows),
        "clean_acc": float(correct.mean()) if rows else None,
        "abstain": core.abstain_rate([r["predict"] for r in rows]) if rows else None,
    }
    row = Row("certify", family, label, values, identity, [str(path)], sigmas=sigmas,
              ckpt=short_ckpt(meta.get("checkpoint")), ckpt_path=meta.get("checkpoint"), source=meta,
              idx=np.array([r["idx"] for r in rows], dtype=np.int64),
              labels=np.array([r["label"] for r in rows], dtype=np.int64),
              per_image={"correct": correct.astype(np.float64)})
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


# A test-time sigma search's name in tables and plots (vrs.selection.sigma_search).
SEARCH_NAMES = {"multiscale": "Multiscale", "dds": "DDS"}


# defense settings that act only through a noise-level selector (VRS, Dual RS)
SELECTOR_DEFENSE_KEYS = ("selector_grad", "n_h", "deployed_n_h")


def attack_setup(settings: dict, selector: bool = True) -> dict:
    """What makes two attacks on the same defended model different attacks (beyond name and norm). Without a
    selector (`selector=False`: fixed sigma, a sigma search), the selector's settings are not part of it, so a fixed
    sigma and a VRS attacked with the same budget share a column."""
    attack = {k: v for k, v in settings.get("attack", {}).items() if k not in ("name", "norm", "split")}
    d = settings.get("defense", {})
    keys = ("m", "noise", "tau") + (SELECTOR_DEFENSE_KEYS if selector else ())
    attack.update({f"defense.{k}": d.get(k) for k in keys if k in d})
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
    training = training_of(settings.get("training"))
    if "sigma_search" in info:
        search = info["sigma_search"]["name"]
        family, method = "search", search
        label = by_training(f"{SEARCH_NAMES.get(search, search)} ({info['certificate']})", training)
        identity = (settings["data"], settings["checkpoint_sha256"], "search", search)
    elif info.get("defense") == "vrs" and info.get("selector_smoothing") == "vote":
        family, method = "vrs", "dual-rs"
        label = by_training(f"Dual RS lambda={fmt_num(info['lam'])}", training, " base")
        identity = (settings["data"], settings["checkpoint_sha256"], "dual_rs", float(info["lam"]))
    elif info.get("defense") == "vrs":
        family, method, label = "vrs", "vrs", by_training(f"VRS lambda={fmt_num(info['lam'])}", training, " base")
        identity = (settings["data"], settings["checkpoint_sha256"], "vrs", float(info["lam"]))
    else:
        family, method = "fixed", "fixed-sigma"
        label = by_training(f"fixed sigma={fmt_num(info['sigma'])}", training)
        identity = (settings["data"], settings["checkpoint_sha256"], "fixed", float(info["sigma"]))
    per_eps = sorted(summary["per_eps"], key=lambda p: p["eps"])
    clean = summary["clean"]
    values: dict[str, Any] = {
        "method": method, "training": training, "data": settings["data"], "sigma": info.get("sigma"),
        "lambda": info.get("lam"),
        "prior": describe_prior(training_config(settings.get("checkpoint"))) if family == "vrs" else None,
        "attack_images": summary.get("subset", {}).get("count", clean.get("n")),
        "attack_clean_acc": clean.get("acc"),
        "attack_s/img": float(sum(p.get("seconds_per_image", 0.0) for p in per_eps)) if per_eps else None,
    }
    if family == "vrs":
        values["sigma_mean"] = per_eps[0].get("sigma_clean_mean") if per_eps else None
    notes = [] if summary.get("complete", True) else [f"{name}: not every image attacked at every eps"]
    values["notes"] = "; ".join(notes) or None
    row = Row("attack", family, label, values, identity, [str(path)], ckpt=short_ckpt(settings.get("checkpoint")),
              ckpt_path=settings.get("checkpoint"), source={**info, "settings": settings})
    read_attack_rows(path, row, summary)
    row.robust[name] = [(0.0, clean.get("acc"))] + [(float(p["eps"]), p["robust_acc"]) for p in per_eps]
    return row, {"name": name, **attack_setup(settings, selector=family == "vrs")}


# attack.csv (vrs.attacks.evaluate.ROW_COLUMNS; test_report.py checks they agree): type and allowed values.
_INT, _PROB = (int, lambda v: v >= -1), (int, lambda v: v in (0, 1))
ATTACK_TYPES = {"idx": (int, lambda v: v >= 0), "eps": (float, lambda v: math.isfinite(v) and v >= 0),
                "label": (int, lambda v: v >= 0), "clean_predict": _INT, "adv_predict": _INT, "correct": _PROB,
                "soft_predict": _INT, "soft_correct": _PROB, "clean_soft_predict": _INT,
                "l2": (float, lambda v: math.isfinite(v) and v >= 0),
                "linf": (float, lambda v: math.isfinite(v) and v >= 0),
                "sigma_clean": (float, lambda v: math.isnan(v) or (math.isfinite(v) and v > 0)),
                "sigma_adv": (float, lambda v: math.isnan(v) or (math.isfinite(v) and v > 0)),
                "time": (float, lambda v: math.isfinite(v) and v >= 0)}
ATTACK_COLUMNS = tuple(ATTACK_TYPES)


def typed_attack_row(row: dict[str, str]) -> dict:
    """An attack.csv row typed; ValueError, naming the column, for a value that does not parse or is out of
    range (a class below -1, a negative or non-finite eps or norm, ...)."""
    out = {}
    for c, v in row.items():
        kind, ok = ATTACK_TYPES[c]
        try:
            out[c] = kind(v)
        except ValueError:
            raise ValueError(f"{c}={v!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not ok(out[c]):
            raise ValueError(f"{c}={v!r} is out of range")
    return out


def read_attack_rows(path: Path, row: Row, summary: dict) -> None:
    """attack.csv's per-image outcomes onto the row: per image (in idx order) the label, clean PREDICT
    correctness (`clean_predict == label`, abstain = wrong), the clean sigma (`sigma_clean`) and, per eps of the
    summary, PREDICT correctness on the adversarial input (`correct`); an image missing at some eps is dropped."""
    eps_wanted = [float(p["eps"]) for p in summary["per_eps"]]
    by_idx: dict[int, dict] = {}
    table = path / "attack.csv"
    rows = [typed_attack_row(r) for r in read_table(table, ATTACK_COLUMNS, ",", typed_attack_row)[0]]
    rows, repeats = once_each(rows, lambda r: (r["idx"], r["eps"]), table,
                              lambda r: f"image {r['idx']} at eps={r['eps']:g}")
    if repeats:
        row.values["notes"] = "; ".join(filter(None, [row.values.get("notes"), *repeats]))
    for rec in rows:
        match = [w for w in eps_wanted if np.isclose(w, rec["eps"], rtol=1e-5, atol=1e-9)]
        if not match:
            continue
        d = by_idx.setdefault(rec["idx"], {"label": rec["label"], "clean": rec["clean_predict"] == rec["label"],
                                           "sigma": rec["sigma_clean"]})
        d[match[0]] = rec["correct"]
    idx = np.array(sorted(i for i, d in by_idx.items() if all(e in d for e in eps_wanted)), dtype=np.int64)
    row.idx = idx
    row.labels = np.array([by_idx[i]["label"] for i in idx], dtype=np.int64)
    row.per_image = {"norm": summary.get("norm"),
                     "clean": np.array([by_idx[i]["clean"] for i in idx], dtype=np.float64),
                     "sigma_clean": np.array([by_idx[i]["sigma"] for i in idx], dtype=np.float64),
                     "eps": {e: np.array([by_idx[i][e] for i in idx], dtype=np.float64) for e in eps_wanted}}


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
    if not selector:
        values["training"] = training_of_config(cfg, base_stage)
    if selector:
        lam = value(cfg, "module.lam") or {}
        values.update(method="train: vrs selector", prior=describe_prior(cfg),
                      noisy_acc=first_of(m, "test/acc", "val/acc"),
                      sigma_mean=first_of(m, "test/sigma_mean", "val/sigma_mean"))
        if lam.get("dist") == "uniform":
            values["lambda"] = f"U[{fmt_num(lam['low'])}, {fmt_num(lam['high'])}]"
        # the objective's module name (paper, radius, ...); the prior enters only the paper objective's loss
        objective = str(value(cfg, "module.objective._target_", "") or "paper.").rsplit(".", 2)[-2]
        label = f"train VRS selector ({objective}" + (f", {values['prior'] or 'no prior'})" if objective == "paper"
                                                       else ")")
        # its base classifier's training method: stage 1 of this run, or the run that wrote module.base_ckpt
        base_ckpt = value(cfg, "module.base_ckpt") or value(cfg, "base_ckpt")
        base_cfg = training_config(base_ckpt) if base_ckpt else cfg
        if base_cfg is not None:
            values["training"] = training_of_config(base_cfg, base_stage=not base_ckpt)
            label = by_training(label, values["training"], " base")
    else:
        sigma = f"[{fmt_num(noise['sigma_min'])}, {fmt_num(noise['sigma_max'])}]" if multi else noise.get("sigma")
        what = "multi-sigma" if multi else "fixed-sigma"
        values.update(method=f"train: {what}" + (" base (VRS stage 1)" if base_stage else ""), sigma=sigma,
                      clean_acc=first_of(m, "test/acc_clean", "val/acc_clean"),
                      noisy_acc=first_of(m, "test/acc", "val/acc"))
        label = by_training(f"train {what} sigma={sigma if multi else fmt_num(sigma)}", values["training"])
        label += " (VRS stage 1)" if base_stage else ""
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
        except DamagedRow:
            raise  # a damaged row is one clear error (file and line), never a run quietly left out
        except (OSError, ValueError, KeyError, TypeError, VRSError) as err:
            # one unreadable run must not hide the rest: named in the report's "Skipped" list
            skipped.append(f"{d}: unreadable ({type(err).__name__}: {err})")
    return Found(rows, setups, skipped)
