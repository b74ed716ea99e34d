"""Config schemas: what every key of every config group may be, checked before any compute.

    validate_config(cfg, "certify")   # every app's main calls this first; a Hydra callback
                                      # (ValidateBeforeRun) calls it even before the run directory exists

Three layers, in this order, each raising a ConfigError / VRSError that names the key, the bad value and
what is allowed (`certify.alpha=1.5 is not allowed: a number in (0, 1)`):

1. `check_values`: the tables below (SCHEMA, one per config node, one `Rule` per key, the rule phrasing
   what is allowed), the rules that tie keys together (`cross_checks`), unknown keys of `_target_` nodes
   (against the target's signature), and the constructors that already validate their own arguments.
   Where a class checks its arguments (noise levels, the data module's shape and normalisation, network
   depths, callbacks, the VRS selector stage, attack settings, n0 / n / alpha), the schema runs that code
   (building the object: no data is loaded, nothing is computed) instead of repeating its rules, so each
   rule has one home. The tables hold the rest.
2. `check_checkpoints`: ckpt_path / module.base_ckpt exist, load (weights only), are of the kind the app
   needs and were trained on the configured data set: shape, classes, normalisation
   (vrs.checkpoint.check_data_matches).
3. `check_output_dirs`: every directory the app writes into is a directory, can be written (a real test
   write), and has at least paths.min_free_mb MB free.
4. `check_output_folders`: none of them holds another app's results, or (the run directory) another app's
   Hydra run; vrs-train reuses a training run's folder only to resume it (vrs.utils.output_folders).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from vrs.errors import ConfigError, VRSError, check, describe_hydra_error, find_user_error, first_line
from vrs.importers.codebases import CODEBASES, NORMALIZATIONS
from vrs.utils.output_folders import check_output_folder, check_report_folder, keep_run_files

APPS = ("train", "certify", "attack", "report", "import")


# ---- rules: a test and what it allows, in words ---------------------------------------------------
@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str
    required: bool = False  # the key must be present (keys of the apps' own nodes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def integer(min: int | None = None, max: int | None = None, why: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and (min is None or v >= min) and (max is None or v <= max),
                "an integer" + ("" if min is None else f" >= {min}") + ("" if max is None else f" and <= {max}") + why)


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None) -> Rule:
    def ok(v):
        return (_is_num(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le))

    lo, hi = gt if gt is not None else ge, lt if lt is not None else le
    if lo is not None and hi is not None:
        text = f"a number in {'(' if gt is not None else '['}{lo:g}, {hi:g}{')' if lt is not None else ']'}"
    elif lo is not None:
        text = f"a number {'>' if gt is not None else '>='} {lo:g}"
    elif hi is not None:
        text = f"a number {'<' if lt is not None else '<='} {hi:g}"
    else:
        text = "a finite number"
    return Rule(ok, text)


def one_of(*choices: Any) -> Rule:
    """Exactly one of the choices (true is not 1, "1" is not 1)."""
    return Rule(lambda v: any(type(v) is type(c) and v == c for c in choices), "one of " + ", ".join(map(_show, choices)))


def optional(rule: Rule, null_means: str = "") -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null{null_means} or {rule.allowed}")


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r.ok(v) for r in rules), " or ".join(r.allowed for r in rules))


def list_of(rule: Rule, nonempty: bool = True, distinct: bool = False, length: str | None = None) -> Rule:
    def ok(v):
        return (isinstance(v, list) and (len(v) > 0 or not nonempty) and all(rule.ok(x) for x in v)
                and (not distinct or len(set(map(repr, v))) == len(v)))

    kind = ("a non-empty list" if nonempty else "a list") + (" without repeats" if distinct else "")
    return Rule(ok, f"{kind}{length or ''}, each {rule.allowed}")


def required(rule: Rule) -> Rule:
    return replace(rule, required=True)


ANY = Rule(lambda v: True, "any value")  # checked elsewhere (check_sampling, check_attack_config, ...)
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PROBABILITY = number(gt=0, lt=1)
LAMBDA = number(ge=0, le=1)
SPLIT = one_of("test", "val", "train")
AUTO_BOOL = one_of("auto", True, False)
COMPILE = Rule(lambda v: isinstance(v, (bool, str, dict)), "false, true, a torch.compile mode "
               "(default, reduce-overhead, max-autotune, ...) or a dict of torch.compile arguments")
# Whether the file exists and fits is check_checkpoints' (vrs.checkpoint's) business.
CKPT_PATH = Rule(lambda v: isinstance(v, str) and v != "", "the path of a vrs-train checkpoint "
                 "(<run dir>/checkpoints/last.ckpt)")
DEVICE = Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                                                (v.startswith("cuda:") and v[5:].isdigit())),
              "auto, cpu, cuda or cuda:<index>")
INDICES = list_of(integer(0), distinct=True)
# Lightning's precision flags (lightning_fabric.connector._PRECISION_INPUT).
TRAINER_PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
                      "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16)
BATCH_LIMIT = either(integer(0), number(ge=0, le=1))
# Lightning's seed_everything replaces a seed outside numpy's range with 0 (a warning only); numpy takes 32 bits.
SEED = integer(0, 2**32 - 1, " (numpy's seed range)")
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
    "import": {"ckpt_path": required(Rule(lambda v: isinstance(v, str) and v != "", "the path of a published "
                                          "checkpoint (e.g. checkpoint.pth.tar of locuslab/smoothing)")),
               "out_path": required(TEXT)},
}
SCHEMA: dict[str, dict[str, Rule]] = {
    "paths": {"root_dir": TEXT, "data_dir": TEXT, "log_dir": TEXT, "output_dir": TEXT,
              "min_free_mb": number(ge=0)},
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
    "trainer": {"max_epochs": integer(1), "min_epochs": integer(0), "max_steps": either(integer(1), one_of(-1)),
                "accelerator": one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
                "devices": either(integer(1), one_of("auto", -1), list_of(integer(0)), TEXT),
                "num_nodes": integer(1), "precision": one_of(*TRAINER_PRECISIONS),
                "check_val_every_n_epoch": optional(integer(1)), "log_every_n_steps": integer(1),
                "deterministic": either(BOOL, one_of("warn")), "benchmark": optional(BOOL),
                "accumulate_grad_batches": integer(1), "gradient_clip_val": optional(number(ge=0)),
                "limit_train_batches": BATCH_LIMIT, "limit_val_batches": BATCH_LIMIT,
                "limit_test_batches": BATCH_LIMIT, "fast_dev_run": either(BOOL, integer(0)),
                "enable_progress_bar": BOOL, "enable_model_summary": BOOL, "enable_checkpointing": BOOL,
                "sync_batchnorm": BOOL, "use_distributed_sampler": BOOL, "default_root_dir": TEXT},
    # certify=cohen (and the VRS keys of certify=vrs_c1 / vrs_c2); n0, n, alpha, batch_size: check_sampling.
    "certify": {"mode": one_of("certify", "predict"), "n0": required(ANY),
                "n": required(ANY), "alpha": required(ANY),
                "batch_size": required(ANY),
                "sigma": optional(number(gt=0), " (the checkpoint's training sigma)"), "split": SPLIT,
                "skip": integer(1), "max": optional(integer(1), " (all images)"),
                "indices": optional(either(integer(0), INDICES)), "out_dir": optional(TEXT, " (the run directory)"),
                "device": DEVICE, "precision": one_of("auto", "fp32", "tf32", "bf16", "fp16"),
                "channels_last": AUTO_BOOL, "compile": COMPILE, "fused_blocks": AUTO_BOOL,
                "images_per_group": either(one_of("auto"), integer(1)), "noise_block": integer(1),
                "world_size": integer(1), "radius_grid": list_of(number(ge=0), distinct=True), "allow_other_dataset": BOOL,
                "progress": BOOL, "sampling": one_of("fixed", "sequential", "radius_target"),
                "radii": optional(list_of(number(ge=0), distinct=True), " (radius_target needs a list)"),
                "looks": integer(1, 30), "radius_tol": number(gt=0), "sound": BOOL,
                "certificate": one_of("c1", "c2", "dual_rs"), "selector_smoothing": one_of("median", "vote"),
                "lam": LAMBDA,
                "n_h0": optional(integer(1), " (the checkpoint's)"), "n_h": optional(integer(1), " (the checkpoint's)"),
                "alpha_h": optional(PROBABILITY, " (the checkpoint's)"),
                "sigma_h": optional(number(gt=0), " (the checkpoint's)"),
                "grid": either(one_of("checkpoint", None), list_of(number(gt=0))),
                "selector_batch_size": optional(integer(1), " (the checkpoint's)"), "c2_tol": number(gt=0)},
    # vrs-attack's images; the attack's own keys (name, norm, eps, steps, ...): check_attack_config.
    "attack": {"split": SPLIT, "skip": integer(1), "max": optional(integer(1), " (all images)"),
               "indices": optional(INDICES), "batch_size": integer(1), "world_size": integer(1),
               "out_dir": optional(TEXT, " (the run directory)"),
               **{k: ANY for k in ("name", "norm", "eps", "steps", "step_size", "restarts",
                                                        "random_start", "eot", "loss", "rho", "c", "kappa", "lr",
                                                        "beta", "sigma_target")}},
    "defense": {"sigma": optional(number(gt=0), " (the training sigma, or the VRS selector)"), "lam": LAMBDA,
                "m": integer(1), "noise": one_of("fresh", "fixed"), "tau": number(gt=0),
                "selector_grad": one_of("straight_through", "mean", "median"), "n_h": integer(0),
                "selector_smoothing": one_of("median", "vote"),
                "search_surrogate": optional(Rule(lambda v: isinstance(v, dict), "a mapping of sigma_search keys"),
                                             " (the deployed search in every forward pass)"),
                "deployed_n_h": optional(integer(1), " (the checkpoint's)"),
                "max_batch": optional(integer(1), " (all at once)"), "precision": one_of("fp32", "bf16", "fp16")},
    "predict": {"n": required(ANY), "alpha": required(ANY),
                "batch_size": required(ANY), "precision": one_of("fp32", "tf32", "bf16", "fp16")},
    # vrs-import's published checkpoint (vrs.importers.codebases)
    "source": {"format": required(one_of(*CODEBASES)), "sigma": required(number(gt=0)),
               "normalization": optional(one_of(*NORMALIZATIONS), " (what the codebase's code applies)")},
    "report": {"inputs": required(ANY), "out_dir": TEXT, "radii": list_of(number(ge=0), distinct=True),
               "title": optional(TEXT), "hide_overrides": list_of(TEXT, nonempty=False)},
}
CLOSED = ("paths", "data.synthetic", "certify", "attack", "defense", "predict", "report", "source")
# Keys a `_target_` node may hold beyond its target's parameters (read by our code, not the target).
EXTRA_KEYS = {"scheduler": ("interval",)}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# The output directories each app writes into (key -> the files there that are appended to in place).
OUTPUT_DIRS = {"train": {"paths.output_dir": ()},
               "certify": {"paths.output_dir": (), "certify.out_dir": ("certify.tsv",)},
               "attack": {"paths.output_dir": (), "attack.out_dir": ("attack.csv",)},
               "report": {"paths.output_dir": (), "report.out_dir": ()},
               "import": {"paths.output_dir": ()}}
DEFAULT_MIN_FREE_MB = 100
# The nodes each app cannot run without.
APP_NODES = {"train": ("data", "model", "module", "trainer", "paths"), "certify": ("data", "certify", "paths"),
             "attack": ("data", "attack", "defense", "predict", "paths"), "report": ("report", "paths"),
             "import": ("data", "source", "paths")}


# ---- layer 1: values ---------------------------------------------------------------------------------
def _node(cfg: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


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
            raise ConfigError(path, node, f"{each}0 or a finite number between {FLOAT32_TINY:.4g} and {FLOAT32_MAX:.4g} "
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

    from vrs.smoothing.smoothed import check_sampling  # deferred: torch; vrs-attack and vrs-train import this module at start-up

    data = cfg.get("data")
    if isinstance(data, dict):
        _construct(data)  # ImageDataModule: name, shape, classes, normalisation, batch sizes (no loading)
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
        _construct(model)  # networks check their own depth / width rules
    if isinstance(cfg.get("noise"), dict):
        _construct(cfg["noise"])  # FixedSigma / LogUniformSigma: sigma > 0, sigma_min < sigma_max
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
        raise ConfigError("logger", cfg.get("logger") or "none", "a logger (csv, wandb, ...) while callbacks.lr_monitor is on: "
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
        _construct(cfg["sigma_search"])  # Multiscale / DataDependentSmoothing check their own settings
        surrogate = (cfg.get("defense") or {}).get("search_surrogate") if app == "attack" else None
        if surrogate:
            _construct({**cfg["sigma_search"], **surrogate})
        check_sigma_search(cfg, app)
    if app == "certify":
        check_certify(cfg["certify"])
    if app == "attack":
        from vrs.attacks.factory import check_attack_config  # deferred: torch; vrs-attack and vrs-train import this module at start-up

        check_attack_config(cfg["attack"])
        p = cfg["predict"]
        check_sampling(p["n"], p["alpha"], p["batch_size"], prefix="predict.")
    if app == "report":
        parse_inputs(cfg["report"]["inputs"])


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
            allowed = ("a train/ or val/ metric: callbacks run during fitting, before the test" if key != "optimized_metric"
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
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if isinstance(c, dict) and "_target_" in c]
        instantiate(trainer, callbacks=callbacks, logger=False)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps Lightning's MisconfigurationException / ValueError
        user = find_user_error(exc)
        if user is not None:
            raise user from None
        while isinstance(exc.__cause__, Exception):
            exc = exc.__cause__
        why = first_line(exc, 300)
        named = [k for k in sorted(trainer, key=len, reverse=True) if k not in HYDRA_KEYS and k in why]
        named += [k for k, v in trainer.items() if isinstance(v, str) and len(v) > 2 and re.search(rf"\b{re.escape(v)}\b", why)]
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


def parse_inputs(inputs: Any) -> list[Path]:
    """report.inputs as paths: a run or multirun directory, or a list of them, each existing."""
    if isinstance(inputs, str):
        inputs = [inputs]
    check(isinstance(inputs, list) and len(inputs) > 0 and all(isinstance(i, str) and i for i in inputs),
          "report.inputs", inputs, "a run or multirun directory, or a list of them: report.inputs=[dir1,dir2]")
    paths = [Path(i) for i in inputs]
    for p in paths:
        if not p.exists():
            raise VRSError(f"report.inputs: {str(p)!r} does not exist (give run or multirun directories)")
        check(p.is_dir(), "report.inputs", str(p), "directories (a run or multirun directory), not files")
    return paths


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


def check_certify(c: dict) -> None:
    """The certify node: its table, then n0 <= n and the rest of check_sampling, and no PREDICT for VRS."""
    from vrs.smoothing.smoothed import check_sampling  # deferred: torch; vrs-attack and vrs-train import this module at start-up

    check_node("certify", c)
    certify_mode = c.get("mode", "certify") == "certify"
    check_sampling(c["n"], c["alpha"], c["batch_size"], n0=c["n0"] if certify_mode else None, prefix="certify.")
    if "certificate" in c and "selector_smoothing" in c:  # median: c1 / c2; vote: dual_rs
        vote = c["selector_smoothing"] == "vote"
        check((c["certificate"] == "dual_rs") == vote, "certify.certificate", c["certificate"],
              f"{'dual_rs' if vote else 'c1 or c2'} with certify.selector_smoothing={c['selector_smoothing']} "
              "(median: certify=vrs_c1 / vrs_c2; vote: certify=dual_rs)")
    if "certificate" in c:
        check(certify_mode, "certify.mode", c.get("mode"),
              "certify with certify=vrs_c1 / vrs_c2 (PREDICT of a VRS model is not part of vrs-certify)")
    sampling = c.get("sampling", "fixed")
    if sampling != "fixed":
        check(certify_mode, "certify.sampling", sampling, "fixed with certify.mode=predict (looks are for CERTIFY)")
    if sampling == "radius_target":
        check(bool(c.get("radii")), "certify.radii", c.get("radii"),
              "a non-empty list of target radii >= 0 with certify.sampling=radius_target")
    if c.get("sound"):
        check("certificate" not in c, "certify.sound", True,
              f"false with certify.certificate={c.get('certificate')!r}: the selector's own smoothing samples float "
              "noise, which the sound lattice argument does not cover (docs/method.md section 1a)")


def _construct(node: dict, **kwargs: Any) -> Any:
    """Build a `_target_` node to run its constructor's checks; its ConfigError comes out unwrapped."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's error in InstantiationException
        user = find_user_error(err)
        if user is not None:
            raise user from None
        raise


