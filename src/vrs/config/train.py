"""vrs-train's nodes whose values our code constrains beyond what their targets check (conf/model, module,
optimizer, scheduler, trainer), typed, and the rules between train's nodes (`check_train`). The other keys of these
`_target_` nodes are their targets' parameters (vrs.config.tree.check_targets); Lightning's Trainer is built with
the config (check_trainer) and refuses what it refuses itself (devices, accelerator, precision, strategy, profiler,
fast_dev_run < 0, a non-bool benchmark, ...), so no key of it is restated here. These keys it takes without a word
(Lightning 2.6: max_epochs=0, min_epochs=-1, accumulate_grad_batches=0, gradient_clip_val=-1, a string for a
flag), hence TrainerConfig."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from vrs.config.data import train_split_size
from vrs.config.rules import (ABSENT, AUTO_BOOL, BOOL, COMPILE, HYDRA_KEYS, TEXT, Checked, either, integer, key,
                              list_of, number, one_of, optional)
from vrs.config.rules import _is_int as is_int
from vrs.errors import ConfigError, VRSError, check, find_user_error, first_line


@dataclass(kw_only=True)
class ModelConfig(Checked):
    """Network depths are the networks' own checks (6n+2 for ResNets, ...); the input shape: check_train."""

    NODE = "model"
    CLOSED = False

    width: int = key(integer(1), absent_ok=True)
    hidden: int = key(integer(1), absent_ok=True)
    dropout: float = key(number(ge=0, lt=1), absent_ok=True)


@dataclass(kw_only=True)
class ModuleConfig(Checked):
    NODE = "module"
    CLOSED = False

    channels_last: Any = key(AUTO_BOOL, absent_ok=True)
    compile: Any = key(COMPILE, absent_ok=True)
    cuda_graph: Any = key(AUTO_BOOL, absent_ok=True)


