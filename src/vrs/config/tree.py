"""Checks over the whole config tree that no typed config holds: every interpolation resolves, every number is one
torch and numpy take, and every key of a `_target_` node is a parameter of its target."""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from vrs.config.rules import HYDRA_KEYS
from vrs.errors import ConfigError, VRSError, first_line

# Keys a `_target_` node may hold beyond its target's parameters (read by our code, not the target).
EXTRA_KEYS = {"scheduler": ("interval",)}
# Every number in a config ends up in torch or numpy: integers must fit int64, floats float32 (finite there).
INT64_MAX, FLOAT32_MAX, FLOAT32_TINY = 2**63 - 1, 3.4028234663852886e38, 1.1754943508222875e-38


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
