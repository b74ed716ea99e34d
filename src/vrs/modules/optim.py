"""Optimizer and learning-rate schedule from config, shared by the Lightning modules."""

from __future__ import annotations

from hydra.utils import instantiate

from vrs.utils import metric_names as names


def optimizers_from_config(optimizer_cfg: dict, scheduler_cfg: dict | None, params, trainer):
    """What configure_optimizers returns: the optimizer (a _partial_ config) and, if configured, its schedule.

    The schedule's `interval` (epoch | step) goes to Lightning; a CosineAnnealingLR with T_max = null runs over
    the whole fit (max_epochs, or the estimated number of steps for interval = step).
    """
    opt = instantiate(optimizer_cfg)(params)
    if not scheduler_cfg:
        return opt
    sched_cfg = dict(scheduler_cfg)
    interval = sched_cfg.pop("interval", "epoch")
    if sched_cfg.get("_target_", "").endswith("CosineAnnealingLR") and sched_cfg.get("T_max") is None:
        sched_cfg["T_max"] = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    sched = instantiate(sched_cfg)(opt)
    # name: LearningRateMonitor logs the rate as train/lr (the train/ namespace, docs/wandb.md)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "name": names.LR}}
