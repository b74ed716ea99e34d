"""Attack a batch and judge the result the way the defence answers: by PREDICT (Cohen et al.'s
majority vote with a binomial test; an abstention counts as an error) and by the soft classifier.

`predict_fn(x, sigma, idx) -> (B,) int64` is any PREDICT over images x with per-image noise levels sigma
(B,) and data-set indices idx (for per-image seeds); `smoothed_predict_fn` builds it from the
certification engine `vrs.smoothing.smoothed.SmoothedClassifier`. `sigma_fn(x) -> (B,)` is the noise
level the defence deploys at x (a constant for fixed-sigma smoothing; the median-smoothed selector for
VRS).

Robust accuracy (PREDICT) at eps = mean over ALL attacked images of [PREDICT(x_adv) == y]: an abstention
(-1) never equals a label, so it counts as wrong, and images that were already misclassified (or
abstained on) clean stay in the denominator as errors.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from vrs.attacks.factory import build_attack
from vrs.smoothing.core import ABSTAIN
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed

ROW_COLUMNS = ["idx", "eps", "label", "clean_predict", "adv_predict", "correct", "soft_predict", "soft_correct",
               "clean_soft_predict", "l2", "linf", "sigma_clean", "sigma_adv", "time"]

PredictFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]
SigmaFn = Callable[[torch.Tensor], torch.Tensor]


def smoothed_predict_fn(base: torch.nn.Module, num_classes: int, n: int, alpha: float, batch_size: int,
                        seed: int = 0, precision: str = "fp32", source: str | None = None) -> PredictFn:
    """PREDICT(n, alpha) of the smoothed base classifier, with each image's noise seeded from (seed, idx)
    (the same noise for an image's clean and adversarial versions: common random numbers). source (the
    checkpoint's path) is named when the network gives non-finite logits (NonFiniteOutputError)."""
    smoothed = SmoothedClassifier(base, num_classes, 1.0, precision=precision, source=source)

    def predict(x: torch.Tensor, sigma: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
        seeds = [image_seed(seed, int(i)) for i in idx]
        return smoothed.predict(x, n, alpha, batch_size, seeds=seeds, sigma=sigma.detach().float().cpu())

    return predict


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2, L-inf) norms of x_adv - x per image."""
    d = (x_adv - x).flatten(1).float()
    return d.norm(p=2, dim=1), d.abs().amax(dim=1)


@torch.no_grad()
def clean_batch(model: torch.nn.Module, x: torch.Tensor, idx: Sequence[int], predict_fn: PredictFn,
                sigma_fn: SigmaFn) -> dict:
    """PREDICT, the deployed sigma and the soft prediction on the clean inputs (CPU tensors)."""
    sigma = sigma_fn(x).float()
    return {"predict": predict_fn(x, sigma, idx).cpu(), "sigma": sigma.cpu(), "soft": model(x).argmax(dim=1).cpu()}


def attack_batch(attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: torch.nn.Module,
                 x: torch.Tensor, y: torch.Tensor, idx: Sequence[int], eps: float, predict_fn: PredictFn,
                 sigma_fn: SigmaFn, clean: dict | None = None) -> tuple[list[dict], dict]:
    """Attack one batch at one eps; returns (rows, clean) where rows follow ROW_COLUMNS and `clean` is
    `clean_batch(...)` (computed here when not given; pass it back for the next eps of the same batch).

    attack: (x, y) -> x_adv; model: the soft-smoothed DefendedModel (its argmax is the soft prediction).
    """
    if clean is None:
        clean = clean_batch(model, x, idx, predict_fn, sigma_fn)
    start = time.perf_counter()
    if hasattr(model, "resample_noise"):
        model.resample_noise()
    x_adv = attack(x, y).detach()
    with torch.no_grad():
        sigma_adv = sigma_fn(x_adv).float()
        adv_pred = predict_fn(x_adv, sigma_adv, idx).cpu()
        soft = model(x_adv).argmax(dim=1).cpu()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    per_image = (time.perf_counter() - start) / max(1, x.shape[0])
    l2, linf = perturbation_norms(x_adv, x)
    labels = y.cpu()
    rows = []
    for j, i in enumerate(idx):
        lab = int(labels[j])
        rows.append({"idx": int(i), "eps": float(eps), "label": lab, "clean_predict": int(clean["predict"][j]),
                     "adv_predict": int(adv_pred[j]), "correct": int(int(adv_pred[j]) == lab),
                     "soft_predict": int(soft[j]), "soft_correct": int(int(soft[j]) == lab),
                     "clean_soft_predict": int(clean["soft"][j]), "l2": float(l2[j]), "linf": float(linf[j]),
                     "sigma_clean": float(clean["sigma"][j]), "sigma_adv": float(sigma_adv[j]),
                     "time": round(per_image, 4)})
    return rows, clean


def derived_seed(seed: int, *parts: int) -> int:
    """A seed from the run's seed and integer parts (SeedSequence: seeds differing in any part are unrelated)."""
    return int(np.random.SeedSequence([seed, *[int(p) & ((1 << 62) - 1) for p in parts]]).generate_state(1)[0])


def reseed(model: torch.nn.Module, seed: int, *parts: int) -> int:
    """Seed torch's global RNG (the attacks' random starts, the deployed selector's noise) and the model's
    noise generator with derived_seed(seed, *parts); returns that seed."""
    s = derived_seed(seed, *parts)
    torch.manual_seed(s)
    model.seed(s)
    return s


def attack_batch_runs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: Sequence[int],
                      runs: Sequence[tuple[dict, float, tuple]], num_classes: int, predict_fn: PredictFn, seed: int,
                      batch_key: Sequence[int]) -> Iterator[list[dict]]:
    """Attack one batch with each (attack config, eps, seed parts) of `runs`, yielding each run's rows.

    model: the DefendedModel (its defended_sigma is the deployed sigma). The clean pass is seeded from
    (seed, *batch_key, -1) and each run from (seed, *batch_key, *parts, eps): a rerun of the batch (a resume,
    another number of processes) repeats its rows exactly.
    """
    reseed(model, seed, *batch_key, -1)
    clean = clean_batch(model, x, idx, predict_fn, model.defended_sigma)
    for attack_cfg, eps, parts in runs:
        s = reseed(model, seed, *batch_key, *parts, round(eps * 1e7))
        attack = build_attack(attack_cfg, model, eps, num_classes, seed=s)
        rows, clean = attack_batch(attack, model, x, y, idx, eps, predict_fn, model.defended_sigma, clean)
        yield rows