def check_values(cfg: DictConfig | dict, app: str) -> dict:
    """Layer 1 (no files read): the tables, unknown keys, cross-key rules, constructors. Returns the
    resolved config."""
    check(app in APPS, "app", app, "one of " + ", ".join(APPS))
    plain = resolved(cfg)
    check_node("", plain, {**TOP, **APP_TOP[app]}, closed=False)
    for name, table in SCHEMA.items():
        node = _node(plain, name)
        if node is None and name in APP_NODES[app]:
            raise VRSError(f"the config has no {name} node: vrs-{app} needs it")
        if node is not None:
            check_node(name, node, table)
    check_number_ranges(plain)
    check_targets(plain)
    cross_checks(plain, app)
    return plain


# ---- layer 2: checkpoints ------------------------------------------------------------------------------
def data_spec(data: dict) -> dict:
    return {k: data.get(k) for k in ("name", "channels", "size", "num_classes", "mean", "std")}


def _naming(key: str, fn: Callable[[], Any]) -> Any:
    """fn(), its VRSError prefixed with the key that led to it (vrs.checkpoint's messages name the file)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - only user errors get the prefix; Hydra may wrap them
        err = find_user_error(exc)
        if err is None:
            raise
        if isinstance(err, ConfigError) or str(err).startswith(key):
            raise err from None
        raise VRSError(f"{key}: {err}") from None


def check_checkpoints(cfg: dict, app: str) -> None:
    """The checkpoints the run reads load (weights only), are of the kind the app needs and were trained on the
    configured data set (vrs.checkpoint: shape, classes, normalisation; a resumed run: the same network)."""
    # deferred: torch; vrs-attack and vrs-train import this module at start-up
    from vrs.checkpoint import check_data_matches, check_resume_checkpoint, load_checkpoint

    data = cfg.get("data")
    if app in ("certify", "attack"):
        allow = (cfg["certify"] if app == "certify" else cfg).get("allow_other_dataset")
        _naming("ckpt_path", lambda: check_data_matches(load_checkpoint(cfg["ckpt_path"], kinds=("classifier", "vrs")),
                                                        data_spec(data), allow_other_dataset=bool(allow)))
    elif app == "train":
        module = cfg.get("module") or {}
        selector = str(module.get("_target_", "")).endswith("SelectorModule")
        if selector and not module.get("base_ckpt"):
            return  # stage 1 trains the base classifier; stage 2's module is built (and checked) after it
        # Building the module loads (and checks) the selector's base classifier, module.base_ckpt.
        built = _naming("module.base_ckpt" if selector else "module",
                        lambda: _construct(module, data=_construct(data).spec.to_dict()))
        if cfg.get("ckpt_path"):
            _naming("ckpt_path", lambda: check_resume_checkpoint(cfg["ckpt_path"], built))


# ---- layer 3: output directories -------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(key: str, path: str | Path, min_free_mb: float = DEFAULT_MIN_FREE_MB,
                       appended: Iterable[str] = ()) -> None:
    """ConfigError unless `path` is (or can be created as) a directory we can write into with at least
    min_free_mb MB free. The test is a real write (an unnamed temporary file, gone when closed): permission
    bits, read-only mounts and root's privileges all count as they will for the run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(key, str(path), "a directory (this is a file)")
    where = _existing_ancestor(path)
    if not where.is_dir():
        raise ConfigError(key, str(path), f"a directory ({where} is a file, so it cannot be created)")
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".vrs-write-test-"):
            pass
    except OSError as err:
        what = "write into it" if where == path.absolute() else f"create it in {where}"
        raise ConfigError(key, str(path), f"a writable directory: cannot {what} ({err.strerror or err})") from None
    for name in appended:  # rows are appended to these in place (the rest is replaced atomically)
        f = path / name
        if f.is_file() and not os.access(f, os.W_OK):
            raise ConfigError(key, str(path), f"a directory whose {name} can be appended to (it is read-only)")
    free_mb = shutil.disk_usage(where).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(key, str(path), f"a directory with at least {min_free_mb:g} MB free (paths.min_free_mb); "
                                          f"{where} has {free_mb:.0f} MB free")


