"""vrs-train: train a base classifier with Gaussian noise augmentation, or a VRS noise-level selector.

    vrs-train                                   # LeNet on Fashion-MNIST, sigma = 0.25
    vrs-train noise=multi                       # multi-sigma base classifier for VRS
    vrs-train experiment=smoke                  # under a minute on a CPU
    vrs-train -m noise.sigma=0.12,0.25,0.5,1.0  # one run (and W&B run) per sigma
    vrs-train experiment=vrs_fmnist             # VRS: multi-sigma base classifier, then the selector
    vrs-train experiment=vrs_fmnist base_ckpt=<base run>/checkpoints/last.ckpt   # the selector stage only
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vrs.apps import CONFIG_DIR
from vrs.apps.before_run import validate_app_config
from vrs.config_schema import check_values
from vrs.errors import ConfigError, VRSError, hydra_errors_exit, user_errors_exit
from vrs.utils.config import instantiate_dict, print_config_tree
from vrs.utils.loggers import build_loggers, finish_wandb, train_facts

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics."""
    import pytorch_lightning as pl  # here, not at the top: config errors and --help stay fast

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, data=datamodule.spec.to_dict())
    if cfg.get("ckpt_path"):  # one clear error for a corrupt, truncated or mismatched checkpoint
        from vrs.checkpoint import check_resume_checkpoint  # deferred: torch, off vrs-train's start-up path

        check_resume_checkpoint(cfg.ckpt_path, module)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = build_loggers(cfg, **train_facts(cfg))  # W&B: grouped, typed and tagged (docs/wandb.md)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


# ---- VRS: two stages in one run -------------------------------------------------------------------
def needs_base_stage(cfg: DictConfig) -> bool:
    """A selector run (module=selector) without a base classifier checkpoint trains one first."""
    module = cfg.get("module") or {}
    return str(module.get("_target_", "")).endswith("SelectorModule") and not module.get("base_ckpt")


def train_base_stage(cfg: DictConfig) -> str:
    """Stage 1: the base classifier, as `vrs-train` with module=classifier would train it, with
    `base_stage` merged over the config, in <run dir>/base. Returns its last checkpoint (the final model:
    fixed-sigma baselines certified from <run dir>/base/checkpoints/last.ckpt use the same f)."""
    out = Path(cfg.paths.output_dir) / "base"
    base = copy.deepcopy(cfg)
    with open_dict(base):
        base.module = OmegaConf.load(Path(CONFIG_DIR) / "module" / "classifier.yaml")
        base.paths.output_dir = str(out)
        base.task_name = f"{cfg.task_name}_base"
        if "wandb" in (base.get("logger") or {}):  # both stages in the experiment's W&B group
            base.logger.wandb.group = cfg.logger.wandb.group
        base.ckpt_path = None
        base.merge_with(cfg.get("base_stage") or {})
    log.info("VRS stage 1/2: multi-sigma base classifier in %s", out)
    try:
        train(base)
    finally:
        finish_wandb()
    ckpts = out / "checkpoints"
    chosen = ckpts / "last.ckpt"
    if not chosen.is_file():
        raise VRSError(f"stage 1 wrote no checkpoint in {ckpts} (callbacks=none?); train the base classifier "
                       "separately and pass base_ckpt=<file>")
    log.info("VRS stage 2/2: selector on %s", chosen)
    return str(chosen)


def run(cfg: DictConfig) -> dict[str, float]:
    """One training run, or both VRS stages when a selector has no base classifier yet."""
    check_values(cfg, "train")  # config errors (the selector stage's too) before any training
    if needs_base_stage(cfg):
        base_ckpt = train_base_stage(cfg)
        with open_dict(cfg):
            cfg.module.base_ckpt = base_ckpt
    return train(cfg)


@hydra_errors_exit
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    validate_app_config(cfg, "train")  # before any compute or output: one clear error line
    if cfg.get("print_config", True):
        print_config_tree(cfg, order=("data", "model", "noise", "module", "trainer", "logger"))
    try:
        metrics = run(cfg)
    finally:
        finish_wandb()
    out = Path(cfg.paths.output_dir)
    from pytorch_lightning.utilities.rank_zero import rank_zero_only  # deferred: Lightning, off start-up

    if rank_zero_only.rank == 0:  # under DDP, once
        log.info("outputs in %s (checkpoints: %s)", out, out / "checkpoints")
        print(f"Run directory: {out}")
        for key in sorted(k for k in metrics if k.startswith(("val/", "test/"))):
            print(f"  {key} = {metrics[key]:.4f}")
    return optimized_value(metrics, cfg.get("optimized_metric"))


def optimized_value(metrics: dict[str, float], metric: str | None) -> float | None:
    """What a Hydra sweeper (hparams_search=optuna) optimises: the final value of `optimized_metric`."""
    if not metric:
        return None
    if metric not in metrics:
        raise ConfigError("optimized_metric", metric, "a metric this run logs: " + ", ".join(sorted(metrics)))
    return metrics[metric]


if __name__ == "__main__":
    main()
