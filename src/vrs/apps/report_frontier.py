"""vrs-report, the frontier (issue 17 section 1): VRS against fixed-sigma smoothing on the same base
classifier, at matched clean accuracy, with the instruments of vrs.analysis.

Base classifier (one "base" per comparison). Runs are grouped by the checkpoint file they ran on (data set and
`checkpoint_sha256` of certify.meta.json / settings.json). Fixed-sigma runs are paired with a VRS selector
when they smoothed the same base classifier:
  1. same file: `vrs-certify certify=cohen certify.sigma=S` or `vrs-attack defense.sigma=S` on the VRS
     checkpoint itself smooth the base classifier stored inside it (what `make demo` does);
  2. stage-1 file: fixed-sigma runs on the checkpoint the VRS training run used as its base classifier:
     its `module.base_ckpt` (`base_ckpt=`), else `<VRS run>/base/checkpoints/last.ckpt` (stage 1 trained by
     the same vrs-train run), matched by resolved path; only when the training run's config is still next
     to the VRS checkpoint and says `module.finetune.epochs` = 0 (a fine-tuned base classifier is another
     classifier than the stage-1 file).
  Several VRS selectors trained on one stage-1 file (rule 2 for each) hold one base classifier: they form ONE
  group with the fixed-sigma runs on the stage-1 file and on any of their files (rule 1), one curve per selector
  next to the one fixed-sigma curve, every point of a comparison on the images all of them evaluated (each VRS
  point's gap paired with the fixed sigmas over those images); the group is then named after the stage-1 file.
  Two fixed-sigma runs at one sigma: the one on a VRS file is kept, else the one with more images.

Other input-dependent methods (issue 18) join the same comparisons: Dual RS (a vote-smoothed selector: one curve per
selector over lambda, beside its VRS curves) and the test-time sigma searches (Multiscale, DDS: one point each, paired
like fixed-sigma runs, by their checkpoint file). A run whose certificate is `empirical` (DDS) has no certified
radius, so it is left off the certified comparisons (noted) and appears on the attack ones.

Comparisons (each on the images that every run in it evaluated, lined up by `idx`):
- certification: clean accuracy against ACR (`radius if correct else 0`) and against certified accuracy at
  each report radius (`correct and radius >= r`), from certify.tsv. Clean accuracy is PREDICT's (abstain =
  wrong) when every point of the comparison has a PREDICT run on those images (a `mode=predict`
  certification, or the clean columns of a vrs-attack run on the same defended model); otherwise it is
  certify.tsv's `correct` (certified accuracy at r = 0) for every point. Fixed sigma: one curve over sigma;
  VRS: one curve per selector and certificate (C1 / C2) over lambda.
- attacks: per attack and eps, clean accuracy (attack.csv `clean_predict == label`) against robust accuracy
  (`correct`: PREDICT on the adversarial input, abstain = wrong). When a defence was attacked by several
  attacks of the same norm at an eps, it is also scored under all of them together ("strongest"): an image
  counts as robust only when it is robust under every one (vrs.analysis.robust_under_all, per image);
  clean accuracy then comes from the first of those attacks (by name).
Every point has standard errors (binomial for accuracies, std / sqrt(n) for ACR). Each VRS point gets its gap
to the fixed-sigma Pareto frontier at its clean accuracy, paired over the same images, in standard errors
(vrs.analysis.frontier_gap), or "outside the fixed-sigma range".

Oracle headroom: per image the grid sigma that served it best among the fixed-sigma runs (largest certified
radius among those where it is correct; robust under the attack, clean-correct if possible). It USES THE
LABEL: a diagnostic of what any selector over these sigmas could reach on this base classifier, never a
certificate and never a defence. Also placed on the frontier (its gap in SE).

Sigma diagnostics: per VRS run (certify.tsv `sigma`, attack.csv `sigma_clean`): spread, histogram over the
grid (the checkpoint's median-smoothing grid; else the fixed sigmas), mean per class, Spearman correlation
with the certified oracle's sigma on the common images, and issue 17's check at lambda = 0.5 (the IQR spans
a grid step). The base classifier's margin is not in any results file, so its correlation is not reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vrs.analysis.frontier import frontier_gap, pareto_frontier
from vrs.analysis.oracle import certified_oracle, robust_oracle
from vrs.analysis.outcomes import align_images, certified_at, radius_if_correct, robust_under_all
from vrs.analysis.sigma_spread import sigma_summary
from vrs.analysis.standard_error import accuracy_standard_error, mean_standard_error
from vrs.apps.report_runs import SEARCH_NAMES, Row, fmt_num, short_ckpt, training_config, value
from vrs.apps.report_table import to_csv

ORACLE = "oracle (diagnostic, uses the label)"
FIXED = "fixed sigma"


# ---- base classifiers and selectors ----------------------------------------------------------------------
def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def describe_objective(ckpt_path: str | None) -> str:
    """The selector's training objective from the config of the vrs-train run that wrote the checkpoint
    (`objective` group; null = the paper's) and whether its selector sees the base classifier (two selectors with
    one objective are otherwise one label), else the checkpoint's short path."""
    cfg = training_config(ckpt_path)
    if cfg is None:
        return f"checkpoint {short_ckpt(ckpt_path) or '?'}"
    obj = value(cfg, "objective")
    if obj is None:
        obj = value(cfg, "module.objective")
    if not isinstance(obj, dict) or not obj.get("_target_"):
        return "objective paper"
    parts = str(obj["_target_"]).split(".")
    name = parts[-2] if len(parts) >= 2 else parts[-1]
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in obj.items()
                       if k != "_target_" and not isinstance(v, (dict, list)))
    sees = ", selector sees the base classifier" if value(cfg, "selector.sees_base") else ""
    return f"objective {name}" + (f" ({params})" if params else "") + sees


