"""Robustness measured during training: Lightning callbacks that attack or certify a fixed subset at the
end of validation (every k epochs) and/or of testing, and log through `pl_module.log` (so every configured
logger, W&B included, gets the numbers).

- `EmpiricalRobustness`: for each configured attack and eps, attack the subset through the soft-smoothed
  pipeline (`vrs.attacks.DefendedModel`) and classify the adversarial examples by PREDICT (an abstention
  counts as an error). Logs `robust/acc@<attack>_<eps>` (PREDICT) and `robust/soft_acc@<attack>_<eps>`.
- `CertifiedRobustness`: Cohen's CERTIFY (small n) on the subset; for a VRS selector module the C1
  certificate of `vrs-certify` (sigma snapped to the grid, radius capped where the selector's interval
  leaves sigma's grid cell), by vrs-certify's own routine and per-image seeding (vrs.selection.certify),
  so its rows are vrs-certify's rows for the same images and seed. Logs `cert/acc@<r>` for each radius r,
  `cert/acr` and `cert/abstain`.

Key names: as above at validation end; at test end they get a `test/` prefix (`test/robust/acc@...`,
`test/cert/acr`). When several noise levels (classifier) or lambdas (VRS) are evaluated, the key ends with
`_sigma<s>` or `_lam<l>`.

Which model: a `NoisyClassifierModule` (attribute `net`) is smoothed at `sigma` (default: its training
sigma; a multi-sigma module uses its validation grid); a `SelectorModule` (attributes `base`, `selector`,
`median_cfg`) uses its median-smoothed selector at each lambda in `lams`.

Mode handling: the callbacks run with gradients enabled (outside Lightning's inference mode), keep the
networks in eval mode, freeze the parameters only while they run, and restore the module's mode and
requires_grad flags afterwards, so training continues exactly as before. They run on global rank 0 only.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from vrs.attacks.defended import NOISE_MODES, SELECTOR_GRADS, DefendedModel, SelectorSigma
from vrs.attacks.evaluate import attack_batch_runs, smoothed_predict_fn, summarize
from vrs.attacks.factory import check_attack_config, eps_list
from vrs.data.datamodule import to_float
from vrs.errors import check, check_choice
from vrs.selection.certify import VRSOptions, certify_vrs_groups
from vrs.smoothing import core
from vrs.smoothing.smoothed import SmoothedClassifier, check_sampling, image_seed
from vrs.utils.config import plain
from vrs.utils import metric_names as names

log = logging.getLogger(__name__)


@contextlib.contextmanager
def evaluation_state(module: torch.nn.Module) -> Iterator[None]:
    """Gradients on (also inside Lightning's inference mode), eval mode and frozen parameters inside;
    the module's mode and each parameter's requires_grad restored on exit."""
    training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            module.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)


def subset(trainer: pl.Trainer, stage: str, num_images: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first num_images of the stage's split, as [0,1] floats on `device` (the same images every time)."""
    split = "val" if stage == "validation" else "test"
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and getattr(dm, "splits", None) and split in dm.splits:
        x, y = dm.splits[split]
        x, y = x[:num_images], y[:num_images]
    else:
        loaders = trainer.val_dataloaders if stage == "validation" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        xs, ys, n = [], [], 0
        for xb, yb in loader:
            xs.append(xb), ys.append(yb)
            n += len(yb)
            if n >= num_images:
                break
        x, y = torch.cat(xs)[:num_images], torch.cat(ys)[:num_images]
    return to_float(x.clone()).to(device), y.clone().to(device)


class _Defence:
    """One smoothed classifier to evaluate: its base network, how it picks sigma, and a key suffix."""

    def __init__(self, base, num_classes: int, suffix: str, sigma: float | None = None, selector=None,
                 lam: float | None = None, module=None):
        self.base, self.num_classes, self.suffix = base, num_classes, suffix
        self.sigma, self.selector, self.lam, self.module = sigma, selector, lam, module

    @property
    def is_vrs(self) -> bool:
        return self.selector is not None


def defences(pl_module: pl.LightningModule, sigma, lams: Sequence[float]) -> list[_Defence]:
    """What to evaluate for this module (see the module docstring)."""
    data = (getattr(pl_module, "hparams", {}) or {}).get("data") or {}
    k = int(data.get("num_classes", 0)) or None
    if hasattr(pl_module, "selector") and hasattr(pl_module, "base") and hasattr(pl_module, "median_cfg"):
        many = len(lams) > 1
        return [_Defence(pl_module.base, k, names.lam_suffix(lam) if many else "", selector=pl_module.selector,
                         lam=float(lam), module=pl_module) for lam in lams]
    base = getattr(pl_module, "net", None)
    if base is None:
        raise TypeError(f"{type(pl_module).__name__}: a robustness callback needs a NoisyClassifierModule (net) or a "
                        "SelectorModule (base, selector, median_cfg)")
    if sigma is None:
        grid = list(getattr(pl_module, "sigma_grid", []) or [])
        if not grid:
            raise ValueError("set the callback's sigma: the module has no sigma_grid")
        sigmas = grid
    else:
        sigmas = list(sigma) if isinstance(sigma, (list, tuple)) else [sigma]
    many = len(sigmas) > 1
    return [_Defence(base, k, names.sigma_suffix(s) if many else "", sigma=float(s)) for s in sigmas]


class _RobustnessCallback(pl.Callback):
    """Shared hooks and settings; subclasses define evaluate(pl_module, x, y) -> {key: value}."""

    def __init__(self, num_images: int, every_n_epochs: int, on_validation: bool, on_test: bool, sigma, lams,
                 seed: int):
        check(isinstance(num_images, int) and num_images >= 1, "num_images", num_images, "an integer >= 1")
        check(isinstance(every_n_epochs, int) and every_n_epochs >= 1, "every_n_epochs", every_n_epochs,
              "an integer >= 1")
        lams = list(plain(lams) or [0.5])
        for lam in lams:
            check(isinstance(lam, (int, float)) and 0 <= lam <= 1, "lams", lams, "numbers in [0, 1]")
        sigma = plain(sigma)
        for s in (sigma if isinstance(sigma, list) else [sigma] if sigma is not None else []):
            check(isinstance(s, (int, float)) and s > 0, "sigma", sigma, "null, a number > 0 or a list of them")
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self.on_validation, self.on_test = bool(on_validation), bool(on_test)
        self.sigma, self.lams, self.seed = sigma, lams, int(seed)
        self.last_metrics: dict[str, float] = {}

    # -- hooks --
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.on_validation or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self._run(trainer, pl_module, "validation", prefix="")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self._run(trainer, pl_module, "test", prefix="test/")

    def _run(self, trainer, pl_module, stage: str, prefix: str) -> None:
        if trainer.global_rank != 0:
            return
        dev = pl_module.device
        # fork_rng: leave the training run's random streams (CPU and this GPU) as they were
        with evaluation_state(pl_module), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            x, y = subset(trainer, stage, self.num_images, dev)
            metrics = self.evaluate(pl_module, x, y)
        self.last_metrics = {prefix + k: v for k, v in metrics.items()}
        for key, value in self.last_metrics.items():
            pl_module.log(key, value, rank_zero_only=True)


class EmpiricalRobustness(_RobustnessCallback):
    """Attack a fixed subset and log robust accuracy under PREDICT (abstain = wrong).

    attacks: a list of attack configs as in conf/attack/<name>.yaml (name, norm, eps (number or list),
        steps, ...); num_images: the first num_images of the split; every_n_epochs: at validation end every
        k epochs; on_validation / on_test: which ends to run at; sigma: noise level(s) for a classifier
        module (null: its training sigma, or its validation grid); lams: lambdas for a VRS module;
        m, noise, tau, selector_grad, n_h: the DefendedModel (see vrs.attacks.defended); deployed_n_h:
        selector copies for the deployed sigma of a VRS module; predict_n, alpha, predict_batch_size:
        PREDICT; batch_size: images attacked together.
    """

    def __init__(self, attacks, num_images: int = 64, every_n_epochs: int = 1, on_validation: bool = True,
                 on_test: bool = True, sigma=None, lams=(0.5,), m: int = 8, noise: str = "fresh", tau: float = 1.0,
                 selector_grad: str = "straight_through", n_h: int = 8, deployed_n_h: int = 64, predict_n: int = 100,
                 alpha: float = 0.001, predict_batch_size: int = 1000, batch_size: int = 64, seed: int = 0):
        super().__init__(num_images, every_n_epochs, on_validation, on_test, sigma, lams, seed)
        attacks = plain(attacks)
        if isinstance(attacks, dict):
            attacks = [attacks]
        check(isinstance(attacks, list) and len(attacks) > 0, "attacks", attacks, "a non-empty list of attack configs")
        for a in attacks:
            check_attack_config(a)
        check_choice("noise", noise, NOISE_MODES)
        check_choice("selector_grad", selector_grad, SELECTOR_GRADS)
        check(isinstance(m, int) and m >= 1, "m", m, "an integer >= 1")
        check(isinstance(predict_n, int) and predict_n >= 1, "predict_n", predict_n, "an integer >= 1")
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        self.attacks = attacks
        self.m, self.noise, self.tau, self.selector_grad, self.n_h = m, noise, float(tau), selector_grad, int(n_h)
        self.deployed_n_h = int(deployed_n_h)
        self.predict_n, self.alpha, self.predict_batch_size = predict_n, float(alpha), int(predict_batch_size)
        self.batch_size = batch_size

    def defended_model(self, d: _Defence):
        if d.is_vrs:
            mod, lam = d.module, d.lam
            sel = SelectorSigma(d.selector, lam, d.selector.sigma_min, d.selector.sigma_max, n_h=self.n_h,
                                sigma_h=mod.median_cfg.sigma_h, grad=self.selector_grad, grid=mod.median_cfg.grid,
                                deployed=lambda x: mod.test_time_sigma(x, lam, self.deployed_n_h))
            sigma = sel
        else:
            sigma = d.sigma
        # freeze=False: the callback's evaluation_state freezes and restores the training module's flags
        return DefendedModel(d.base, sigma, m=self.m, noise=self.noise, tau=self.tau, seed=0, freeze=False)

    def evaluate(self, pl_module, x, y) -> dict[str, float]:
        out: dict[str, float] = {}
        idx = list(range(len(y)))
        for di, d in enumerate(defences(pl_module, self.sigma, self.lams)):
            k = d.num_classes or int(d.base(x[:1]).shape[1])
            model = self.defended_model(d)
            predict = smoothed_predict_fn(d.base, k, self.predict_n, self.alpha, self.predict_batch_size,
                                          seed=self.seed)
            runs = [(a, e, (ai,)) for ai, a in enumerate(self.attacks) for e in eps_list(a)]
            rows_by_attack: dict[int, list[dict]] = {}
            for start in range(0, len(y), self.batch_size):
                batch = slice(start, start + self.batch_size)
                xb, yb, ib = x[batch], y[batch], idx[batch]
                for (_, _, (ai,)), rows in zip(runs, attack_batch_runs(model, xb, yb, ib, runs, k, predict, self.seed,
                                                                        (di, start))):
                    rows_by_attack.setdefault(ai, []).extend(rows)
            for ai, a in enumerate(self.attacks):
                summary = summarize(rows_by_attack.get(ai, []), eps_list(a))
                for p in summary["per_eps"]:
                    out[names.robust_acc(a["name"], p["eps"], d.suffix)] = p["robust_acc"]
                    out[names.robust_soft_acc(a["name"], p["eps"], d.suffix)] = p["soft_acc"]
                out[names.ROBUST_CLEAN_ACC + d.suffix] = summary["clean"]["acc"]
        return {key: float(v) for key, v in out.items() if not math.isnan(v)}


class CertifiedRobustness(_RobustnessCallback):
    """Certify a fixed subset with small n and log certified accuracy at each radius and the ACR.

    n0, n, alpha, batch_size: Cohen's CERTIFY (abstentions count as wrong at every radius); radii: where
    `cert/acc@<r>` is logged. For a VRS module: certificate C1 at each lambda in `lams`, with n_h0 / n_h
    selector draws and alpha_h (null: the module's median-smoothing settings).
    """

    def __init__(self, num_images: int = 32, every_n_epochs: int = 1, on_validation: bool = True,
                 on_test: bool = True, n0: int = 20, n: int = 200, alpha: float = 0.001, batch_size: int = 1000,
                 radii=(0.0, 0.25, 0.5, 0.75, 1.0), sigma=None, lams=(0.5,), n_h0: int | None = None,
                 n_h: int | None = None, alpha_h: float | None = None, seed: int = 0):
        super().__init__(num_images, every_n_epochs, on_validation, on_test, sigma, lams, seed)
        check_sampling(n, alpha, batch_size, n0=n0)
        radii = [float(r) for r in (plain(radii) or [])]
        check(len(radii) > 0 and all(r >= 0 for r in radii), "radii", radii, "a non-empty list of radii >= 0")
        self.n0, self.n, self.alpha, self.batch_size, self.radii = n0, n, float(alpha), batch_size, radii
        self.n_h0, self.n_h, self.alpha_h = n_h0, n_h, alpha_h

    def _certify(self, d: _Defence, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(predictions with -1 = abstain, radii) for the subset."""
        if d.is_vrs:
            rows = self.certify_vrs(d, x)
            return np.array([r["predict"] for r in rows]), np.array([r["radius"] for r in rows])
        k = d.num_classes or int(d.base(x[:1]).shape[1])
        seeds = [image_seed(self.seed, i) for i in range(len(y))]
        pred, radius = SmoothedClassifier(d.base, k, d.sigma).certify(x, self.n0, self.n, self.alpha,
                                                                       self.batch_size, seeds=seeds)
        return pred.numpy(), radius.numpy()

    def certify_vrs(self, d: _Defence, x: torch.Tensor) -> list[dict]:
        """vrs-certify's C1 rows (vrs.selection.certify) for the subset x of a VRS module at d.lam.

        Image i of the subset is image i of the split and is seeded by image_seed(seed, i), as vrs-certify
        seeds it, so the rows equal `vrs-certify certify=vrs_c1 certify.lam=<lam> seed=<seed>
        certify.split=<val|test> certify.precision=fp32` (with the same n0, n, alpha and selector settings)
        on the module's checkpoint (the callback certifies in fp32)."""
        med, sel = d.module.median_cfg, d.selector
        v = VRSOptions("c1", d.lam, int(self.n_h0 or med.n_h0), int(self.n_h or med.n_h),
                       float(self.alpha_h or med.alpha_h), float(med.sigma_h), med.grid, int(med.batch_size),
                       float(sel.sigma_min), float(sel.sigma_max))
        if not v.grid:
            raise ValueError("the C1 certificate needs the module's sigma grid (median.grid); it has none")
        k = d.num_classes or int(d.base(x[:1]).shape[1])
        smoothed = SmoothedClassifier(d.base, k, v.sigma_max)
        return next(certify_vrs_groups(smoothed, sel, [(x, range(len(x)))], self.seed, v, self.n0, self.n,
                                       self.alpha, self.batch_size))

    def evaluate(self, pl_module, x, y) -> dict[str, float]:
        out: dict[str, float] = {}
        labels = y.cpu().numpy()
        for d in defences(pl_module, self.sigma, self.lams):
            pred, radius = self._certify(d, x, y)
            correct = pred == labels  # an abstention (-1) is never correct
            acc = core.certified_accuracy(radius, correct, self.radii)
            for r, a in zip(self.radii, acc):
                out[names.cert_acc(r, d.suffix)] = float(a)
            out[names.CERT_ACR + d.suffix] = core.average_certified_radius(radius, correct)
            out[names.CERT_ABSTAIN + d.suffix] = core.abstain_rate(pred)
        return out