def check_output_dirs(cfg: dict, app: str) -> None:
    min_free = (cfg.get("paths") or {}).get("min_free_mb", DEFAULT_MIN_FREE_MB)
    seen = set()
    for key, appended in OUTPUT_DIRS[app].items():
        path = _node(cfg, key)
        if key != "paths.output_dir" and path is None:
            continue  # null: the run directory, checked as paths.output_dir
        if path is None or path in seen:
            continue
        seen.add(path)
        check_writable_dir(key, path, min_free, appended)
    if app == "import":  # one new file, written next to where it will be
        out = Path(str(cfg["out_path"]))
        if out.exists() or out.is_symlink():
            raise ConfigError("out_path", str(out), "a path where nothing exists yet: vrs-import never replaces a file")
        check_writable_dir("out_path", out.parent, min_free)


# ---- layer 4: what the output directories hold -----------------------------------------------------------
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID")


def secondary_rank() -> bool:
    """Whether a multi-process launcher started this process for a rank > 0 (Lightning's DDP launcher re-runs the
    app with LOCAL_RANK set, torchrun sets RANK, srun SLURM_PROCID): its run folder is rank 0's, which rank 0 has
    checked and may already have written into."""
    def rank(name: str) -> int:
        try:
            return int(os.environ.get(name) or 0)
        except ValueError:
            return 0
    return any(rank(name) > 0 for name in RANK_VARIABLES)