def stage1_paths(ckpt_path: str | None) -> tuple[list[str], str | None]:
    """(resolved paths of the stage-1 base classifier of a VRS checkpoint, why none) (module docstring, rule 2)."""
    if not ckpt_path:
        return [], "no checkpoint path recorded"
    cfg = training_config(ckpt_path)
    if cfg is None:
        return [], "its training run's config is not next to it"
    finetune = value(cfg, "module.finetune.epochs", 0) or 0
    if finetune:
        return [], f"its base classifier was fine-tuned ({finetune} epochs): the stage-1 file is another classifier"
    base = value(cfg, "module.base_ckpt") or value(cfg, "base_ckpt")
    p = Path(ckpt_path)
    if base:
        return [_resolved(str(base))], None
    if p.parent.name == "checkpoints":
        return [_resolved(str(p.parent.parent / "base" / "checkpoints" / "last.ckpt"))], None
    return [], "no stage-1 checkpoint found"


@dataclass
class Base:
    """One base classifier: the files that hold it (VRS checkpoints trained on one stage-1 file, the stage-1 file,
    or one classifier file) and every run paired with it."""

    key: tuple                               # (data, checkpoint_sha256) of the first file of the group
    name: str
    rows: list[Row] = field(default_factory=list)
    pairing: list[str] = field(default_factory=list)   # how the fixed-sigma runs were paired
    selectors: dict[tuple, str] = field(default_factory=dict)  # VRS file (data, sha256) -> its selector's label
    stage1: str | None = None                # the resolved stage-1 path the VRS files share (rule 2)

    @property
    def selector(self) -> str | None:
        """The VRS selectors' labels, joined (None: no VRS runs)."""
        return "; ".join(self.selectors.values()) or None

    def selector_of(self, row: Row) -> str:
        return self.selectors.get((row.identity[0], row.identity[1]), "VRS")

    @property
    def own_shas(self) -> set:
        """The files a fixed-sigma run is preferred on (module docstring): the VRS files, else the group's file."""
        return {k[1] for k in self.selectors} or {self.key[1]}


def group_bases(rows: list[Row]) -> list[Base]:
    """Group the certify / attack rows (one run each) by base classifier (module docstring). VRS selectors trained
    on one stage-1 file (without fine-tuning) hold the same base classifier: one group, one curve per selector."""
    runs = [r for r in rows if r.kind in ("certify", "attack") and r.identity is not None]
    bases: dict[tuple, Base] = {}
    group_of: dict[tuple, tuple] = {}   # VRS file key -> its group's key
    stage1: dict[str, tuple] = {}       # resolved stage-1 path -> the group's key

    def base_of(key: tuple, row: Row) -> Base:
        if key not in bases:
            bases[key] = Base(key, f"{key[0]}: {short_ckpt(row.ckpt_path) or '?'} (sha256 {str(key[1])[:8]})")
        return bases[key]

    for r in runs:
        key = (r.identity[0], r.identity[1])
        if r.family != "vrs" or key in group_of:
            continue
        paths, why = stage1_paths(r.ckpt_path)
        gid = next((stage1[p] for p in paths if p in stage1 and stage1[p][0] == key[0]), key)
        b = base_of(gid, r)
        b.selectors[key] = describe_objective(r.ckpt_path)
        group_of[key] = gid
        for p in paths:
            stage1.setdefault(p, gid)
            b.stage1 = b.stage1 or p
        how = (f"stage-1 checkpoint {paths[0]}" if paths
               else f"stage-1 file of {short_ckpt(r.ckpt_path)} not paired: {why}")
        if how not in b.pairing:
            b.pairing.append(how)
    for r in runs:
        key = (r.identity[0], r.identity[1])
        if key in group_of:          # a VRS run, or a fixed-sigma run on a VRS file (rule 1)
            key = group_of[key]
        elif r.family in ("fixed", "search"):  # on a stage-1 file (rule 2; a sigma search smooths that file too)
            target = stage1.get(_resolved(r.ckpt_path) or "")
            if target is not None and target[0] == key[0]:
                key = target
        base_of(key, r).rows.append(r)
    for b in bases.values():
        if len(b.selectors) > 1:     # named after the stage-1 file the selectors share
            on = [r for r in b.rows if _resolved(r.ckpt_path) == b.stage1]
            sha = f", sha256 {str(on[0].identity[1])[:8]}" if on else ""
            b.name = (f"{b.key[0]}: {short_ckpt(b.stage1) or '?'} (stage-1 file of {len(b.selectors)} VRS "
                      f"selectors{sha})")
            seen: dict[str, int] = {}
            for label in b.selectors.values():
                seen[label] = seen.get(label, 0) + 1
            for k, label in list(b.selectors.items()):  # two selectors of one objective: told apart by file
                if seen[label] > 1:  # their settings are equal: the objective's name and the file say it all
                    b.selectors[k] = f"{label.split(' (')[0]}, {_ckpt_of(b, k)}"
    return list(bases.values())


