"""Every value of a run's config, checked before the run directory exists (vrs.apps.before_run) and before any
compute, each refusal one line that names the key, the bad value and what is allowed (errors.py):

    certify.alpha=1.5 is not allowed: a number in (0, 1)

1. The typed configs (vrs.config): the nodes Hydra types (certify, defense, predict, report, paths) and those built
   from the composed config (each app's top-level keys; data, model, module, optimizer, scheduler, trainer, attack,
   source, dashboard): ranges in their fields' rules, rules between their keys in __post_init__.
2. What no typed config holds: a `_target_` node's other keys (its target's parameters, by signature), numbers
   torch and numpy cannot take, the constructors that check their own arguments (the data module, networks, noise,
   training method, VRS selector stage, callbacks, sigma search), and the rules between nodes.
3. vrs.preflight: what needs files (checkpoints, output directories, report inputs), or W&B.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vrs.config import is_typed, to_typed
from vrs.config.apps import TOPS
from vrs.config.attack import AttackConfig
from vrs.config.certify import check_sigma_search
from vrs.config.dashboard import DashboardConfig
from vrs.config.data import DataConfig
from vrs.config.importer import SourceConfig
from vrs.config.rules import Checked
from vrs.config.tree import check_number_ranges, check_targets, resolved
from vrs.config.train import (ModelConfig, ModuleConfig, OptimizerConfig, SchedulerConfig, TrainerConfig,
                              check_train, check_trainer, check_val_check_interval)
from vrs.errors import VRSError, check
from vrs.preflight import node_at, preflight
from vrs.utils.config import construct

APPS = tuple(TOPS)
# The nodes each app cannot run without.
APP_NODES = {"train": ("data", "model", "module", "trainer", "paths"), "certify": ("data", "certify", "paths"),
             "attack": ("data", "attack", "defense", "predict", "paths"), "report": ("report", "paths"),
             "dashboard": ("dashboard", "paths"), "import": ("data", "source", "paths")}
# The nodes Hydra does not type, as their typed configs (built from the composed config: Checked.of).
UNTYPED: tuple[type[Checked], ...] = (DataConfig, ModelConfig, ModuleConfig, OptimizerConfig, SchedulerConfig,
                                      TrainerConfig, AttackConfig, SourceConfig, DashboardConfig)


def check_values(cfg: DictConfig | dict, app: str) -> dict:
    """Steps 1 and 2 (no file read). Returns the resolved config."""
    check(app in APPS, "app", app, "one of " + ", ".join(APPS))
    plain = resolved(cfg)
    TOPS[app].of(plain)
    for name in APP_NODES[app]:
        if node_at(plain, name) is None:
            raise VRSError(f"the config has no {name} node: vrs-{app} needs it")
    typed_nodes(cfg)
    for schema in UNTYPED:
        if schema.NODE in plain:
            schema.of(plain[schema.NODE])
    check_number_ranges(plain)
    check_targets(plain)
    cross_checks(plain, app)
    return plain


def validate_config(cfg: DictConfig | dict, app: str) -> dict:
    """Everything a run relies on, before any compute: values, then what needs files (vrs.preflight). Returns the
    resolved config."""
    plain = check_values(cfg, app)
    if app == "train":  # what Lightning's Trainer refuses, on this machine (an accelerator it lacks, ...)
        check_val_check_interval(plain)
        check_trainer(plain)
    preflight(cfg, plain, app)
    return plain


def typed_nodes(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config's typed nodes (vrs.config) as their dataclasses, every rule checked (ConfigError)."""
    if not isinstance(cfg, DictConfig):
        return {}
    return {str(name): to_typed(cfg[name]) for name in cfg if name != "hydra" and is_typed(cfg._get_node(name))}


def cross_checks(cfg: dict, app: str) -> None:
    """The constructors that check their own arguments (nothing loaded), and the rules between nodes."""
    from hydra.utils import instantiate

    data, model = cfg.get("data"), cfg.get("model")
    if isinstance(data, dict):
        construct(data)  # ImageDataModule: name, shape, classes, normalisation, batch sizes (no loading)
    if isinstance(model, dict) and isinstance(data, dict):
        for key, data_key in (("in_channels", "channels"), ("num_classes", "num_classes"), ("input_size", "size")):
            if key in model:
                check(model[key] == data[data_key], f"model.{key}", model[key],
                      f"data.{data_key} ({data[data_key]}): the network takes the data set's images")
        construct(model)  # networks check their own depth / width rules
    if isinstance(cfg.get("noise"), dict):
        construct(cfg["noise"])  # FixedSigma / LogUniformSigma: sigma > 0, sigma_min < sigma_max
    if app == "train" and "training" in cfg:
        from vrs.modules.training import build_training  # deferred: Hydra's instantiate and torch, off start-up

        build_training(cfg["training"])  # the base classifier's training method (VRS: stage 1): its own checks
    if app == "train":
        check_train(cfg)
    module = cfg.get("module")
    if isinstance(module, dict) and str(module.get("_target_", "")).endswith("SelectorModule"):
        from vrs.modules.selector import SelectorModule  # deferred: Lightning, off the apps' start-up path

        SelectorModule.check_config(**module)  # selector, prior, lambda sampling, median smoothing, ...
    if isinstance(cfg.get("callbacks"), dict):
        for conf in cfg["callbacks"].values():  # the robustness callbacks check their settings when built
            if isinstance(conf, dict) and "_target_" in conf:
                instantiate(conf)
    if app in ("certify", "attack") and isinstance(cfg.get("sigma_search"), dict):
        check_sigma_search(cfg, app)