def check_output_folders(cfg: DictConfig | dict, plain: dict, app: str) -> None:
    """Every directory the app writes into may take its files (vrs.utils.output_folders.check_output_folder): not one
    holding another app's results or Hydra run, and for vrs-train no earlier training run but the one it
    resumes; vrs-report's folder only a report of the same inputs. `cfg` as given (unresolved: compared with a
    training run's .hydra/config.yaml), `plain` resolved."""

    if secondary_rank():
        return  # rank 0 of this run checked (and now fills) the same folders
    run_dir = _node(plain, "paths.output_dir")
    for key in OUTPUT_DIRS[app]:
        path = _node(plain, key)
        if path is None or (key != "paths.output_dir" and path == run_dir):
            continue  # null: the run directory, checked as paths.output_dir
        check_output_folder(app, key, path, hydra_dir=key == "paths.output_dir", ckpt_path=plain.get("ckpt_path"),
                            config=cfg)
    if app == "report":  # a report folder holds the report of one set of inputs
        check_report_folder(_node(plain, "report.out_dir"), _node(plain, "report.inputs"))


# ---- all of it -------------------------------------------------------------------------------------------
def validate_config(cfg: DictConfig | dict, app: str) -> dict:
    """Everything a run relies on, before any compute: values, checkpoints, output directories and what they
    hold. Returns the resolved config."""
    plain = check_values(cfg, app)
    if app == "train":
        check_val_check_interval(plain)
        check_trainer(plain)
    check_output_dirs(plain, app)
    check_checkpoints(plain, app)
    check_output_folders(cfg, plain, app)
    return plain