def _ckpt_of(b: Base, key: tuple) -> str:
    """The short path of a VRS file of b (key: (data, sha256)), else its sha256's start."""
    ckpt = next((r.ckpt_path for r in b.rows if (r.identity[0], r.identity[1]) == key), None)
    return short_ckpt(ckpt) or str(key[1])[:8]


def curve_of(base: Base, row: Row) -> str:
    """The curve an input-dependent run belongs to: one per VRS selector and certificate (lambda along it), one per
    vote-smoothed selector (Dual RS), one per test-time sigma search (a single point)."""
    if row.family == "search":
        name = str(row.source.get("sigma_search", {}).get("name", "search"))
        return f"{SEARCH_NAMES.get(name, name)} ({row.source.get('certificate', '?')})"
    cert = str(row.source.get("certificate", "")).upper()
    if cert == "DUAL_RS" or row.source.get("selector_smoothing") == "vote":
        return f"Dual RS [{base.selector_of(row)}]"
    return f"VRS {cert} [{base.selector_of(row)}]" if row.kind == "certify" else f"VRS [{base.selector_of(row)}]"


def knob_of(row: Row) -> float | None:
    """Where a run lies along its curve: lambda (VRS, Dual RS), None for a sigma search (one point)."""
    return None if row.family == "search" else float(row.source["lam"])


# ---- per-image series and comparisons ----------------------------------------------------------------------
@dataclass
class Series:
    """One point's per-image outcomes on its own images: idx (n,) and named (n,) arrays."""

    idx: np.ndarray
    arrays: dict[str, np.ndarray]
    runs: list[str]


@dataclass
class Point:
    base: str
    comparison: str
    clean_from: str
    curve: str                    # "fixed sigma", "VRS ...", ORACLE
    sigma: float | None
    lam: float | None
    n: int
    clean: float
    clean_se: float
    metric: float
    metric_se: float
    gap: float | None = None
    gap_se: float | None = None
    z: float | None = None
    verdict: str = ""


@dataclass
class Comparison:
    base: str
    name: str                     # "ACR", "cert_acc@r=0.5", "robust_acc[pgd l2]@eps=0.5"
    kind: str                     # certified | robust
    clean_from: str
    points: list[Point]
    note: str = ""


def _se(values: np.ndarray, binary: bool) -> float:
    if binary:
        return accuracy_standard_error(float(np.mean(values)), int(values.size))
    return mean_standard_error(values)


def compare(base: str, name: str, kind: str, clean_from: str, fixed: dict[float, Series],
            curves: dict[str, dict[float, Series]], oracle) -> Comparison | None:
    """Every point on the images all of them evaluated; VRS (and oracle) gaps to the fixed-sigma frontier.
    oracle(sigmas, aligned fixed arrays {name: (S, n)}) -> (clean (n,), metric (n,))."""
    if not fixed:
        return None
    everyone = list(fixed.values()) + [s for c in curves.values() for s in c.values()]
    common, pos = align_images(*(s.idx for s in everyone))
    n = int(common.size)
    if n < 2:
        return Comparison(base, name, kind, clean_from, [], note=f"only {n} image(s) evaluated by every run: "
                          "no comparison")
    aligned = [{k: v[p] for k, v in s.arrays.items()} for s, p in zip(everyone, pos)]
    sigmas = sorted(fixed)
    fa = aligned[:len(fixed)]
    fa = [fa[list(fixed).index(s)] for s in sigmas]
    fc = np.stack([a["clean"] for a in fa])
    fm = np.stack([a["metric"] for a in fa])
    binary = kind != "acr"
    cm = np.asarray(fc.mean(1)), np.asarray(fm.mean(1))
    front = set(pareto_frontier(*cm).tolist())
    points = []

    def point(curve, sigma, lam, c, m) -> Point:
        return Point(base, name, clean_from, curve, sigma, lam, n, float(c.mean()), _se(c, True), float(m.mean()),
                     _se(m, binary))

    for i, s in enumerate(sigmas):
        p = point(FIXED, s, None, fc[i], fm[i])
        p.verdict = "on the frontier" if i in front else "dominated (below the frontier)"
        points.append(p)

    def with_gap(p: Point, c, m) -> Point:
        g = frontier_gap(sigmas, fc, fm, c, m)
        p.verdict = g.verdict
        if not g.outside:
            p.gap, p.gap_se, p.z = g.gap, g.se, g.z
        elif g.clean > cm[0].max():  # more clean accuracy than every fixed sigma: against the one with the most
            p.verdict += right_of_range(sigmas, cm, fm, m)
        return p

    k = len(fixed)
    for curve, pts in curves.items():
        at = {lam: aligned[k + j] for j, lam in enumerate(pts)}  # the order of `everyone`
        k += len(pts)
        for lam in sorted(pts, key=lambda v: -1.0 if v is None else v):
            a = at[lam]
            points.append(with_gap(point(curve, None, lam, a["clean"], a["metric"]), a["clean"], a["metric"]))
    if oracle is not None and len(sigmas) >= 1:
        stacked = {key: np.stack([a[key] for a in fa]) for key in fa[0]}
        oc, om = oracle(np.asarray(sigmas), stacked)
        points.append(with_gap(point(ORACLE, None, None, oc, om), oc, om))
    return Comparison(base, name, kind, clean_from, points)


