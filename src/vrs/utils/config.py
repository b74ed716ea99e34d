"""Config helpers: print the resolved tree with rich, instantiate lists of callbacks/loggers."""

from __future__ import annotations

from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vrs.errors import ConfigError, find_user_error


def print_config_tree(cfg: DictConfig, order: tuple[str, ...] = ()) -> None:
    """Print the resolved config as a rich tree, `order` first, then the rest."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)


def plain(cfg: Any) -> Any:
    """An OmegaConf node as plain dicts and lists, interpolations resolved (what checkpoints store, since
    torch.load(weights_only=True) reads no OmegaConf); anything else as it is."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a dict-of-configs group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(conf) for _, conf in cfg.items() if isinstance(conf, DictConfig) and "_target_" in conf]


def instantiate_component(cfg: dict, key: str, base: type, what: str):
    """instantiate(cfg) for a pluggable component (a `_target_` config of a group such as `objective` or
    `training`), with one clear ConfigError: the constructor's own ConfigError unwrapped from Hydra's
    exception, else "<key>=<_target_> is not allowed: <what> ...", and a refusal of an object that is not a `base`."""
    try:
        obj = instantiate(cfg)
    except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's ConfigError
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(key, cfg.get("_target_"), f"{what} that builds from its config ({cause})") from None
    if not isinstance(obj, base):
        raise ConfigError(key, cfg.get("_target_"), f"a subclass of {base.__module__}.{base.__name__}")
    return obj


def construct(node: dict, **kwargs: Any) -> Any:
    """Build a `_target_` node (running its constructor's checks); the user's error (a VRSError) comes out
    unwrapped from Hydra's InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        user = find_user_error(err)
        if user is not None:
            raise user from None
        raise