# Runs the Hydra callback validated (app, mode, overrides), so the app's main does not repeat the work.
_validated_runs: set[tuple] = set()


def _run_key(app: str, hydra_cfg: Any) -> tuple:
    return app, str(hydra_cfg.mode), tuple(hydra_cfg.overrides.task)


def validate_app_config(cfg: DictConfig, app: str) -> None:
    """The first call of every app's main: validate_config, unless the Hydra callback just did it for this
    very run (it runs before Hydra creates the run directory; multirun jobs and direct calls get here)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        key = _run_key(app, HydraConfig.get())
        if key in _validated_runs:
            _validated_runs.discard(key)
            return
    validate_config(cfg, app)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


def sweep_jobs(config: DictConfig, loader: Any) -> list[list[str]]:
    """The override lists of a multirun's jobs: Hydra's basic sweeper's own expansion (every job); for another
    sweeper (Optuna), whose jobs are drawn as it goes, the first value of every swept key, then each other
    choice and each interval's end in turn (the same key = value pairs its trials can take, one at a time)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(args)
    if str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    values: dict[str, list[str]] = {}
    for o in parsed:
        if o.is_discrete_sweep():
            vals = list(o.sweep_string_iterator())
        elif o.is_sweep_override():  # interval(a, b): its ends
            vals = [str(o.value().start), str(o.value().end)]
        else:
            vals = [o.get_value_element_as_str()]
        values[o.get_key_element()] = [f"{o.get_key_element()}={v}" for v in vals]
    first = [v[0] for v in values.values()]
    return [first] + [first[:i] + [alt] + first[i + 1:] for i, v in enumerate(values.values()) for alt in v[1:]]