def right_of_range(sigmas, cm, fm: np.ndarray, m: np.ndarray) -> str:
    """For a point with more clean accuracy than every fixed sigma: its metric against that of the fixed sigma
    with the most clean accuracy (ties: the larger metric), paired, in SE. Above it, the point dominates the
    whole fixed-sigma curve's right end; it is not a gap at matched clean accuracy."""
    c, mm = cm
    j = max(range(len(sigmas)), key=lambda i: (c[i], mm[i]))
    d = m - fm[j]
    se = float(np.std(d, ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    z = f"{d.mean() / se:+.1f} SE" if se > 0 else f"SE {se:.3g}"
    return (f" (more clean accuracy than every fixed sigma; metric {d.mean():+.3f} ({z}) against "
            f"sigma={fmt_num(sigmas[j])})")


# ---- certification ----------------------------------------------------------------------------------------
def _pick(rows: list[Row], prefer: set) -> tuple[Row, list[Row]]:
    """One run of several at the same point: on the group's own files (sha256 in prefer) first, then the most
    images."""
    ranked = sorted(rows, key=lambda r: (r.identity[1] not in prefer, -len(r.idx), r.dirs[0]))
    return ranked[0], ranked[1:]


def _predict_clean(rows: list[Row], identity: tuple) -> Series | None:
    """A PREDICT clean outcome of one defended model: a predict-mode certification, else an attack's clean columns."""
    pred = sorted((r for r in rows if r.identity == identity and r.kind == "certify" and r.radii is None),
                  key=lambda r: -len(r.idx))
    if pred:
        return Series(pred[0].idx, {"clean": pred[0].per_image["correct"]}, pred[0].dirs)
    att = sorted((r for r in rows if r.identity == identity and r.kind == "attack"), key=lambda r: r.dirs[0])
    if att:
        return Series(att[0].idx, {"clean": att[0].per_image["clean"]}, att[0].dirs)
    return None


def _restrict(s: Series, idx: np.ndarray) -> Series | None:
    """s on the images idx, or None when s lacks one of them."""
    if not np.all(np.isin(idx, s.idx)):
        return None
    order = np.argsort(s.idx, kind="stable")
    pos = order[np.searchsorted(s.idx[order], idx)]
    return Series(idx, {k: v[pos] for k, v in s.arrays.items()}, s.runs)


def certified_comparisons(base: Base, radii: list[float], notes: list[str]) -> list[Comparison]:
    sha = base.own_shas
    cert = [r for r in base.rows if r.kind == "certify" and r.radii is not None]
    fixed_rows: dict[float, list[Row]] = {}
    vrs_rows: dict[tuple[str, float | None], list[Row]] = {}
    for r in cert:
        if r.family == "fixed":
            fixed_rows.setdefault(float(r.source["sigma"]), []).append(r)
        elif r.source.get("certificate") == "empirical":  # no certified radius: not on a certified frontier
            notes.append(f"{base.name}: {r.dirs[0]} ({curve_of(base, r)}) is an empirical defence (radius 0, its "
                         "published radius unsound): left off the certified comparisons, on the attack ones")
        else:
            vrs_rows.setdefault((curve_of(base, r), knob_of(r)), []).append(r)
    if not fixed_rows and not vrs_rows:
        return []
    chosen: dict[Any, Row] = {}
    for key, rs in list(fixed_rows.items()) + list(vrs_rows.items()):
        chosen[key], dropped = _pick(rs, sha)
        notes += [f"{base.name}: certification {d.dirs[0]} not used (another run at the same point: "
                  f"{chosen[key].dirs[0]})" for d in dropped]
    if not fixed_rows:
        notes.append(f"{base.name}: VRS certifications but no fixed-sigma certification of this base classifier: "
                     "no frontier")
        return []

    def series(r: Row) -> Series:
        return Series(r.idx, {"correct": r.per_image["correct"], "radius": r.radii}, r.dirs)

    fixed = {s: series(chosen[s]) for s in sorted(fixed_rows)}
    vrs = {k: series(chosen[k]) for k in sorted(vrs_rows, key=lambda k: (k[0], -1.0 if k[1] is None else k[1]))}
    common, _ = align_images(*(s.idx for s in list(fixed.values()) + list(vrs.values())))
    # clean accuracy: PREDICT where every point has it on the common images, else certify.tsv's `correct`
    preds = {}
    for key, r in chosen.items():
        p = _predict_clean(base.rows, r.identity)
        preds[key] = _restrict(p, common) if p is not None else None
    use_predict = all(p is not None for p in preds.values())
    clean_from = ("PREDICT (abstain = wrong)" if use_predict
                  else "certify.tsv correct (certified accuracy at r = 0; no PREDICT run on these images for "
                       "every point)")
    metrics = [("ACR", "acr", radius_if_correct)] + [
        (f"cert_acc@r={fmt_num(r)}", "certified", (lambda rr: lambda rad, cor: certified_at(rad, cor, rr))(r))
        for r in radii]
    out = []
    for name, kind, fn in metrics:
        def make(key, s: Series, fn=fn) -> Series:
            arrays = {"metric": fn(s.arrays["radius"], s.arrays["correct"]), "radius": s.arrays["radius"],
                      "correct": s.arrays["correct"]}
            if use_predict:
                p = _restrict(preds[key], s.idx[np.isin(s.idx, common)])
                keep = np.isin(s.idx, common)
                arrays = {k: v[keep] for k, v in arrays.items()}
                arrays["clean"] = p.arrays["clean"]
                return Series(s.idx[keep], arrays, s.runs)
            arrays["clean"] = s.arrays["correct"].astype(np.float64)
            return Series(s.idx, arrays, s.runs)

        f = {s: make(s, v) for s, v in fixed.items()}
        curves: dict[str, dict[float, Series]] = {}
        for (curve, lam), v in vrs.items():
            curves.setdefault(curve, {})[lam] = make((curve, lam), v)

        def oracle(sigmas, a, fn=fn):
            o = certified_oracle(sigmas, a["radius"], a["correct"])
            cols = np.arange(o.index.size)
            clean = np.where(o.index >= 0, a["clean"][np.maximum(o.index, 0), cols], 0.0)
            return clean, fn(o.radius, o.correct)

        c = compare(base.name, name, kind, clean_from, f, curves, oracle)
        if c is not None:
            out.append(c)
    return out


# ---- attacks ------------------------------------------------------------------------------------------------
def robust_comparisons(base: Base, notes: list[str]) -> list[Comparison]:
    att = [r for r in base.rows if r.kind == "attack" and r.per_image is not None]
    if not att:
        return []
    sha = base.own_shas
    # (attack name, norm, eps) -> defence key ("fixed", "", sigma) / ("vrs", selector, lam) -> rows
    by: dict[tuple[str, str, float], dict[tuple[str, str, float], list[Row]]] = {}
    for r in att:
        name = next(iter(r.robust))
        dkey = (("fixed", "", float(r.source["sigma"])) if r.family == "fixed"
                else ("vrs", curve_of(base, r), knob_of(r)))
        for e in r.per_image["eps"]:
            by.setdefault((name, str(r.per_image["norm"]), e), {}).setdefault(dkey, []).append(r)
    out = []

    def series_of(rows_: list[Row], eps: float) -> Series:
        """Robust under every attack in rows_ (same defence, same eps), clean from the first by name."""
        rows_ = sorted(rows_, key=lambda r: (next(iter(r.robust)), r.dirs[0]))
        common, pos = align_images(*(r.idx for r in rows_))
        robust = robust_under_all(*(r.per_image["eps"][eps][p] for r, p in zip(rows_, pos)))
        clean = rows_[0].per_image["clean"][pos[0]]
        return Series(common, {"metric": robust, "clean": clean}, [d for r in rows_ for d in r.dirs])

    def build(title: str, defences: dict[tuple[str, str, float], list[Row]], eps: float, what: str):
        fixed, curves = {}, {}
        for (fam, curve, v), rs in sorted(defences.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                            -1.0 if kv[0][2] is None else kv[0][2])):
            if len(rs) > 1 and what == "single":  # the same attack twice on one defence: keep one
                keep, dropped = _pick(rs, sha)
                notes.extend(f"{base.name}: attack {d.dirs[0]} not used (same attack and defence as "
                             f"{keep.dirs[0]})" for d in dropped)
                rs = [keep]
            s = series_of(rs, eps)
            if fam == "fixed":
                fixed[v] = s
            else:
                curves.setdefault(curve, {})[v] = s

        def oracle(sigmas, a):
            o = robust_oracle(sigmas, a["metric"], a["clean"])
            return o.clean, o.robust

        c = compare(base.name, title, "robust", "PREDICT on the clean image (attack.csv clean_predict)", fixed,
                    curves, oracle)
        if c is None:
            notes.append(f"{base.name}: {title}: no fixed-sigma defence attacked: no frontier")
        else:
            out.append(c)

    for (name, _norm, eps), defences in sorted(by.items()):
        build(f"robust_acc[{name}]@eps={fmt_num(eps)}", defences, eps, "single")
    strongest: dict[tuple[str, float], dict[tuple[str, str, float], list[Row]]] = {}
    names: dict[tuple[str, float], set] = {}
    for (name, norm, eps), defences in by.items():
        names.setdefault((norm, eps), set()).add(name)
        for dkey, rs in defences.items():
            strongest.setdefault((norm, eps), {}).setdefault(dkey, []).extend(rs)
    for (norm, eps), defences in sorted(strongest.items()):
        if len(names[(norm, eps)]) > 1:
            build(f"robust_acc[strongest {norm}]@eps={fmt_num(eps)}", defences, eps, "all")
    return out


# ---- sigma diagnostics -------------------------------------------------------------------------------------
@dataclass
class SigmaRow:
    base: str
    curve: str
    source: str
    lam: float
    n: int
    grid: list[float]
    summary: dict[str, float]
    per_class: str
    histogram: str


def sigma_diagnostics(base: Base, notes: list[str]) -> list[SigmaRow]:
    vrs = [r for r in base.rows if r.family == "vrs"]
    if not vrs:
        return []
    fixed_cert = {}
    for r in base.rows:
        if r.family == "fixed" and r.kind == "certify" and r.radii is not None:
            fixed_cert.setdefault(float(r.source["sigma"]), []).append(r)
    fixed_cert = {s: _pick(rs, base.own_shas)[0] for s, rs in sorted(fixed_cert.items())}
    out = []
    for r in sorted(vrs, key=lambda r: (base.selector_of(r), r.kind, float(r.source["lam"]), r.dirs[0])):
        if r.kind == "certify":
            sig, source = r.sigmas, "certify.tsv sigma"
            grid = r.source.get("grid")
            curve = f"VRS {str(r.source.get('certificate', '')).upper()}"
        else:
            sig, source = r.per_image["sigma_clean"], f"attack.csv sigma_clean ({next(iter(r.robust))})"
            grid = (r.source.get("median") or {}).get("grid")
            curve = "VRS"
        sig = np.asarray(sig, dtype=np.float64)
        keep = np.isfinite(sig) & (sig > 0)  # a VRS certification whose sigma was undetermined has none
        if keep.sum() < 2:
            notes.append(f"{base.name}: {r.dirs[0]}: fewer than 2 images with a chosen sigma: no sigma diagnostics")
            continue
        if not keep.all():
            source += f"; {int((~keep).sum())} images without a sigma left out"
        sig, ridx, rlab = sig[keep], r.idx[keep], r.labels[keep]
        if not grid:
            grid = sorted(fixed_cert) or sorted(set(float(s) for s in sig))
            source += "; grid: " + ("the fixed sigmas" if fixed_cert else "the observed sigmas")
        grid = sorted(float(g) for g in grid)
        oracle_sigma = None
        if fixed_cert:
            everyone = [ridx] + [f.idx for f in fixed_cert.values()]
            common, pos = align_images(*everyone)
            if common.size >= 3:
                o = certified_oracle(list(fixed_cert), np.stack([f.radii[p] for f, p in zip(fixed_cert.values(),
                                                                                            pos[1:])]),
                                     np.stack([f.per_image["correct"][p] for f, p in zip(fixed_cert.values(),
                                                                                         pos[1:])]))
                own = np.full(len(ridx), np.nan)
                own[pos[0]] = o.sigma
                oracle_sigma = own
        summ = sigma_summary(sig, grid, labels=rlab, oracle_sigma=oracle_sigma, prefix="")
        hist = " ".join(f"{g:g}:{int(summ[f'count_{g:g}'])}" for g in grid)
        per_class = " ".join(f"{k[len('mean_class'):]}:{v:.3g}" for k, v in summ.items() if k.startswith("mean_class"))
        out.append(SigmaRow(base.name, f"{curve} [{base.selector_of(r)}]", source, float(r.source["lam"]), len(sig),
                            grid, summ, per_class, hist))
    return out


# ---- everything, and its output --------------------------------------------------------------------------------
@dataclass
class Frontier:
    bases: list[Base]
    comparisons: list[Comparison]
    sigma_rows: list[SigmaRow]
    notes: list[str]


def build_frontier(rows: list[Row], radii: list[float]) -> Frontier:
    """Call after report_table.attack_names (attack names final), on the rows as read (one run each)."""
    bases = group_bases(rows)
    comparisons, sigma_rows, notes = [], [], []
    for b in bases:
        for part, what in ((lambda b=b: certified_comparisons(b, radii, notes), "certification frontier"),
                           (lambda b=b: robust_comparisons(b, notes), "attack frontier"),
                           (lambda b=b: sigma_diagnostics(b, notes), "sigma diagnostics")):
            try:
                got = part()
            except (ValueError, KeyError, TypeError, IndexError) as err:  # one odd run must not sink the report
                notes.append(f"{b.name}: {what} not computed ({type(err).__name__}: {err})")
                continue
            (sigma_rows if what == "sigma diagnostics" else comparisons).extend(got)
    return Frontier(bases, comparisons, sigma_rows, notes)


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}"