def _num(v) -> float:
    return float(v)


def _mean(values) -> float:
    """The mean of `values`; NaN for none (an eps with no rows yet)."""
    return float(np.mean(values)) if len(values) else float("nan")


def summarize(rows: Sequence[dict], eps_values: Sequence[float]) -> dict:
    """Per-eps metrics from attack rows (dicts with ROW_COLUMNS, values as numbers or strings).

    Every accuracy is over ALL rows of that eps: an abstention (-1) is an error, never dropped from the
    denominator. Returns {"clean": {...}, "per_eps": [{eps, n, robust_acc, soft_acc, abstain_rate,
    ...}], "robust_acc": {str(eps): value}}.
    """
    by_eps: dict[float, list[dict]] = {float(e): [] for e in eps_values}
    for r in rows:
        e = _num(r["eps"])
        key = min(by_eps, key=lambda k: abs(k - e)) if by_eps else e
        if not math.isclose(key, e, rel_tol=1e-5, abs_tol=1e-9):
            continue  # rows of an eps that is not asked for now
        by_eps[key].append(r)
    per_eps = []
    clean_rows: dict[int, dict] = {}
    for e, rs in by_eps.items():
        n = len(rs)
        labels = np.array([int(_num(r["label"])) for r in rs], dtype=np.int64)
        adv = np.array([int(_num(r["adv_predict"])) for r in rs], dtype=np.int64)
        soft = np.array([int(_num(r["soft_predict"])) for r in rs], dtype=np.int64)
        per_eps.append({
            "eps": e, "n": n,
            "robust_acc": _mean(adv == labels),            # abstain (-1) != label: counted wrong
            "soft_acc": _mean(soft == labels),
            "abstain_rate": _mean(adv == ABSTAIN),
            "l2_mean": _mean([_num(r["l2"]) for r in rs]), "linf_mean": _mean([_num(r["linf"]) for r in rs]),
            "sigma_clean_mean": _mean([_num(r["sigma_clean"]) for r in rs]),
            "sigma_adv_mean": _mean([_num(r["sigma_adv"]) for r in rs]),
            "seconds_per_image": _mean([_num(r["time"]) for r in rs]),
        })
        for r in rs:
            clean_rows.setdefault(int(_num(r["idx"])), r)
    cr = list(clean_rows.values())
    labels = np.array([int(_num(r["label"])) for r in cr], dtype=np.int64)
    cp = np.array([int(_num(r["clean_predict"])) for r in cr], dtype=np.int64)
    cs = np.array([int(_num(r["clean_soft_predict"])) for r in cr], dtype=np.int64)
    k = len(cr)
    clean = {"n": k, "acc": float(np.mean(cp == labels)) if k else float("nan"),
             "abstain_rate": float(np.mean(cp == ABSTAIN)) if k else float("nan"),
             "soft_acc": float(np.mean(cs == labels)) if k else float("nan")}
    return {"clean": clean, "per_eps": per_eps,
            "robust_acc": {f"{p['eps']:g}": p["robust_acc"] for p in per_eps}}
