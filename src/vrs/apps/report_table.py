"""vrs-report, the table: rows of one config merged and named, the columns, report.csv and report.md."""

from __future__ import annotations

import csv
import math
import io
import json
from typing import Any

from vrs.apps.report_runs import Found, Row, fmt_num


# ---- rows: merge, name, order --------------------------------------------------------------------------
def differing(dicts: list[dict], absent_differs: bool = True) -> list[dict]:
    """For each dict, the items whose values are not the same in all of them. absent_differs=False: only among the
    dicts that have the key (a key a dict lacks, such as a selector's setting in a fixed-sigma attack, does not set
    that dict apart)."""
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in dicts
                                       if absent_differs or k in d}) > 1]
    return [{k: d.get(k) for k in varying if k in d} for d in dicts]


def attack_names(found: Found) -> None:
    """Name each attack in its row's `robust` by name and norm, plus the settings in which attacks of that
    name and norm differ (steps, eot, PREDICT n, ...): attacks with other settings get other columns."""
    by_name: dict[str, list[Row]] = {}
    for row in found.rows:
        for name in row.robust:
            by_name.setdefault(name, []).append(row)
    for name, rows in by_name.items():
        diffs = differing([found.attack_setups[id(r)] for r in rows], absent_differs=False)
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
    return (row.kind != "train", str(v.get("data")), {"train": 0, "fixed": 1, "vrs": 2, "search": 3}[row.family],
            str(v.get("method")), str(v.get("training")), number, row.label)


# ---- the table -----------------------------------------------------------------------------------------
FIXED_COLUMNS = ["config", "kind", "method", "certificate", "training", "data", "sigma", "lambda", "prior", "epochs",
                 "n0", "n", "alpha",
                 "images", "clean_acc", "noisy_acc", "abstain", "ACR"]
TAIL_COLUMNS = ["sigma_mean", "sigma_median", "s/img", "attack_images", "attack_clean_acc"]
LEGEND = {
    "config": "a name for the row (also in the plots' legends); [..] = the overrides that tell equal names apart",
    "kind": "train: a vrs-train run; certify / attack: a vrs-certify / vrs-attack run; certify+attack: both "
            "on the same defended model (same checkpoint file, data, and sigma or lambda)",
    "method": "fixed-sigma: Cohen's smoothing at one sigma; vrs-c1 / vrs-c2: VRS with certificate C1 / C2; "
              "dual-rs: the selector vote-smoothed (Dual RS); multiscale / dds: a test-time sigma search; "
              "vrs: VRS under attack; train: <what>: what a vrs-train run trained (a fixed- or multi-sigma base "
              "classifier, the VRS selector)",
    "certificate": "the argument that makes the radius sound (summary.json soundness; docs/vrs.md): cohen, c1, c2, "
                   "dual_rs (min(R_sigma, R_c), union bound), multiscale (cascade, union bound over levels), or "
                   "empirical (no certified radius: an empirical defence, e.g. DDS)",
    "training": "how the base classifier was trained (vrs.modules.training: gaussian, smoothadv, macer, consistency); "
                "results written before the key existed: gaussian",
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

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

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
