"""vrs-report's frontier, sigma diagnostics and oracle headroom (issue 17 section 1) on synthetic results
directories written in the apps' real formats (certify.tsv + certify.meta.json + summary.json; attack.csv +
settings.json + summary.json) with known per-image outcomes: a VRS point clearly above the fixed-sigma
frontier, one clearly below, one outside its clean-accuracy range; the oracle against a hand computation;
a known IQR of the chosen sigma; the pairing of a VRS checkpoint with fixed-sigma runs on the same file and
on its stage-1 file; the real `vrs-report` process on the same tree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import compose_config, run_app
from vrs.analysis import frontier as fr_mod
from vrs.apps.report import build_report

N_ATT = 400          # attacked images: idx = 0, 5, 10, ...
N_CERT = 40          # certified images: idx = 0, 3, 6, ...
VRS_SHA, BASE_SHA = "a" * 64, "b" * 64
GRID = [0.25, 0.5, 1.0]
RADII = [0.25, 0.5]


def outcomes(n: int, rate: float, seed: int) -> np.ndarray:
    """Exactly round(rate n) ones, at places drawn with `seed`."""
    out = np.zeros(n)
    out[np.random.default_rng(seed).permutation(n)[:round(rate * n)]] = 1
    return out


# ---- writing results directories in the apps' formats ----------------------------------------------------
def write_certify(d: Path, ckpt: Path, sha: str, idx, labels, radius, correct, sigma, vrs: dict | None = None):
    d.mkdir(parents=True)
    mode = "vrs" if vrs else "certify"
    meta = {"mode": mode, "n0": 10, "n": 1000, "alpha": 0.001, "sigma": "selector" if vrs else sigma, "seed": 0,
            "checkpoint_sha256": sha, "checkpoint": str(ckpt), "data": "fashion_mnist", "split": "test",
            "format": 1}
    if vrs:
        meta.update({"certificate": "c1", "lam": vrs["lam"], "n_h0": 8, "n_h": 100, "alpha_h": 0.001,
                     "sigma_h": 0.5, "grid": GRID, "sigma_range": [0.25, 1.0]})
    (d / "certify.meta.json").write_text(json.dumps(meta))
    cols = ["idx", "label", "predict", "radius", "correct", "time", "sigma"]
    cols += ["sigma_lo", "sigma_hi", "radius_cohen", "cert"] if vrs else []
    lines = ["\t".join(cols)]
    sig = np.broadcast_to(np.asarray(vrs["sigma"] if vrs else sigma, dtype=float), np.shape(idx))
    for i, y, r, c, s in zip(idx, labels, radius, correct, sig):
        vals = [int(i), int(y), int(y) if c else -1, f"{r if c else 0.0:.6f}", int(c), "0.0100", f"{s:g}"]
        vals += [f"{s:g}", f"{s:g}", f"{r if c else 0.0:.6f}", "c1" if c else "abstain"] if vrs else []
        lines.append("\t".join(map(str, vals)))
    (d / "certify.tsv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text(json.dumps({"num_images": len(idx)}))


def write_attack(d: Path, ckpt: Path, sha: str, idx, labels, clean, robust: dict, info: dict, name="pgd",
                 sigma_clean=None):
    d.mkdir(parents=True)
    settings = {"checkpoint": str(ckpt), "checkpoint_sha256": sha, "data": "fashion_mnist", "split": "test",
                "attack": {"name": name, "norm": "l2", "eps": sorted(robust), "steps": 5},
                "defense": {"m": 2, "noise": "gaussian"}, "predict": {"n": 100}, "seed": 0}
    (d / "settings.json").write_text(json.dumps(settings))
    cols = ["idx", "eps", "label", "clean_predict", "adv_predict", "correct", "soft_predict", "soft_correct",
            "clean_soft_predict", "l2", "linf", "sigma_clean", "sigma_adv", "time"]
    lines = [",".join(cols)]
    sc = np.broadcast_to(np.asarray(sigma_clean if sigma_clean is not None else info.get("sigma", 0.5), dtype=float),
                         np.shape(idx))
    for eps, rob in robust.items():
        for i, y, c, r, s in zip(idx, labels, clean, rob, sc):
            cp, ap = (int(y) if c else (int(y) + 1) % 10), (int(y) if r else -1)
            lines.append(",".join(map(str, [int(i), eps, int(y), cp, ap, int(r), ap, int(r), cp, eps, eps / 10,
                                            f"{s:g}", f"{s:g}", 0.01])))
    (d / "attack.csv").write_text("\n".join(lines) + "\n")
    per_eps = [{"eps": e, "n": len(idx), "robust_acc": float(np.mean(r)), "seconds_per_image": 0.01,
                "sigma_clean_mean": float(np.mean(sc))} for e, r in sorted(robust.items())]
    summary = {"attack": name, "norm": "l2", "eps": sorted(robust), "complete": True, "per_eps": per_eps,
               "clean": {"n": len(idx), "acc": float(np.mean(clean))}, "defense": info, "settings": settings,
               "subset": {"count": len(idx)}}
    (d / "summary.json").write_text(json.dumps(summary))


# Attack at eps 0.5: fixed sigma (clean, robust) and VRS lambda -> (clean, robust).
FIXED_ATT = {0.25: (0.90, 0.30), 0.5: (0.80, 0.50), 1.0: (0.60, 0.55)}
VRS_ATT = {0.0: (0.85, 0.60), 0.5: (0.70, 0.35), 1.0: (0.50, 0.50)}  # above (+0.2), below (-0.175), outside


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/: fixed-sigma certifications on the stage-1 file models/vrs/base/checkpoints/last.ckpt, VRS C1
    certifications of models/vrs/checkpoints/last.ckpt (training config next to it: objective radius, no
    fine-tuning), fixed-sigma and VRS attacks on the VRS file, and a second attack (sigma_down) on VRS at
    lambda 0.5. Returns (root, the per-image arrays written)."""
    root = tmp_path_factory.mktemp("frontier")
    vrs_run = root / "models" / "vrs"
    (vrs_run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({
        "module": {"_target_": "vrs.modules.selector.SelectorModule", "base_ckpt": None, "finetune": {"epochs": 0}},
        "objective": {"_target_": "vrs.selection.objectives.radius.RadiusObjective", "weight": 0.5},
        "data": {"name": "fashion_mnist"}}), vrs_run / ".hydra" / "config.yaml")
    vrs_ckpt = vrs_run / "checkpoints" / "last.ckpt"
    base_ckpt = vrs_run / "base" / "checkpoints" / "last.ckpt"
    res = root / "results"
    arrays: dict = {"cert": {}, "att": {}}

    idx = np.arange(N_CERT) * 3
    labels = np.arange(N_CERT) % 4
    for k, s in enumerate(GRID):
        rng = np.random.default_rng(10 + k)
        correct = outcomes(N_CERT, [0.9, 0.75, 0.5][k], 20 + k)
        radius = np.round(rng.uniform(0.01, 2 * s, N_CERT), 6)
        arrays["cert"][s] = (radius, correct)
        order = np.random.default_rng(k).permutation(N_CERT)  # rows in any order: lined up by idx
        write_certify(res / "certify_fixed" / str(k), base_ckpt, BASE_SHA, idx[order], labels[order], radius[order],
                      correct[order], s)
    # VRS sigma: lambda 0.5 -> 10 images at 0.25, 20 at 0.5, 10 at 1.0 (by label: IQR inside one grid cell);
    # lambda 0 -> half at 0.25, half at 1.0 (spans two steps)
    sig05 = np.array([0.25] * 10 + [0.5] * 20 + [1.0] * 10)
    sig0 = np.where(np.arange(N_CERT) % 2 == 0, 0.25, 1.0)
    for k, (lam, sig) in enumerate(((0.0, sig0), (0.5, sig05))):
        rng = np.random.default_rng(30 + k)
        correct = outcomes(N_CERT, 0.7, 40 + k)
        radius = np.round(rng.uniform(0.01, 1.5, N_CERT), 6)
        arrays["cert"][("vrs", lam)] = (radius, correct, sig)
        write_certify(res / "certify_vrs" / str(k), vrs_ckpt, VRS_SHA, idx, labels, radius, correct, None,
                      vrs={"lam": lam, "sigma": sig})

    aidx = np.arange(N_ATT) * 5
    alab = np.arange(N_ATT) % 10
    for k, (s, (c, r)) in enumerate(FIXED_ATT.items()):
        clean, robust = outcomes(N_ATT, c, 100 + k), outcomes(N_ATT, r, 200 + k)
        arrays["att"][s] = (clean, robust)
        write_attack(res / "attack" / f"fixed{k}", vrs_ckpt, VRS_SHA, aidx, alab, clean, {0.5: robust},
                     {"kind": "vrs", "defense": "fixed_sigma", "sigma": s, "m": 2})
    for k, (lam, (c, r)) in enumerate(VRS_ATT.items()):
        clean, robust = outcomes(N_ATT, c, 300 + k), outcomes(N_ATT, r, 400 + k)
        arrays["att"][("vrs", lam)] = (clean, robust)
        info = {"kind": "vrs", "defense": "vrs", "lam": lam, "median": {"grid": GRID}, "m": 2}
        write_attack(res / "attack" / f"vrs{k}", vrs_ckpt, VRS_SHA, aidx, alab, clean, {0.5: robust}, info,
                     sigma_clean=0.5)
        if lam == 0.5:  # a second, adaptive attack: robust on a subset of the pgd-robust images
            second = robust * outcomes(N_ATT, 0.8, 500)
            arrays["att"]["second"] = second
            write_attack(res / "attack" / "vrs_second", vrs_ckpt, VRS_SHA, aidx, alab, clean, {0.5: second}, info,
                         name="sigma_down", sigma_clean=0.5)
    return res, arrays