def _pm(v: float, se: float) -> str:
    return f"{v:.3f} ± {se:.3f}" if se == se else f"{v:.3f}"


def _at(p: Point) -> str:
    if p.curve == ORACLE:
        return ""
    if p.sigma is None and p.lam is None:  # a sigma search: one point
        return ""
    return f"sigma={fmt_num(p.sigma)}" if p.sigma is not None else f"lambda={fmt_num(p.lam)}"


FRONTIER_COLUMNS = ["base", "comparison", "clean_from", "curve", "sigma", "lambda", "n", "clean", "clean_se", "metric",
                    "metric_se", "gap", "gap_se", "z", "verdict"]
SIGMA_COLUMNS = ["base", "curve", "source", "lambda", "n", "mean", "std", "q25", "q75", "iqr", "log_std", "iqr_steps",
                 "spans_step", "rho_oracle", "histogram", "per_class"]


def frontier_csv(fr: Frontier) -> str:
    return to_csv(FRONTIER_COLUMNS, [
        {"base": p.base, "comparison": p.comparison, "clean_from": p.clean_from, "curve": p.curve, "sigma": p.sigma,
         "lambda": p.lam, "n": p.n, "clean": p.clean, "clean_se": p.clean_se, "metric": p.metric,
         "metric_se": p.metric_se, "gap": p.gap, "gap_se": p.gap_se, "z": p.z, "verdict": p.verdict}
        for c in fr.comparisons for p in c.points])