@dataclass(kw_only=True)
class OptimizerConfig(Checked):
    """torch.optim takes lr=0 and nesterov without momentum at construction; the optimizer is built only when
    fitting starts."""

    NODE = "optimizer"
    CLOSED = False

    lr: float = key(number(gt=0))
    weight_decay: float = key(number(ge=0), absent_ok=True)
    momentum: float = key(number(ge=0, lt=1), absent_ok=True)
    nesterov: bool = key(BOOL, absent_ok=True)
    eps: float = key(number(gt=0), absent_ok=True)
    betas: Any = key(list_of(number(ge=0, lt=1), length=" of 2"), absent_ok=True)
    dampening: float = key(number(ge=0, le=1), absent_ok=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nesterov is True:
            check(isinstance(self.momentum, (int, float)) and self.momentum > 0, "optimizer.momentum",
                  None if self.momentum is ABSENT else self.momentum, "a number > 0 with optimizer.nesterov=true")


@dataclass(kw_only=True)
class SchedulerConfig(Checked):
    NODE = "scheduler"
    CLOSED = False

    T_max: int | None = key(optional(integer(1), " (the number of epochs)"), absent_ok=True)
    step_size: int = key(integer(1), absent_ok=True)
    gamma: float = key(number(gt=0), absent_ok=True)
    eta_min: float = key(number(ge=0), absent_ok=True)
    interval: str = key(one_of("epoch", "step"), absent_ok=True)  # read by vrs.modules, not the scheduler


@dataclass(kw_only=True)
class TrainerConfig(Checked):
    NODE = "trainer"
    CLOSED = False

    max_epochs: int = key(integer(1), absent_ok=True)
    min_epochs: int = key(integer(0), absent_ok=True)
    max_steps: int = key(either(integer(1), one_of(-1)), absent_ok=True)
    check_val_every_n_epoch: int | None = key(optional(integer(1)), absent_ok=True)
    log_every_n_steps: int = key(integer(1), absent_ok=True)
    deterministic: Any = key(either(BOOL, one_of("warn")), absent_ok=True)
    accumulate_grad_batches: int = key(integer(1), absent_ok=True)
    gradient_clip_val: float | None = key(optional(number(ge=0)), absent_ok=True)
    enable_progress_bar: bool = key(BOOL, absent_ok=True)
    enable_model_summary: bool = key(BOOL, absent_ok=True)
    enable_checkpointing: bool = key(BOOL, absent_ok=True)
    sync_batchnorm: bool = key(BOOL, absent_ok=True)
    use_distributed_sampler: bool = key(BOOL, absent_ok=True)
    default_root_dir: str = key(TEXT, absent_ok=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if is_int(self.min_epochs) and is_int(self.max_epochs):
            check(self.min_epochs <= self.max_epochs, "trainer.min_epochs", self.min_epochs,
                  f"at most trainer.max_epochs ({self.max_epochs})")


def check_train(cfg: dict) -> None:
    """vrs-train's rules between nodes: the logger and callbacks groups (not trainer keys), the metrics it reads,
    trainer.val_check_interval against an epoch's batches, and Lightning's Trainer built with all of it."""
    trainer = cfg.get("trainer")
    if not cfg.get("logger") and "lr_monitor" in (cfg.get("callbacks") or {}):
        raise ConfigError("logger", cfg.get("logger") or "none",
                          "a logger (csv, wandb, ...) while callbacks.lr_monitor is on: "
                          "Lightning's LearningRateMonitor needs one (or drop it: ~callbacks.lr_monitor)")
    if isinstance(trainer, dict):
        for name in ("logger", "callbacks"):  # vrs-train passes its own: these would be ignored without a word
            if name in trainer:
                raise ConfigError(f"trainer.{name}", trainer[name], f"no key of trainer: the {name} group sets the "
                                  f"Trainer's {name} ({name}=<option>, or {name}.<name>.<key>=...)")
        check_logged_metrics(cfg)


def check_logged_metrics(cfg: dict) -> None:
    """The metrics vrs-train reads (optimized_metric, returned to sweepers, and the callbacks' `monitor`) come from a
    phase the run has: val/* needs validation (data.val_size >= 1, trainer.limit_val_batches > 0, a validation
    epoch within trainer.max_epochs), test/* needs test=true (and no callback can monitor it)."""
    data, trainer, test = cfg.get("data") or {}, cfg.get("trainer") or {}, cfg.get("test")
    readers = [("optimized_metric", cfg.get("optimized_metric"))]
    readers += [(f"callbacks.{name}.monitor", cb.get("monitor")) for name, cb in (cfg.get("callbacks") or {}).items()
                if isinstance(cb, dict)]
    every, epochs = trainer.get("check_val_every_n_epoch", 1), trainer.get("max_epochs")
    no_val = None  # (key, value, what would allow validation)
    if data.get("val_size", 1) == 0:
        no_val = ("data.val_size", 0, "an integer >= 1")
    elif trainer.get("limit_val_batches", 1) == 0:
        no_val = ("trainer.limit_val_batches", trainer["limit_val_batches"], "a number > 0")
    elif is_int(every) and is_int(epochs) and every > epochs and trainer.get("max_steps", -1) == -1:
        no_val = ("trainer.check_val_every_n_epoch", every, f"at most trainer.max_epochs ({epochs})")
    for reader, metric in readers:
        if not isinstance(metric, str):
            continue
        if metric.startswith("val/") and no_val:
            raise ConfigError(no_val[0], no_val[1], f"{no_val[2]} while {reader}={metric} reads a validation metric "
                              f"(none is logged: no validation runs); or set {reader}=null")
        if metric.startswith("test/") and (reader != "optimized_metric" or not test):
            allowed = ("a train/ or val/ metric: callbacks run during fitting, before the test"
                       if reader != "optimized_metric"
                       else "a train/ or val/ metric while test=false (no test/ metric is logged)")
            raise ConfigError(reader, metric, allowed)


def check_trainer(cfg: dict) -> None:
    """Build Lightning's Trainer with the configured callbacks (no fit, nothing written), as vrs-train will: what
    it refuses (a flag that contradicts a callback, an accelerator or device count this machine lacks, an unknown
    profiler, ...) fails here, naming the trainer key its message names."""
    import logging

    from hydra.utils import instantiate

    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict) or "_target_" not in trainer:
        return
    quiet = logging.getLogger("pytorch_lightning")  # "GPU available: ..." is printed once, by the real run
    level, quiet.level = quiet.level, logging.ERROR
    try:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                     if isinstance(c, dict) and "_target_" in c]
        instantiate(trainer, callbacks=callbacks, logger=False)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps Lightning's MisconfigurationException / ValueError
        user = find_user_error(exc)
        if user is not None:
            raise user from None
        while isinstance(exc.__cause__, Exception):
            exc = exc.__cause__
        why = first_line(exc, 300)
        named = [k for k in sorted(trainer, key=len, reverse=True) if k not in HYDRA_KEYS and k in why]
        named += [k for k, v in trainer.items()
                  if isinstance(v, str) and len(v) > 2 and re.search(rf"\b{re.escape(v)}\b", why)]
        if named:
            raise ConfigError(f"trainer.{named[0]}", trainer[named[0]], f"a value Lightning's Trainer takes with this "
                              f"config and machine; it says: {why}") from None
        raise VRSError(f"trainer: Lightning's Trainer refuses this config: {why}") from None
    finally:
        quiet.level = level


def check_val_check_interval(cfg: dict) -> None:
    """trainer.val_check_interval given as a batch count must not exceed an epoch's training batches (Lightning
    refuses it only when fitting starts). The epoch's batches follow from the data set's training-split size, the
    data keys and trainer.limit_train_batches; with check_val_every_n_epoch=null Lightning counts across epochs."""
    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    interval = trainer.get("val_check_interval")
    if not isinstance(interval, int) or isinstance(interval, bool) or trainer.get("check_val_every_n_epoch", 1) is None:
        return
    n = train_split_size(data)
    if not isinstance(n, int) or not isinstance(data.get("batch_size"), int):
        return
    n -= int(data.get("val_size") or 0)
    if data.get("train_subset"):
        n = min(n, int(data["train_subset"]))
    devices = trainer.get("devices")
    if isinstance(devices, int) and devices > 1:
        n //= devices  # each DDP rank takes every world_size-th image
    batches = math.ceil(max(n, 0) / data["batch_size"])
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    check(interval <= batches, "trainer.val_check_interval", interval,
          f"at most the {batches} training batches of an epoch here, or a fraction of an epoch in (0, 1]")