def check_sweeper(config: DictConfig) -> None:
    """hydra.sweeper.storage (Optuna's RDB storage): optuna 2.x cannot record its schema version with SQLAlchemy 2
    (an AssertionError when the study is created); requirements.lock pins SQLAlchemy 1.4."""
    storage = config.hydra.sweeper.get("storage")
    if isinstance(storage, str) and "://" in storage:
        import optuna
        import sqlalchemy

        if int(optuna.__version__.split(".")[0]) < 3 and int(sqlalchemy.__version__.split(".")[0]) >= 2:
            raise ConfigError("hydra.sweeper.storage", storage, f"null with SQLAlchemy {sqlalchemy.__version__}: optuna "
                              f"{optuna.__version__} needs SQLAlchemy < 2 for a database (pip install -r requirements.lock)")


class ValidateBeforeRun(_HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): validate_config before Hydra creates the run directory and
    writes its .hydra/ files, so a bad config changes nothing on disk, not even a reused run directory. With -m,
    every job of the sweep before the first starts (and before the sweep directory exists)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        app = kwargs.get("config_name")
        if app not in APPS:
            return
        cfg = copy.deepcopy(config)
        with open_dict(cfg):  # what Hydra's run_job sets next: `${hydra:runtime.output_dir}` resolves
            cfg.hydra.runtime.output_dir = os.path.abspath(str(cfg.hydra.run.dir))
        self._exit_on_user_error(lambda: self._validate(cfg, app))
        _validated_runs.add(_run_key(app, cfg.hydra))
        self._keep_run_files(cfg)

    @staticmethod
    def _keep_run_files(cfg: DictConfig) -> None:
        """What Hydra writes next into a reused run directory (.hydra/*.yaml, the log), kept so that the app can put
        it back when it refuses the run (vrs.utils.output_folders.keep_run_files)."""

        run_dir = Path(cfg.hydra.runtime.output_dir)
        sub = cfg.hydra.get("output_subdir")
        whole = [run_dir / str(sub) / f"{name}.yaml" for name in ("config", "hydra", "overrides")] if sub else []
        log = OmegaConf.select(cfg, "hydra.job_logging.handlers.file.filename", default=None,
                               throw_on_resolution_failure=False)
        keep_run_files(run_dir, whole, [Path(str(log))] if log else [])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        app = kwargs.get("config_name")
        if app not in APPS:
            return
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        loader = GlobalHydra.instance().config_loader()
        self._exit_on_user_error(lambda: check_sweeper(config))
        jobs = sweep_jobs(config, loader)
        saved = HydraConfig.instance().cfg
        try:
            for num, job in enumerate(jobs):
                def validate_job() -> None:
                    cfg = loader.load_sweep_config(config, list(job))
                    with open_dict(cfg):  # what the launcher sets for job `num`
                        cfg.hydra.job.id = cfg.hydra.job.num = num
                        cfg.hydra.runtime.output_dir = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir),
                                                                                    str(cfg.hydra.sweep.subdir)))
                    self._validate(cfg, app)

                self._exit_on_user_error(validate_job, f" (multirun job {num} of {len(jobs)}: {' '.join(job)})")
        finally:
            HydraConfig.instance().cfg = saved

    @staticmethod
    def _validate(cfg: DictConfig, app: str) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        validate_config(task, app)

    @staticmethod
    def _exit_on_user_error(fn: Callable[[], None], where: str = "") -> None:
        """fn(); a user error (or, for a multirun job, one of Hydra's composition errors) is one line and exit
        code 2. Anything else is re-raised: Hydra turns it into a warning and the app's main meets it again."""
        from hydra.errors import HydraException

        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - user errors end the run here; anything else is left to main
            err = find_user_error(exc)
            if os.environ.get("VRS_FULL_ERROR") or (err is None and not (where and isinstance(exc, HydraException))):
                raise
            if err is None:
                err = describe_hydra_error(exc)
            print(f"error: {err}{where}", file=sys.stderr)
            sys.exit(2)