def report(res: Path, out: Path):
    return build_report(compose_config(f"report.inputs={res}", f"report.out_dir={out}",
                                       f"report.radii=[{','.join(map(str, RADII))}]", config_name="report",
                                       output_dir=out))


@pytest.fixture(scope="module")
def made(tree, tmp_path_factory):
    res, _ = tree
    out = tmp_path_factory.mktemp("rep")
    rep = report(res, out)
    with open(out / "frontier.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rep, out, rows


def pick(rows, comparison, curve_start, **at):
    got = [r for r in rows if r["comparison"] == comparison and r["curve"].startswith(curve_start)
           and all(r[k] != "" and float(r[k]) == v for k, v in at.items())]
    assert len(got) == 1, (comparison, curve_start, at, got)
    return got[0]


def test_vrs_points_above_below_and_outside_the_frontier(made, tree):
    rep, out, rows = made
    _, arr = tree
    comp = "robust_acc[pgd l2]@eps=0.5"
    sig = sorted(FIXED_ATT)
    fc = np.stack([arr["att"][s][0] for s in sig])
    fm = np.stack([arr["att"][s][1] for s in sig])
    above = pick(rows, comp, "VRS", **{"lambda": 0.0})
    below = pick(rows, comp, "VRS", **{"lambda": 0.5})
    outside = pick(rows, comp, "VRS", **{"lambda": 1.0})
    # the frontier at clean 0.85 is halfway between sigma 0.5 (0.8, 0.5) and 0.25 (0.9, 0.3): 0.4
    g = fr_mod.frontier_gap(sig, fc, fm, *arr["att"][("vrs", 0.0)])
    assert g.frontier == pytest.approx(0.4) and g.gap == pytest.approx(0.2)
    assert float(above["gap"]) == pytest.approx(0.2) and float(above["z"]) > 2
    assert float(above["gap_se"]) == pytest.approx(g.se, rel=1e-5) and above["verdict"] == g.verdict
    assert float(below["gap"]) == pytest.approx(0.35 - 0.525) and float(below["z"]) < -2
    assert outside["verdict"] == "outside the fixed-sigma range" and outside["gap"] == ""
    for r in (above, below, outside):
        assert int(r["n"]) == N_ATT and r["clean_from"].startswith("PREDICT")
    f = pick(rows, comp, "fixed sigma", sigma=0.5)
    assert float(f["clean"]) == pytest.approx(0.8) and float(f["metric"]) == pytest.approx(0.5)
    assert float(f["metric_se"]) == pytest.approx(np.sqrt(0.5 * 0.5 / N_ATT))
    md = rep.markdown
    for section in ("## Frontier", "## Sigma diagnostics", "## Oracle headroom (diagnostic)", f"#### {comp}"):
        assert section in md
    assert "| VRS [objective radius (weight=0.5)] | lambda=0 | 0.850 ± 0.018 | 0.600 ± 0.024 | +0.200 (" in md
    assert "outside the fixed-sigma range" in md
    assert "uses the label" in md and "never a certificate" in md
    for png in ("frontier_robust.png", "frontier_certified.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md


def test_strongest_attack_is_the_per_image_worst_case(made, tree):
    _, _, rows = made
    _, arr = tree
    comp = "robust_acc[strongest l2]@eps=0.5"
    worst = np.minimum(arr["att"][("vrs", 0.5)][1], arr["att"]["second"])
    assert float(pick(rows, comp, "VRS", **{"lambda": 0.5})["metric"]) == pytest.approx(worst.mean())
    # a defence attacked once keeps its one attack's number
    assert float(pick(rows, comp, "VRS", **{"lambda": 0.0})["metric"]) == pytest.approx(0.6)
    # an attack on VRS alone (no fixed-sigma defence under it) has no frontier of its own: it is named
    assert not [r for r in rows if r["comparison"] == "robust_acc[sigma_down l2]@eps=0.5"]
    assert "robust_acc[sigma_down l2]@eps=0.5: no fixed-sigma defence attacked: no frontier" in made[0].markdown


def test_oracle_equals_a_hand_computation(made, tree):
    rep, _, rows = made
    _, arr = tree
    # certified: per image, the largest radius among the sigmas where it is correct
    best = []
    for i in range(N_CERT):
        rs = [arr["cert"][s][0][i] for s in GRID if arr["cert"][s][1][i]]
        best.append(max(rs) if rs else None)
    acr = np.mean([b if b is not None else 0.0 for b in best])
    o = pick(rows, "ACR", "oracle")
    assert float(o["metric"]) == pytest.approx(acr, abs=1e-6) and int(o["n"]) == N_CERT
    assert float(o["clean"]) == pytest.approx(np.mean([b is not None for b in best]))
    # more clean accuracy than every fixed sigma: compared, paired, with the fixed sigma of most clean accuracy
    r25, c25 = arr["cert"][0.25]
    d = np.array([b if b is not None else 0.0 for b in best]) - np.where(c25 > 0, r25, 0.0)
    assert o["verdict"].startswith("outside the fixed-sigma range (more clean accuracy than every fixed sigma; "
                                   f"metric {d.mean():+.3f} ({d.mean() / (d.std(ddof=1) / np.sqrt(N_CERT)):+.1f} SE)"
                                   " against sigma=0.25)")
    for r in RADII:
        hand = np.mean([b is not None and b >= r for b in best])
        assert float(pick(rows, f"cert_acc@r={r:g}", "oracle")["metric"]) == pytest.approx(hand)
    # the certify comparison's clean accuracy: certify.tsv's correct (no PREDICT run on the stage-1 file)
    assert pick(rows, "ACR", "oracle")["clean_from"].startswith("certify.tsv correct")
    # robust: an image counts when it is robust at some sigma; its clean outcome is the one at that sigma
    rob = np.stack([arr["att"][s][1] for s in sorted(FIXED_ATT)])
    cle = np.stack([arr["att"][s][0] for s in sorted(FIXED_ATT)])
    ro = pick(rows, "robust_acc[pgd l2]@eps=0.5", "oracle")
    assert float(ro["metric"]) == pytest.approx(rob.max(0).mean())
    hand_clean = []
    for i in range(N_ATT):
        scores = [2 * rob[k, i] + cle[k, i] for k in range(3)]
        k = int(np.argmax(scores))
        hand_clean.append(cle[k, i] if max(scores) > 0 else 0.0)
    assert float(ro["clean"]) == pytest.approx(np.mean(hand_clean))
    assert "| fashion_mnist: vrs (sha256 aaaaaaaa) | ACR |" in rep.markdown  # the headroom table


def test_pairing_and_sigma_diagnostics(made, tree):
    rep, out, rows = made
    _, arr = tree
    # one base classifier: the certifications on the stage-1 file joined the VRS checkpoint's group
    assert {r["base"] for r in rows} == {"fashion_mnist: vrs (sha256 aaaaaaaa)"}
    assert "stage-1 checkpoint" in rep.markdown and "objective radius (weight=0.5)" in rep.markdown
    assert {r["curve"] for r in rows if r["comparison"] == "ACR"} == {
        "fixed sigma", "VRS C1 [objective radius (weight=0.5)]", "oracle (diagnostic, uses the label)"}
    with open(out / "sigma_diagnostics.csv", newline="") as fh:
        sig = list(csv.DictReader(fh))
    half = next(s for s in sig if s["source"] == "certify.tsv sigma" and float(s["lambda"]) == 0.5)
    assert float(half["q25"]) == pytest.approx(0.4375) and float(half["q75"]) == pytest.approx(0.625)
    assert float(half["iqr"]) == pytest.approx(0.1875) and float(half["spans_step"]) == 0
    assert half["histogram"] == "0.25:10 0.5:20 1:10"
    # per class (label = position mod 4): class 0 holds positions 0, 4, ..., 36
    per_class = dict(kv.split(":") for kv in half["per_class"].split())
    assert float(per_class["0"]) == pytest.approx(np.mean(arr["cert"][("vrs", 0.5)][2][0::4]), rel=1e-3)
    zero = next(s for s in sig if s["source"] == "certify.tsv sigma" and float(s["lambda"]) == 0.0)
    assert float(zero["spans_step"]) == 1 and int(float(zero["iqr_steps"])) == 2
    # rho with the certified oracle's sigma, by hand
    radius = np.stack([arr["cert"][s][0] for s in GRID])
    correct = np.stack([arr["cert"][s][1] for s in GRID])
    osig = np.where(correct.any(0), np.array(GRID)[np.argmax(np.where(correct > 0, radius, -np.inf), 0)], np.nan)
    from vrs.analysis.sigma_spread import rank_correlation
    assert float(half["rho_oracle"]) == pytest.approx(rank_correlation(arr["cert"][("vrs", 0.5)][2], osig), abs=1e-5)
    assert "- VRS C1 [objective radius (weight=0.5)] (certify.tsv sigma): no (0 steps)" in rep.markdown
    # attack rows: sigma_clean, constant 0.5 -> std 0
    att = [s for s in sig if s["source"].startswith("attack.csv sigma_clean")]
    assert att and all(float(s["std"]) == 0 for s in att)


def test_unpaired_stage1_when_fine_tuned(tree, tmp_path):
    """A fine-tuned base classifier is not the stage-1 file: the certifications there stay their own group."""
    import shutil

    res, _ = tree
    copy = tmp_path / "copy"
    shutil.copytree(res.parent, copy)
    cfg = copy / "models" / "vrs" / ".hydra" / "config.yaml"
    c = OmegaConf.load(cfg)
    c.module.finetune.epochs = 2
    OmegaConf.save(c, cfg)
    for f in (copy / "results").rglob("*.json"):  # the recorded checkpoint paths point into the copy
        f.write_text(f.read_text().replace(str(res.parent), str(copy)))
    rep = report(copy / "results", tmp_path / "rep")
    bases = {p.base for c in rep.frontier.comparisons for p in c.points}
    assert bases == {"fashion_mnist: vrs (sha256 aaaaaaaa)", "fashion_mnist: vrs/base (sha256 bbbbbbbb)"}
    assert "its base classifier was fine-tuned (2 epochs)" in rep.markdown
    # the VRS certifications lost their fixed-sigma partner: named, no frontier for them
    assert "VRS certifications but no fixed-sigma certification of this base classifier" in rep.markdown


@pytest.mark.slow  # a vrs-report process
def test_the_real_process(tree, tmp_path):
    res, _ = tree
    proc = run_app("report", f"report.inputs={res}", f"report.out_dir={tmp_path / 'rep'}", "report.radii=[0.5]",
                   root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Frontier" in md and "## Oracle headroom (diagnostic)" in md
    assert (tmp_path / "rep" / "frontier.csv").read_text().startswith("base,comparison,clean_from,curve")


def write_predict(d: Path, ckpt: Path, sha: str, idx, labels, correct, sigma):
    """A `certify.mode=predict` results directory (PREDICT's clean accuracy at a fixed sigma)."""
    d.mkdir(parents=True)
    meta = {"mode": "predict", "n0": 10, "n": 1000, "alpha": 0.001, "sigma": sigma, "seed": 0,
            "checkpoint_sha256": sha, "checkpoint": str(ckpt), "data": "fashion_mnist", "split": "test", "format": 1}
    (d / "certify.meta.json").write_text(json.dumps(meta))
    lines = ["idx\tlabel\tpredict\tcorrect\ttime\tsigma"]
    lines += [f"{int(i)}\t{int(y)}\t{int(y) if c else -1}\t{int(c)}\t0.0100\t{sigma:g}"
              for i, y, c in zip(idx, labels, correct)]
    (d / "certify.tsv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text(json.dumps({"num_images": len(idx)}))


def test_certified_frontier_uses_predict_clean_when_every_point_has_it(tmp_path):
    """Fixed-sigma certifications on the VRS file with PREDICT runs on the same images, and a VRS point whose
    attack run gives its PREDICT clean accuracy: the comparison uses PREDICT's clean accuracy everywhere, the
    oracle's clean outcome being PREDICT's at the oracle's sigma."""
    n, res = 30, tmp_path / "results"
    ckpt = tmp_path / "elsewhere" / "vrs.ckpt"  # no training config next to it: labelled by its path
    idx, labels = np.arange(n) * 2, np.arange(n) % 3
    radius, correct, pclean = {}, {}, {}
    for k, s in enumerate(GRID):
        correct[s] = outcomes(n, [0.9, 0.7, 0.5][k], 60 + k)
        radius[s] = np.round(np.random.default_rng(70 + k).uniform(0.01, 2 * s, n), 6)
        pclean[s] = outcomes(n, [0.95, 0.8, 0.6][k], 80 + k)
        write_certify(res / "cert" / str(k), ckpt, VRS_SHA, idx, labels, radius[s], correct[s], s)
        write_predict(res / "pred" / str(k), ckpt, VRS_SHA, idx, labels, pclean[s], s)
    vc, vr, vclean = outcomes(n, 0.7, 90), np.round(np.random.default_rng(91).uniform(0.01, 1.0, n), 6), \
        outcomes(n, 0.85, 92)
    write_certify(res / "vrs", ckpt, VRS_SHA, idx, labels, vr, vc, None,
                  vrs={"lam": 0.5, "sigma": np.full(n, 0.5)})
    write_attack(res / "att", ckpt, VRS_SHA, idx, labels, vclean, {0.5: outcomes(n, 0.4, 93)},
                 {"kind": "vrs", "defense": "vrs", "lam": 0.5, "median": {"grid": GRID}, "m": 2})
    rep = report(res, tmp_path / "rep")
    acr = next(c for c in rep.frontier.comparisons if c.name == "ACR")
    assert acr.clean_from == "PREDICT (abstain = wrong)"
    pts = {(p.curve, p.sigma, p.lam): p for p in acr.points}
    for s in GRID:
        assert pts[("fixed sigma", s, None)].clean == pytest.approx(pclean[s].mean())
    vrs = pts[("VRS C1 [checkpoint elsewhere/vrs.ckpt]", None, 0.5)]
    assert vrs.clean == pytest.approx(vclean.mean())
    rad, cor = np.stack([radius[s] for s in GRID]), np.stack([correct[s] for s in GRID])
    best = np.argmax(np.where(cor > 0, rad, -np.inf), 0)
    hand = np.where(cor.any(0), np.stack([pclean[s] for s in GRID])[best, np.arange(n)], 0.0)
    oracle = pts[("oracle (diagnostic, uses the label)", None, None)]
    assert oracle.clean == pytest.approx(hand.mean())
    assert oracle.metric == pytest.approx(np.where(cor.any(0), rad[best, np.arange(n)], 0).mean(), abs=1e-6)
    g = fr_mod.frontier_gap(GRID, np.stack([pclean[s] for s in GRID]),
                            np.stack([np.where(correct[s] > 0, radius[s], 0.0) for s in GRID]), vclean,
                            np.where(vc > 0, vr, 0.0))
    assert vrs.verdict == g.verdict


SELECTORS = {"paper": None, "radius": "vrs.selection.objectives.radius.RadiusObjective",
             "adversarial": "vrs.selection.objectives.adversarial.AdversarialObjective"}


def several_selectors(root: Path, rule1: bool = False) -> Path:
    """benchmarks/vrs_frontier.py's layout: one stage-1 base classifier train/base/checkpoints/last.ckpt, three VRS
    selectors trained on it (train/{paper,radius,adversarial}, `base_ckpt=` the stage-1 file, no fine-tuning),
    fixed-sigma certifications and attacks on the stage-1 file, VRS certifications and attacks of each selector.
    rule1: the fixed-sigma attack at sigma 0.5 ran on the radius selector's file instead (rule 1 for it)."""
    base_ckpt = root / "train" / "base" / "checkpoints" / "last.ckpt"
    res = root / "results"
    idx, labels = np.arange(N_CERT) * 3, np.arange(N_CERT) % 4
    aidx, alab = np.arange(N_ATT) * 5, np.arange(N_ATT) % 10
    for k, s in enumerate(GRID):
        correct = outcomes(N_CERT, [0.9, 0.75, 0.5][k], 20 + k)
        radius = np.round(np.random.default_rng(10 + k).uniform(0.01, 2 * s, N_CERT), 6)
        write_certify(res / "certify_fixed" / str(k), base_ckpt, BASE_SHA, idx, labels, radius, correct, s)
        c, r = FIXED_ATT[s]
        on = (root / "train" / "radius" / "checkpoints" / "last.ckpt", "2" * 64) if rule1 and s == 0.5 \
            else (base_ckpt, BASE_SHA)
        write_attack(res / "attack_fixed" / str(k), *on, aidx, alab, outcomes(N_ATT, c, 100 + k),
                     {0.5: outcomes(N_ATT, r, 200 + k)}, {"kind": "vrs", "defense": "fixed_sigma", "sigma": s, "m": 2})
    for j, (name, target) in enumerate(SELECTORS.items()):
        run = root / "train" / name
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({
            "module": {"_target_": "vrs.modules.selector.SelectorModule", "base_ckpt": str(base_ckpt),
                       "finetune": {"epochs": 0}},
            "objective": {"_target_": target} if target else None, "base_ckpt": str(base_ckpt),
            "data": {"name": "fashion_mnist"}}), run / ".hydra" / "config.yaml")
        ckpt, sha = run / "checkpoints" / "last.ckpt", str(j + 1) * 64
        for k, lam in enumerate((0.0, 0.5)):
            sig = np.where(np.arange(N_CERT) % (2 + k) == 0, 0.25, 1.0)
            correct = outcomes(N_CERT, 0.7, 40 + 10 * j + k)
            radius = np.round(np.random.default_rng(30 + 10 * j + k).uniform(0.01, 1.5, N_CERT), 6)
            write_certify(res / f"certify_{name}" / str(k), ckpt, sha, idx, labels, radius, correct, None,
                          vrs={"lam": lam, "sigma": sig})
            c, r = VRS_ATT[lam]
            write_attack(res / f"attack_{name}" / str(k), ckpt, sha, aidx, alab, outcomes(N_ATT, c, 300 + 10 * j + k),
                         {0.5: outcomes(N_ATT, r, 400 + 10 * j + k)},
                         {"kind": "vrs", "defense": "vrs", "lam": lam, "median": {"grid": GRID}, "m": 2},
                         sigma_clean=0.5)
    return res


@pytest.mark.parametrize("rule1", [False, True], ids=["stage1", "stage1+same-file"])
def test_every_selector_trained_on_one_stage1_file_gets_the_frontier(tmp_path, rule1):
    """Fixed-sigma runs on a stage-1 file pair with EVERY VRS selector trained on it (rule 2), also when a
    fixed-sigma run on one selector's own file joins in (rule 1): one base classifier, the fixed-sigma curve once
    and one curve per selector, each VRS point with its gap; sigma diagnostics (rho with the oracle's sigma) and
    oracle headroom for every selector."""
    res = several_selectors(tmp_path, rule1)
    rep = report(res, tmp_path / "rep")
    md = rep.markdown
    assert "no fixed-sigma certification of this base classifier" not in md
    assert "no fixed-sigma defence attacked" not in md
    with open(tmp_path / "rep" / "frontier.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["base"] for r in rows}) == 1
    labels = {"paper": "objective paper", "radius": "objective radius", "adversarial": "objective adversarial"}
    for comp, prefix in (("ACR", "VRS C1"), ("cert_acc@r=0.5", "VRS C1"), ("robust_acc[pgd l2]@eps=0.5", "VRS")):
        got = [r for r in rows if r["comparison"] == comp]
        assert sorted(float(r["sigma"]) for r in got if r["curve"] == "fixed sigma") == GRID  # once, not per selector
        assert sum(r["curve"].startswith("oracle") for r in got) == 1
        for sel in labels.values():
            pts = [r for r in got if r["curve"] == f"{prefix} [{sel}]"]
            assert sorted(float(r["lambda"]) for r in pts) == [0.0, 0.5], (comp, sel, {r["curve"] for r in got})
            assert all(r["verdict"] for r in pts)
            if comp.startswith("robust"):  # lambda 0: (0.85, 0.60), inside the fixed-sigma range: a gap
                assert next(r for r in pts if float(r["lambda"]) == 0)["gap"] != ""
    with open(tmp_path / "rep" / "sigma_diagnostics.csv", newline="") as fh:
        sig = list(csv.DictReader(fh))
    for sel in labels.values():
        cert = [s for s in sig if s["curve"] == f"VRS C1 [{sel}]"]
        assert len(cert) == 2 and all(s["rho_oracle"] != "" for s in cert), (sel, sig)
        assert [s for s in sig if s["curve"] == f"VRS [{sel}]"]
        assert f"- VRS C1 [{sel}] (certify.tsv sigma):" in md
    headroom = md[md.index("## Oracle headroom (diagnostic)"):]
    for sel in labels.values():
        assert f"| {sel} |" in headroom, headroom


def test_selector_label_names_sees_base(tmp_path):
    """Two selectors trained with one objective, one seeing the base classifier, get different curve labels."""
    from vrs.apps.report_frontier import describe_objective

    def run(name: str, sees: bool) -> str:
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / "checkpoints").mkdir()
        OmegaConf.save(OmegaConf.create({"objective": {"_target_": "vrs.selection.objectives.oracle_labels.OracleLabels",
                                                       "reweight": False},
                                         "selector": {"sees_base": sees}}), run_dir / ".hydra" / "config.yaml")
        return describe_objective(str(run_dir / "checkpoints" / "last.ckpt"))

    plain, seeing = run("plain", False), run("sees", True)
    assert plain == "objective oracle_labels (reweight=False)"
    assert seeing == plain + ", selector sees the base classifier"