def sigma_csv(fr: Frontier) -> str:
    return to_csv(SIGMA_COLUMNS, [
        {"base": s.base, "curve": s.curve, "source": s.source, "lambda": s.lam, "n": s.n, "histogram": s.histogram,
         "per_class": s.per_class, **s.summary} for s in fr.sigma_rows])


def _selector_of_curve(curve: str) -> str:
    """"VRS C1 [objective radius]" -> "objective radius"."""
    return curve[curve.index(" [") + 2:-1] if " [" in curve and curve.endswith("]") else curve


def markdown(fr: Frontier) -> list[str]:
    """The "Frontier", "Sigma diagnostics" and "Oracle headroom (diagnostic)" sections of report.md."""
    md = ["## Frontier", "",
          "VRS and the other input-dependent methods (Dual RS, Multiscale, DDS: issue 18) against fixed-sigma "
          "smoothing on the same base classifier (issue 17); each curve's certificate is named in its label (DDS, an "
          "empirical defence, is on the attack comparisons only). Each table is one comparison "
          "on the images every run in it evaluated (lined up by image index); `± SE`: standard errors (binomial "
          "for accuracies, std/sqrt(n) for ACR). `gap to frontier`: the point's metric minus the fixed-sigma Pareto "
          "frontier (piecewise linear between fixed sigmas) at the same clean accuracy, paired over the same "
          "images, in standard errors; \"outside the fixed-sigma range\" where its clean accuracy is outside the "
          "fixed sigmas'. A defence attacked by several attacks of one norm at an eps is also scored under all of "
          "them (`strongest`): robust only where robust under every one. The oracle row is a diagnostic that uses "
          "the label, never a certificate.", ""]
    if not fr.comparisons:
        md += ["No comparison: no fixed-sigma run paired with a VRS run or another fixed-sigma run.", ""]
    for b in fr.bases:
        mine = [c for c in fr.comparisons if c.base == b.name]
        if not mine:
            continue
        if len(b.selectors) > 1:
            text = ("VRS selectors (one curve each, trained on one base classifier): "
                    + "; ".join(f"{sel} ({_ckpt_of(b, k)})" for k, sel in b.selectors.items())
                    + ". Fixed-sigma runs paired with them: those on these files; " + "; ".join(b.pairing) + ".")
        elif b.selector:
            text = (f"VRS selector: {b.selector}. Fixed-sigma runs paired with it: those on this file; "
                    + "; ".join(b.pairing) + ".")
        else:
            text = "Fixed-sigma runs on this file (no VRS run on it)."
        md += [f"### Base classifier {b.name}", "", text, ""]
        for c in mine:
            md += [f"#### {c.name}", "", f"Clean accuracy: {c.clean_from}." + (f" {c.note}" if c.note else ""), ""]
            if not c.points:
                continue
            md += [f"| method | sigma / lambda | clean ± SE | {c.name} ± SE | gap to frontier | n images |",
                   "|---|---|---|---|---|---|"]
            for p in c.points:
                md.append(f"| {p.curve} | {_at(p)} | {_pm(p.clean, p.clean_se)} | {_pm(p.metric, p.metric_se)} | "
                          f"{p.verdict} | {p.n} |")
            md.append("")
    if fr.notes:
        md += ["Frontier notes:", ""] + [f"- {n}" for n in fr.notes] + [""]

    md += ["## Sigma diagnostics", "",
           "The sigma each VRS run used per image (certify.tsv `sigma`; attack.csv `sigma_clean`, the sigma at the "
           "clean image): std (ddof 0), IQR (numpy linear percentiles), the number of grid steps the middle half "
           "of the images spans, the histogram over the grid (image counts), the mean per class, and Spearman's rho "
           "with the certified oracle's sigma on the same images (blank: no fixed-sigma certification on them, or "
           "constant). The base classifier's margin is in no results file: its correlation is not reported here.", ""]
    if not fr.sigma_rows:
        md += ["No VRS runs.", ""]
    else:
        md += ["| base | VRS | lambda | source | n | mean | std | IQR (q25-q75) | IQR grid steps | histogram | "
               "per class | rho oracle |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in fr.sigma_rows:
            u = s.summary
            md.append(f"| {s.base} | {s.curve} | {fmt_num(s.lam)} | {s.source} | {s.n} | {u['mean']:.3f} | "
                      f"{u['std']:.3f} | {u['iqr']:.3f} ({u['q25']:.3g}-{u['q75']:.3g}) | {int(u['iqr_steps'])} | "
                      f"{s.histogram} | {s.per_class} | {_f(u.get('rho_oracle'), 2)} |")
        md.append("")
        half = [s for s in fr.sigma_rows if math.isclose(s.lam, 0.5)]
        md += ["Issue 17's check at lambda = 0.5 (the IQR of the chosen sigma spans at least one grid step):", ""]
        md += [f"- {s.curve} ({s.source}): " + ("yes" if s.summary["spans_step"] else "no")
               + f" ({int(s.summary['iqr_steps'])} steps)" for s in half] or ["- no VRS run at lambda = 0.5"]
        md.append("")

    md += ["## Oracle headroom (diagnostic)", "",
           "Per image the grid sigma that served it best among the fixed-sigma runs (certification: the largest "
           "certified radius among the sigmas where it is correct; attacks: robust, and clean-correct if "
           "possible). **The oracle uses the label: a diagnostic of what any selector over these sigmas could "
           "reach on this base classifier, never a certificate.** If it does not beat the fixed-sigma frontier "
           "at matched clean accuracy, no selector will: change the base classifier first.", ""]
    rows = []
    for c in fr.comparisons:
        fixed = [p for p in c.points if p.curve == FIXED]
        vrs = [p for p in c.points if p.curve.startswith("VRS")]
        orc = [p for p in c.points if p.curve == ORACLE]
        if not orc or not fixed:
            continue
        bf = max(fixed, key=lambda p: p.metric)
        o = orc[0]
        per_selector: dict[str, list[Point]] = {}
        for p in vrs:
            per_selector.setdefault(_selector_of_curve(p.curve), []).append(p)
        for sel, pts in (sorted(per_selector.items()) or [("", [])]):  # one row per VRS selector
            bv = max(pts, key=lambda p: p.metric) if pts else None
            rows.append(f"| {c.base} | {c.name} | {sel} | {_pm(bf.metric, bf.metric_se)} (sigma={fmt_num(bf.sigma)}, "
                        f"clean {bf.clean:.3f}) | " + (f"{_pm(bv.metric, bv.metric_se)} (lambda={fmt_num(bv.lam)}, "
                                                       f"clean {bv.clean:.3f})" if bv else "") +
                        f" | {_pm(o.metric, o.metric_se)} | {_pm(o.clean, o.clean_se)} | {o.verdict} | {o.n} |")
    if rows:
        md += ["| base | metric | VRS selector | best fixed sigma | best VRS | oracle (diagnostic) | oracle clean | "
               "oracle gap to frontier | n images |", "|---|---|---|---|---|---|---|---|---|"] + rows + [""]
    else:
        md += ["No fixed-sigma runs to take an oracle over.", ""]
    return md


# ---- plots ----------------------------------------------------------------------------------------------------
def plot_frontier(fr: Frontier, kinds: tuple[str, ...]):
    """One panel per comparison of these kinds: fixed sigma a dashed line, each VRS curve a solid line, the oracle
    a star; standard-error bars in both directions."""
    comps = [c for c in fr.comparisons if c.kind in kinds and c.points]
    if not comps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(comps))
    nrows = -(-len(comps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.0 * nrows), squeeze=False)
    for ax in axes.ravel()[len(comps):]:
        ax.set_visible(False)
    for ax, c in zip(axes.ravel(), comps):
        curves: dict[str, list[Point]] = {}
        for p in c.points:
            curves.setdefault(p.curve, []).append(p)
        for i, (curve, pts) in enumerate(curves.items()):
            pts = sorted(pts, key=lambda p: p.lam if p.lam is not None else (p.sigma or 0.0))  # along the knob
            x, y = [p.clean for p in pts], [p.metric for p in pts]
            xe, ye = [p.clean_se for p in pts], [p.metric_se for p in pts]
            if curve == ORACLE:
                ax.errorbar(x, y, yerr=ye, xerr=xe, fmt="*", ms=12, color="k", label="oracle (diagnostic)")
                continue
            style = dict(fmt="o--", color="0.3") if curve == FIXED else dict(fmt="o-", color=f"C{i}")
            ax.errorbar(x, y, yerr=ye, xerr=xe, capsize=2, ms=4, label=curve, **style)
            for p in pts:
                ax.annotate(_at(p).replace("sigma=", "σ=").replace("lambda=", "λ="), (p.clean, p.metric),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=f"clean accuracy ({'PREDICT' if c.clean_from.startswith('PREDICT') else 'certified at r=0'})",
               ylabel=c.name, title=f"{c.base}\n{c.name} (n={c.points[0].n})")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return plt, fig


FRONTIER_PLOTS = {"frontier_robust.png": (("robust",), "Frontier: clean against robust accuracy"),
                  "frontier_certified.png": (("acr", "certified"), "Frontier: clean against ACR and certified "
                                                                     "accuracy")}
