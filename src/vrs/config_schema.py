"""Config values: what the nodes without a typed config (train's own keys, the `_target_` groups) may hold, the
rules between nodes, and the Hydra callback that runs it all before the run directory exists.

    validate_config(cfg, "certify")   # every app's main calls this first; a Hydra callback
                                      # (ValidateBeforeRun) calls it even before the run directory exists

1. `check_values` (no file read): the typed configs (vrs.config: certify, defense, predict, report, paths) built
   by OmegaConf.to_object, their __post_init__ checking ranges and the rules between their keys; the tables below
   for the nodes without one (the top level, data, model, optimizer, trainer, ...); unknown keys of `_target_`
   nodes (against the target's signature); numbers torch and numpy cannot take; the rules between nodes
   (`cross_checks`), and the constructors that validate their own arguments (noise levels, the data module,
   networks, callbacks, the VRS selector stage, attack settings): built, not restated (no data is loaded).
2. vrs.preflight: what needs files (checkpoints, output directories, report inputs).
Each raises a ConfigError / VRSError that names the key, the bad value and what is allowed
(`certify.alpha=1.5 is not allowed: a number strictly between 0 and 1`).
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from vrs.config import is_typed, to_typed
from vrs.config.rules import (ANY, AUTO_BOOL, BOOL, CKPT_PATH, COMPILE, DEVICE, INDICES, SEED, SPLIT, TEXT, Rule,
                              _is_int,
                              _is_num, either, integer, list_of, number, one_of, optional, required)
from vrs.errors import ConfigError, VRSError, check, find_user_error, first_line
from vrs.importers.codebases import CODEBASES, NORMALIZATIONS
from vrs.preflight import node_at, preflight
from vrs.utils.config import construct
from vrs.utils.dashboard_spec import check_upload_needs, parse_options as parse_dashboard_options

APPS = ("train", "certify", "attack", "report", "import", "dashboard")


# Every number in a config ends up in torch or numpy: integers must fit int64, floats float32 (finite there).
INT64_MAX, FLOAT32_MAX, FLOAT32_TINY = 2**63 - 1, 3.4028234663852886e38, 1.1754943508222875e-38


# ---- the tables --------------------------------------------------------------------------------------
# Each node's keys that no constructor checks. `CLOSED` nodes may hold no other keys (a typo added with
# `+` is caught); the other nodes take what their `_target_` takes (checked against its signature).
TOP = {"seed": SEED, "task_name": TEXT, "tags": list_of(either(TEXT, number()), nonempty=False),
       "print_config": BOOL}
APP_TOP = {
    "train": {"test": BOOL, "optimized_metric": optional(TEXT), "ckpt_path": optional(CKPT_PATH, " (a new run)"),
              "base_ckpt": optional(CKPT_PATH, " (stage 1 trains one)")},
    "certify": {"ckpt_path": CKPT_PATH},
    "attack": {"ckpt_path": CKPT_PATH, "device": DEVICE, "allow_other_dataset": BOOL},
    "report": {},
    "dashboard": {},
    "import": {"ckpt_path": required(Rule(lambda v: isinstance(v, str) and v != "", "the path of a published "
                                          "checkpoint (e.g. checkpoint.pth.tar of locuslab/smoothing)")),
               "out_path": required(TEXT)},
}
SCHEMA: dict[str, dict[str, Rule]] = {
    # ImageDataModule checks name, channels, size, num_classes, mean / std, batch sizes, loader,
    # val_size >= 0, crop_padding; the data set's size is checked in cross_checks.
    "data": {"root": optional(TEXT), "data_dir": optional(TEXT), "download": BOOL, "val_size": integer(0),
             "train_subset": optional(integer(1), " (all)"), "test_subset": optional(integer(1), " (all)"),
             "crop_padding": integer(0), "hflip": BOOL, "num_workers": integer(0), "seed": SEED},
    "data.synthetic": {"num_train": integer(1), "num_test": integer(1), "seed": SEED},
    # Network depths are checked by the networks (6n+2 for ResNets, ...); the input shape in cross_checks.
    "model": {"width": integer(1), "hidden": integer(1), "dropout": number(ge=0, lt=1)},
    "module": {"channels_last": AUTO_BOOL, "compile": COMPILE, "cuda_graph": AUTO_BOOL},
    "optimizer": {"lr": required(number(gt=0)), "weight_decay": number(ge=0), "momentum": number(ge=0, lt=1),
                  "nesterov": BOOL, "eps": number(gt=0), "betas": list_of(number(ge=0, lt=1), length=" of 2"),
                  "dampening": number(ge=0, le=1)},
    "scheduler": {"T_max": optional(integer(1), " (the number of epochs)"), "step_size": integer(1),
                  "gamma": number(gt=0), "eta_min": number(ge=0), "interval": one_of("epoch", "step")},
    # What Lightning's Trainer accepts without complaint (its own checks: accelerator, precision, num_nodes,
    # limit_*_batches, strategy, ...: check_trainer builds it).
    "trainer": {"max_epochs": integer(1), "min_epochs": integer(0), "max_steps": either(integer(1), one_of(-1)),
                "devices": either(integer(1), one_of("auto", -1), list_of(integer(0)), TEXT),
                "check_val_every_n_epoch": optional(integer(1)), "log_every_n_steps": integer(1),
                "deterministic": either(BOOL, one_of("warn")), "benchmark": optional(BOOL),
                "accumulate_grad_batches": integer(1), "gradient_clip_val": optional(number(ge=0)),
                "fast_dev_run": either(BOOL, integer(0)), "enable_progress_bar": BOOL, "enable_model_summary": BOOL,
                "enable_checkpointing": BOOL, "sync_batchnorm": BOOL, "use_distributed_sampler": BOOL,
                "default_root_dir": TEXT},
    # vrs-attack's images; the attack's own keys (name, norm, eps, steps, ...): check_attack_config.
    "attack": {"split": SPLIT, "skip": integer(1), "max": optional(integer(1), " (all images)"),
               "indices": optional(INDICES), "batch_size": integer(1), "world_size": integer(1),
               "out_dir": optional(TEXT, " (the run directory)"),
               **{k: ANY for k in ("name", "norm", "eps", "steps", "step_size", "restarts",
                                                        "random_start", "eot", "loss", "rho", "c", "kappa", "lr",
                                                        "beta", "sigma_target")}},
    # vrs-import's published checkpoint (vrs.importers.codebases)
    "source": {"format": required(one_of(*CODEBASES)), "sigma": required(number(gt=0)),
               "normalization": optional(one_of(*NORMALIZATIONS), " (what the codebase's code applies)")},
    # vrs-dashboard; the W&B names, sections, radii and attacks: vrs.utils.dashboard_spec.parse_options
    "dashboard": {**{k: ANY for k in ("project", "entity", "name", "groups", "tags", "sections", "radii",
                                              "attacks", "eps")},
                  "report": BOOL, "dry_run": BOOL, "out": TEXT,
                  "workspace_url": optional(Rule(lambda v: isinstance(v, str) and v.startswith(("http://", "https://")),
                                                 "the URL of a saved workspace view to replace"), " (a new view)")},
}
CLOSED = ("data.synthetic", "attack", "source", "dashboard")
# Keys a `_target_` node may hold beyond its target's parameters (read by our code, not the target).
EXTRA_KEYS = {"scheduler": ("interval",)}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# The nodes each app cannot run without.
APP_NODES = {"train": ("data", "model", "module", "trainer", "paths"), "certify": ("data", "certify", "paths"),
             "attack": ("data", "attack", "defense", "predict", "paths"), "report": ("report", "paths"),
             "dashboard": ("dashboard", "paths"),
             "import": ("data", "source", "paths")}


# ---- layer 1: values ---------------------------------------------------------------------------------
def check_node(name: str, node: Any, table: dict[str, Rule] | None = None, closed: bool | None = None) -> None:
    """Check one config node (a dict) against its table: types and ranges, required and unknown keys."""
    table = SCHEMA[name] if table is None else table
    closed = name in CLOSED if closed is None else closed
    if not isinstance(node, dict):
        raise ConfigError(name, node, f"a config node with keys {', '.join(table)}")
    def label(key: str) -> str:
        return f"{name}.{key}" if name else key

    for key, rule in table.items():
        if key not in node:
            if rule.required:
                raise VRSError(f"{label(key)} is missing: the {name} node needs it (restore it, or pick a {name} "
                               "option that sets it)")
            continue
        check(rule.ok(node[key]), label(key), node[key], rule.allowed)
    if closed:
        for key in node:
            if key not in table and key not in HYDRA_KEYS:
                raise ConfigError(label(key), node[key], f"a key of {name}: one of {', '.join(table)}")


def resolved(cfg: DictConfig | dict) -> dict:
    """The config as plain containers with every interpolation resolved (a VRSError when one does not)."""
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # noqa: BLE001 - omegaconf's InterpolationResolutionError, MissingMandatoryValue, ...
        key = getattr(err, "full_key", None)
        raise VRSError(f"the config does not resolve{f' at {key}' if key else ''}: {first_line(err)}") from None


def _target_nodes(node: Any, path: str = "") -> Iterable[tuple[str, dict]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            if path == "" and key == "hydra":
                continue
            yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def _fits(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    if isinstance(v, int):
        return -INT64_MAX - 1 <= v <= INT64_MAX
    return math.isfinite(v) and (v == 0 or FLOAT32_TINY <= abs(v) <= FLOAT32_MAX)


def check_number_ranges(node: Any, path: str = "") -> None:
    """Every number is one torch and numpy take: integers within int64, floats finite in float32 (a larger one
    becomes inf on the device). A list is named as a whole (`data.std=[1e+39]`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not (path == "" and key == "hydra"):
                check_number_ranges(value, f"{path}.{key}" if path else str(key))
        return
    items = node if isinstance(node, list) else [node]
    for value in items:
        if isinstance(value, (dict, list)):
            check_number_ranges(value, path)
        elif not _fits(value):
            each = "each " if isinstance(node, list) else ""
            if isinstance(value, int):
                raise ConfigError(path, node, f"{each}an integer of at most {INT64_MAX} in size (int64: what torch "
                                              "and numpy take)")
            raise ConfigError(path, node, f"{each}0 or a finite number between {FLOAT32_TINY:.4g} and "
                                          f"{FLOAT32_MAX:.4g} "
                                          "in size (float32, where torch computes: beyond, it becomes inf or 0)")


def check_targets(cfg: dict) -> None:
    """Every `_target_` imports, and every key of its node is one of its parameters (unless it takes **kwargs)."""
    for path, node in _target_nodes(cfg):
        target = node["_target_"]
        if not isinstance(target, str) or "." not in target:
            raise ConfigError(f"{path}._target_", target, "a dotted import path (package.module.Name)")
        module, _, name = target.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{path}._target_", target, f"an importable class or function ({err})") from None
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        allowed = set(params) | set(EXTRA_KEYS.get(path.rpartition(".")[2], ()))
        for key in node:
            if key not in allowed and key not in HYDRA_KEYS:
                names = ", ".join(k for k in params if k not in ("self", "params"))
                raise ConfigError(f"{path}.{key}", node[key], f"a parameter of {target}: one of {names}")


def train_split_size(data: dict) -> int | None:
    from vrs.data.sources import TRAIN_SIZES  # deferred: torch; vrs-attack and vrs-train import this module at start-up

    if data.get("name") == "synthetic":
        return (data.get("synthetic") or {}).get("num_train")
    return TRAIN_SIZES.get(data.get("name"))


def cross_checks(cfg: dict, app: str) -> None:
    """Rules between keys, and the constructors that validate their own arguments."""
    from hydra.utils import instantiate

    data = cfg.get("data")
    if isinstance(data, dict):
        construct(data)  # ImageDataModule: name, shape, classes, normalisation, batch sizes (no loading)
        size, val = train_split_size(data), data.get("val_size", 0)
        if size is not None and _is_int(size) and val >= size:
            raise ConfigError("data.val_size", val, f"an integer below the {data['name']} training split's size "
                              f"({size}), so that training images are left")
    model = cfg.get("model")
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
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and opt.get("nesterov"):
        check(_is_num(opt.get("momentum")) and opt["momentum"] > 0, "optimizer.momentum", opt.get("momentum"),
              "a number > 0 with optimizer.nesterov=true")
    trainer = cfg.get("trainer")
    if isinstance(trainer, dict) and _is_int(trainer.get("min_epochs")) and _is_int(trainer.get("max_epochs")):
        check(trainer["min_epochs"] <= trainer["max_epochs"], "trainer.min_epochs", trainer["min_epochs"],
              f"at most trainer.max_epochs ({trainer['max_epochs']})")
    if app == "train" and not cfg.get("logger") and "lr_monitor" in (cfg.get("callbacks") or {}):
        raise ConfigError("logger", cfg.get("logger") or "none",
                          "a logger (csv, wandb, ...) while callbacks.lr_monitor is on: "
                          "Lightning's LearningRateMonitor needs one (or drop it: ~callbacks.lr_monitor)")
    if app == "train" and isinstance(trainer, dict):
        for key in ("logger", "callbacks"):  # vrs-train passes its own: these would be ignored without a word
            if key in trainer:
                raise ConfigError(f"trainer.{key}", trainer[key], f"no key of trainer: the {key} group sets the "
                                  f"Trainer's {key} ({key}=<option>, or {key}.<name>.<key>=...)")
        check_logged_metrics(cfg)
    module = cfg.get("module")
    if isinstance(module, dict) and str(module.get("_target_", "")).endswith("SelectorModule"):
        from vrs.modules.selector import SelectorModule  # deferred: Lightning, off the apps' start-up path

        SelectorModule.check_config(**module)  # selector, prior, lambda sampling, median smoothing, ...
    if isinstance(cfg.get("callbacks"), dict):
        for conf in cfg["callbacks"].values():  # the robustness callbacks check their settings when built
            if isinstance(conf, dict) and "_target_" in conf:
                instantiate(conf)
    if app in ("certify", "attack") and isinstance(cfg.get("sigma_search"), dict):
        construct(cfg["sigma_search"])  # Multiscale / DataDependentSmoothing check their own settings
        surrogate = (cfg.get("defense") or {}).get("search_surrogate") if app == "attack" else None
        if surrogate:
            construct({**cfg["sigma_search"], **surrogate})
        check_sigma_search(cfg, app)
    if app == "attack":
        # deferred: torch; vrs-attack and vrs-train import this module at start-up
        from vrs.attacks.factory import check_attack_config

        check_attack_config(cfg["attack"])
    if app == "dashboard":
        parse_dashboard_options(cfg["dashboard"])
        check_upload_needs(cfg["dashboard"])  # before Hydra creates the run directory: a refusal writes nothing


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
    elif _is_int(every) and _is_int(epochs) and every > epochs and trainer.get("max_steps", -1) == -1:
        no_val = ("trainer.check_val_every_n_epoch", every, f"at most trainer.max_epochs ({epochs})")
    for key, metric in readers:
        if not isinstance(metric, str):
            continue
        if metric.startswith("val/") and no_val:
            raise ConfigError(no_val[0], no_val[1], f"{no_val[2]} while {key}={metric} reads a validation metric "
                              f"(none is logged: no validation runs); or set {key}=null")
        if metric.startswith("test/") and (key != "optimized_metric" or not test):
            allowed = ("a train/ or val/ metric: callbacks run during fitting, before the test"
                       if key != "optimized_metric"
                       else "a train/ or val/ metric while test=false (no test/ metric is logged)")
            raise ConfigError(key, metric, allowed)


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
    from vrs.data.sources import TRAIN_SIZES  # deferred: torch, which vrs-attack and vrs-train start without

    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    interval = trainer.get("val_check_interval")
    if not isinstance(interval, int) or isinstance(interval, bool) or trainer.get("check_val_every_n_epoch", 1) is None:
        return
    name = data.get("name")
    n = (data.get("synthetic") or {}).get("num_train") if name == "synthetic" else TRAIN_SIZES.get(name)
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


def check_sigma_search(cfg: dict, app: str) -> None:
    """A test-time sigma search chooses sigma itself: no fixed sigma, no VRS certificate, no PREDICT beside it."""
    name = str(cfg["sigma_search"].get("_target_", "?.?")).split(".")[-2]
    node = cfg["certify"] if app == "certify" else cfg["defense"]
    prefix = "certify" if app == "certify" else "defense"
    check(node.get("sigma") is None, f"{prefix}.sigma", node.get("sigma"),
          f"null with sigma_search={name} (the search chooses sigma per image)")
    if app == "certify":
        if "certificate" in node:
            raise VRSError(f"sigma_search={name} chooses sigma by a test-time search: use it with certify=cohen, not "
                           f"certify.certificate={node['certificate']!r}")
        check(node.get("mode", "certify") == "certify", "certify.mode", node.get("mode"),
              f"certify with sigma_search={name} (its PREDICT is not part of vrs-certify)")
        check(node.get("sampling", "fixed") == "fixed", "certify.sampling", node.get("sampling"),
              f"fixed with sigma_search={name} (the search runs its own CERTIFY calls)")
        check(not node.get("sound"), "certify.sound", node.get("sound"),
              f"false with sigma_search={name} (a per-image sigma search is not covered by the lattice argument)")


def check_values(cfg: DictConfig | dict, app: str) -> dict:
    """Layer 1 (no files read): the typed configs, the tables, unknown keys, cross-key rules, constructors.
    Returns the resolved config."""
    check(app in APPS, "app", app, "one of " + ", ".join(APPS))
    plain = resolved(cfg)
    check_node("", plain, {**TOP, **APP_TOP[app]}, closed=False)
    for name in APP_NODES[app]:
        if node_at(plain, name) is None:
            raise VRSError(f"the config has no {name} node: vrs-{app} needs it")
    typed_nodes(cfg)
    for name, table in SCHEMA.items():
        node = node_at(plain, name)
        if node is not None:
            check_node(name, node, table)
    check_number_ranges(plain)
    check_targets(plain)
    cross_checks(plain, app)
    return plain


def typed_nodes(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config's typed nodes (vrs.config) as their dataclasses, every rule checked (ConfigError)."""
    if not isinstance(cfg, DictConfig):
        return {}
    return {str(name): to_typed(cfg[name]) for name in cfg if name != "hydra" and is_typed(cfg._get_node(name))}


# ---- all of it -------------------------------------------------------------------------------------------
def validate_config(cfg: DictConfig | dict, app: str) -> dict:
    """Everything a run relies on, before any compute: values, then what needs files (vrs.preflight: checkpoints,
    output directories and what they hold). Returns the resolved config."""
    plain = check_values(cfg, app)
    if app == "train":  # what Lightning's Trainer refuses, on this machine (an accelerator it lacks, ...)
        check_val_check_interval(plain)
        check_trainer(plain)
    preflight(cfg, plain, app)
    return plain
