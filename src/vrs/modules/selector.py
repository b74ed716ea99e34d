"""Stage 2 of VRS: train the noise-level selector h(x, lambda) against a frozen multi-sigma base classifier.

Loss: the `objective` (vrs.selection.objectives, the Hydra group `objective`; default `paper`, docs/method.md
section 4: L = (1 - lambda) * L_CE(soft smoothed classifier) + lambda * KL(p || q)), with lambda drawn per batch
(or per sample) and fed to h; soft smoothing over `n_trf` reparameterised noise draws at temperature `tau`; h
sees its inputs with its own smoothing noise eta ~ N(0, sigma_h^2 I), as at test time under median smoothing.
An optional last stage (`finetune.epochs` > 0) unfreezes the base classifier at a low learning rate (joint
fine-tune; its batch-norm statistics stay frozen).

Validation at a few fixed lambdas (`val_lams`): the selector's test-time sigma is the median over
`val_n_h` noisy copies, the soft smoothed classifier's accuracy at that sigma is `val/acc_lam<l>`, with
`val/sigma_mean_lam<l>`, `val/kl_lam<l>` and the objective's terms `val/<term>_lam<l>` (its loss and terms at
that sigma); the unsuffixed `val/acc`, `val/sigma_mean`, `val/kl`, `val/loss`, `val/<term>` are their means over
the lambdas (`val/acc` drives checkpoint selection).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from vrs.modules.optim import optimizers_from_config
from vrs.modules.guards import NonFiniteLossGuard
from vrs.data.datamodule import to_float
from vrs.checkpoint import FORMATS, check_same_data, load_base_classifier
from vrs.errors import VRSError, check
from vrs.models import build_network
from vrs.selection.diagnostics import collect, write_diagnostics
from vrs.selection.lam import LambdaSampler, check_lambda
from vrs.selection.median import MedianSmoothing, deployed_sigma
from vrs.selection.networks import build_selector, check_sigma_range
from vrs.selection.objectives import ObjectiveInput, TrainingSplit, build_objective, objective_config, selector_step
from vrs.selection.priors import build_prior
from vrs.selection.soft import soft_smooth_log
from vrs.smoothing.noise import add_noise
from vrs.utils.config import plain
from vrs.utils import metric_names as names

log = logging.getLogger(__name__)


class SelectorModule(NonFiniteLossGuard, pl.LightningModule):
    nonfinite_what = "selector loss"
    nonfinite_hint = "lower the learning rate, or check the prior and noise settings"

    def __init__(self, selector: dict, prior: dict, optimizer: dict, data: dict, base_ckpt: str | None = None,
                 base: dict | None = None, scheduler: dict | None = None, lam: dict | None = None, n_trf: int = 4,
                 tau: float = 1.0, median: dict | None = None, val_lams: list[float] = (0.0, 0.5, 1.0),
                 val_n_h: int = 8, finetune: dict | None = None, diagnostics: dict | None = None,
                 channels_last: bool | str = "auto", objective: dict | None = None):
        super().__init__()
        selector, prior, optimizer, data, scheduler, lam, median, finetune, diagnostics, objective = map(
            plain, (selector, prior, optimizer, data, scheduler, lam, median, finetune, diagnostics, objective))
        median_cfg, val_lams, finetune = self.check_config(selector, prior, lam, n_trf, tau, median, val_lams,
                                                           val_n_h, finetune, objective)
        objective = objective_config(objective)  # None (an old checkpoint): the paper's objective
        # The frozen base classifier: from its checkpoint (training), or rebuilt from the stored spec when
        # this module is reloaded from its own checkpoint (the weights then come from its state dict).
        if base is None:
            if not base_ckpt:
                raise VRSError("module.base_ckpt is not set: the selector needs a multi-sigma base classifier "
                               "checkpoint (from `vrs-train noise=multi`), or run `vrs-train experiment=vrs_<dataset>` "
                               "to train both stages")
            net, base = load_base_classifier(base_ckpt, expect_data=data)
        else:
            check_same_data(data, base["data"], "the stored base classifier")
            net = build_network(base["net"], base["data"])
        self.save_hyperparameters({"selector": selector, "prior": prior, "optimizer": optimizer, "data": data,
                                   "base_ckpt": base_ckpt, "base": base, "scheduler": scheduler, "lam": lam,
                                   "n_trf": n_trf, "tau": tau, "median": median_cfg.to_dict(),
                                   "val_lams": val_lams, "val_n_h": val_n_h, "finetune": finetune,
                                   "diagnostics": diagnostics, "channels_last": channels_last,
                                   "objective": objective})
        self.base = net
        self.base.requires_grad_(False)
        self.selector = build_selector(selector, data, base=net)
        self.prior = build_prior(prior, self.selector.posterior)
        self.objective = build_objective(objective)
        self.lam_sampler = LambdaSampler(**(lam or {}))
        self.median_cfg = median_cfg
        self.d = data["channels"] * data["size"] ** 2
        self._channels_last = False
        self._nonfinite: torch.Tensor | None = None  # device-side flag: a non-finite training loss was seen
        self._warn_range(base)

    @staticmethod
    def check_config(selector, prior, lam=None, n_trf=4, tau=1.0, median=None, val_lams=(0.0, 0.5, 1.0),
                     val_n_h=8, finetune=None, objective=None, **_):
        """Validate the selector-stage settings (ConfigError naming the key), before any training starts.
        Returns (MedianSmoothing, val_lams as floats, finetune with defaults)."""
        if not isinstance(selector, dict) or "net" not in selector:
            raise VRSError("no selector network configured: choose one with selector=cnn|mlp|resnet20")
        if not isinstance(prior, dict) or "name" not in prior:
            raise VRSError("no noise prior configured: choose one with prior=gaussian|lognormal|uniform")
        check_sigma_range(selector.get("sigma_min"), selector.get("sigma_max"))
        build_prior(prior, selector.get("posterior", "point"))
        LambdaSampler(**(lam or {}))
        build_objective(objective)
        check(isinstance(n_trf, int) and n_trf >= 1, "module.n_trf", n_trf, "an integer >= 1")
        check(isinstance(tau, (int, float)) and tau > 0, "module.tau", tau, "a number > 0")
        check(isinstance(val_n_h, int) and val_n_h >= 1, "module.val_n_h", val_n_h, "an integer >= 1")
        check(val_lams is not None and len(val_lams) >= 1, "module.val_lams", val_lams,
              "a non-empty list of numbers in [0, 1]")
        val_lams = [check_lambda(v, "module.val_lams") for v in val_lams]
        finetune = {"epochs": 0, "lr": 1e-4, **(finetune or {})}
        check(isinstance(finetune["epochs"], int) and finetune["epochs"] >= 0, "module.finetune.epochs",
              finetune["epochs"], "an integer >= 0")
        check(isinstance(finetune["lr"], (int, float)) and finetune["lr"] > 0, "module.finetune.lr",
              finetune["lr"], "a number > 0")
        return MedianSmoothing(**(median or {})), val_lams, finetune

    def _warn_range(self, base: dict) -> None:
        noise = base.get("noise") or {}
        lo, hi = noise.get("sigma_min", noise.get("sigma")), noise.get("sigma_max", noise.get("sigma"))
        if lo is None:
            return
        if not str(noise.get("_target_", "")).endswith("LogUniformSigma"):
            log.warning("the base classifier was trained with one fixed sigma=%s; VRS needs a multi-sigma base "
                        "classifier (vrs-train noise=multi)", lo)
        elif self.selector.sigma_min < lo * 0.999 or self.selector.sigma_max > hi * 1.001:
            log.warning("selector range [%g, %g] exceeds the base classifier's training range [%g, %g]",
                        self.selector.sigma_min, self.selector.sigma_max, lo, hi)

    # ---- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # frozen batch-norm statistics and no dropout, also while fine-tuning
        return self

    def setup(self, stage: str) -> None:
        cl = self.hparams.channels_last
        if cl is True or (cl == "auto" and self.device.type == "cuda"):
            self.base.to(memory_format=torch.channels_last)
            self.selector.to(memory_format=torch.channels_last)
            self._channels_last = True
        if stage == "fit" and self.objective.needs_index:
            self._prepare_objective()

    def _prepare_objective(self) -> None:
        """Hand an objective with per-image labels the whole training split (before the loaders are built, so the
        training batches can carry their indices)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "with_index"):
            raise VRSError(f"objective={self.objective.name} needs the training split's indices: train with the "
                           "project's data module (vrs-train data=<name>), not a bare dataloader")
        dm.setup("fit")
        dm.with_index = True
        x, y = dm.splits["train"]
        base_ckpt = self.hparams.base_ckpt
        cache_dir = str(Path(base_ckpt).parent / "oracle_labels") if base_ckpt else \
            str(Path(self.trainer.default_root_dir) / "oracle_labels")
        grid = tuple(self.median_cfg.grid) if self.median_cfg.grid else None
        self.base.to(self.device)
        self.objective.prepare(TrainingSplit(self.base, self.base_forward, x, y, grid, self.device, cache_dir))

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's logits (channels_last inputs when the networks are channels_last)."""
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.base(x)

    @property
    def finetuning(self) -> bool:
        ft = self.hparams.finetune["epochs"]
        return ft > 0 and self.trainer is not None and self.current_epoch >= self.trainer.max_epochs - ft

    def on_train_epoch_start(self) -> None:
        if self.finetuning and not next(self.base.parameters()).requires_grad:
            log.info("epoch %d: joint fine-tune, base classifier unfrozen at lr=%g", self.current_epoch,
                     self.hparams.finetune["lr"])
            self.base.requires_grad_(True)

    # ---- loss ----------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, sample: bool,
                   idx: torch.Tensor | None = None):
        """(loss (B,), terms {name: (B,)}, SelectorOutput, log g_s (B, K)) of the objective at per-sample lam;
        idx: the images' training-split indices (objectives with per-image labels)."""
        res, inp = selector_step(self.selector, self.base_forward, self.objective, self.prior, x, y, lam,
                                 sigma_h=self.median_cfg.sigma_h, n_trf=self.hparams.n_trf, tau=self.hparams.tau,
                                 sample=sample, idx=idx)
        return res.loss, res.terms, inp.out, inp.log_probs

    def training_step(self, batch, batch_idx):
        x, y, *idx = batch  # (x, y, index) when the objective reads per-image labels
        lam = self.lam_sampler(x.shape[0], x.device)
        loss, terms, out, _ = self.loss_terms(x, y, lam, sample=True, idx=idx[0] if idx else None)
        loss = loss.mean()
        self._check_finite(loss)
        bs = x.shape[0]
        self.log(names.stage_key(names.TRAIN, names.LOSS), loss, batch_size=bs)
        for name, value in terms.items():  # paper: train/ce, train/kl
            self.log(names.stage_key(names.TRAIN, name), value.detach().float().mean(), batch_size=bs)
        # not prog_bar: no per-step sync
        self.log(names.stage_key(names.TRAIN, names.SIGMA_MEAN), out.sigma.mean(), batch_size=bs)
        return loss

    @torch.no_grad()
    def test_time_sigma(self, x: torch.Tensor, lam: float, n_h: int) -> torch.Tensor:
        """The deployed sigma (B,) over n_h noisy copies (`deployed_sigma`, torch's global RNG)."""
        return deployed_sigma(self.selector, x, lam, self.median_cfg, n_h)

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        bs = x.shape[0]
        accs, sigmas, kls, losses, terms = [], [], [], [], {}
        for lam in self.hparams.val_lams:
            lam_t = torch.full((bs,), lam, device=x.device)
            out = self.selector(add_noise(x, self.median_cfg.sigma_h), lam_t, sample=False)
            sigma = self.test_time_sigma(x, lam, self.hparams.val_n_h)
            log_probs = soft_smooth_log(self.base_forward, x, sigma, self.hparams.n_trf, self.hparams.tau)
            acc = (log_probs.argmax(1) == y).float().mean()
            kl = self.prior.kl(out).mean()
            # the objective at the deployed sigma (the selector's single-pass output for its other inputs)
            res = self.objective.evaluate(ObjectiveInput(x, y, lam_t, out, sigma, log_probs, self.prior))
            loss = res.loss.mean()
            self.log(names.lam_key(stage, names.ACC, lam), acc, batch_size=bs)
            self.log(names.lam_key(stage, names.SIGMA_MEAN, lam), sigma.mean(), batch_size=bs)
            self.log(names.lam_key(stage, names.KL, lam), kl, batch_size=bs)
            for name, value in res.terms.items():
                if name != "kl":  # logged above, for every objective
                    value = value.float().mean()
                    self.log(names.lam_key(stage, name, lam), value, batch_size=bs)
                    terms.setdefault(name, []).append(value)
            accs.append(acc), sigmas.append(sigma.mean()), kls.append(kl), losses.append(loss)

        def mean(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(values).mean()

        self.log(names.stage_key(stage, names.ACC), mean(accs), prog_bar=True, batch_size=bs)
        self.log(names.stage_key(stage, names.SIGMA_MEAN), mean(sigmas), prog_bar=True, batch_size=bs)
        self.log(names.stage_key(stage, names.KL), mean(kls), batch_size=bs)
        self.log(names.stage_key(stage, names.LOSS), mean(losses), batch_size=bs)
        for name, values in terms.items():
            self.log(names.stage_key(stage, name), mean(values), batch_size=bs)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = [{"params": list(self.selector.parameters())}]
        if self.hparams.finetune["epochs"] > 0:
            groups.append({"params": list(self.base.parameters()), "lr": self.hparams.finetune["lr"]})
        return optimizers_from_config(self.hparams.optimizer, self.hparams.scheduler, groups, self.trainer)

    # ---- checkpoint and diagnostics ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hp = self.hparams
        checkpoint["vrs"] = {"format": FORMATS["vrs"], "kind": "vrs", "data": hp.data, "base": hp.base,
                             "selector": hp.selector, "sigma_min": self.selector.sigma_min,
                             "sigma_max": self.selector.sigma_max, "median": hp.median, "prior": hp.prior,
                             "lam": hp.lam, "n_trf": hp.n_trf, "tau": hp.tau, "objective": hp.objective}

    def on_fit_end(self) -> None:
        cfg = self.hparams.diagnostics or {}
        if not cfg.get("enabled", True) or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "splits") or "val" not in dm.splits:
            return
        n = int(cfg.get("num_images", 512))
        x, y = dm.splits["val"]
        x = to_float(x[:n].to(self.device))
        lams = cfg.get("lams") or [i / 10 for i in range(11)]
        data = collect(self.base, self.selector, x, lams, sigma_h=self.median_cfg.sigma_h,
                       n_h=int(cfg.get("n_h", 16)), grid=self.median_cfg.grid, labels=y[:n])
        out_dir = Path(self.trainer.default_root_dir) / "diagnostics"
        write_diagnostics(data, out_dir, self.trainer.loggers)
        log.info("selector diagnostics in %s", out_dir)
