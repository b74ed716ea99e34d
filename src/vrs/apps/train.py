"""vrs-train: train a base classifier with Gaussian noise augmentation (and, later, a VRS selector).

    vrs-train                                   # LeNet on Fashion-MNIST, sigma = 0.25
    vrs-train noise=multi                       # multi-sigma base classifier for VRS
    vrs-train experiment=smoke                  # under a minute on a CPU
    vrs-train -m noise.sigma=0.12,0.25,0.5,1.0  # one run (and W&B run) per sigma
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vrs.apps import CONFIG_DIR
from vrs.errors import VRSError, user_errors_exit
from vrs.utils.config import instantiate_dict, print_config_tree
from vrs.utils.loggers import finish_wandb

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics."""
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise VRSError(f"ckpt_path={cfg.ckpt_path!r} is not a file (resume needs an existing last.ckpt)")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, data=datamodule.spec.to_dict())
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config", True):
        print_config_tree(cfg, order=("data", "model", "noise", "module", "trainer", "logger"))
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    out = Path(cfg.paths.output_dir)
    log.info("outputs in %s (checkpoints: %s)", out, out / "checkpoints")
    print(f"Run directory: {out}")
    for key in sorted(k for k in metrics if k.startswith(("val/", "test/"))):
        print(f"  {key} = {metrics[key]:.4f}")
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
