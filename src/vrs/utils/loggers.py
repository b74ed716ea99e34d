"""Logger factories. W&B must never block or fail a run: offline when no API key is configured, and a
logger that cannot start falls back to offline with a warning.

Every app builds its loggers with `build_loggers(cfg, **facts)`: W&B runs are grouped by experiment
(`group: ${task_name}`, which each experiment preset sets), typed by app (`job_type`: train | certify |
attack) and tagged with `run_tags(**facts)` (data set, method, sigma or lambda, ...) on top of the config's
`tags`, so runs of all three apps filter the same way. The dashboard that uses them: docs/wandb.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from vrs.errors import first_line

log = logging.getLogger(__name__)

# Targets whose config gets the run tags (our factory below, or Lightning's class used directly).
WANDB_TARGETS = ("vrs.utils.loggers.wandb_logger", "pytorch_lightning.loggers.WandbLogger",
                 "lightning.pytorch.loggers.WandbLogger", "pytorch_lightning.loggers.wandb.WandbLogger")


def wandb_has_credentials() -> bool:
    """True when an API key is set in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_logger(save_dir: str, project: str = "vrs", offline: bool | None = None, name: str | None = None,
                 group: str | None = None, **kwargs):
    """A Lightning WandbLogger whose run files live under save_dir (the Hydra run directory).

    offline=None picks offline mode when no API key is configured; WANDB_MODE, if set, wins.
    name=None names the run <group>-<run directory name>: the timestamp of a run, the job number in a
    multirun, `base` for VRS's stage 1.
    """
    from pytorch_lightning.loggers import WandbLogger  # deferred: Lightning, only when a W&B logger is built

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"{group}-{Path(save_dir).name}" if group else Path(save_dir).name
    kwargs.update(name=name, group=group)
    if offline is None:
        offline = os.environ.get("WANDB_MODE", "") in ("offline", "dryrun") or not wandb_has_credentials()
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unreachable = None if offline else wandb_unreachable()
    if unreachable:  # wandb.init would retry for 90 s per attempt before failing
        log.warning("W&B server %s; continuing offline (sync later with `wandb sync`)", unreachable)
        offline = True
        os.environ["WANDB_MODE"] = "offline"
    try:
        logger = WandbLogger(save_dir=save_dir, project=project, offline=offline, **kwargs)
        _ = logger.experiment  # start the run now, so failures show here and not mid-training
        return logger
    except Exception as err:  # any W&B trouble must degrade to offline, never stop the run
        if offline:
            raise
        log.warning("W&B online logging failed (%s); continuing offline", first_line(err))
        import wandb  # deferred: wandb is heavy; only this fallback needs it

        wandb.teardown()  # the failed session keeps its online settings (and would log in again)
        os.environ["WANDB_MODE"] = "offline"
        logger = WandbLogger(save_dir=save_dir, project=project, offline=True, **kwargs)
        _ = logger.experiment
        return logger


def wandb_unreachable(timeout: float = 5.0) -> str | None:
    """None when the W&B server (WANDB_BASE_URL, default api.wandb.ai) accepts a connection within timeout
    seconds, else why not."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as err:
        return f"{host}:{port} is unreachable ({err.strerror or err})"


def finish_wandb() -> None:
    """Close the current W&B run (one run per Hydra job, also in multirun)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# ---- run tags ----------------------------------------------------------------------------------------------
def _value(v: Any) -> str:
    """0.25 -> '0.25'; a (low, high) range -> '0.12-1'."""
    if isinstance(v, (tuple, list)):
        return "-".join(_value(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_tags(data: str | None = None, method: str | None = None, sigma: Any = None, lam: Any = None,
             **more: Any) -> list[str]:
    """`key=value` tags, the same vocabulary in every app: data=<data set>, method=cohen|vrs,
    sigma=<s> (or a range <lo>-<hi>), lam=<lambda>, plus any extra (stage, prior, certificate, attack, training).
    None values are left out."""
    facts = {"data": data, "method": method, "sigma": sigma, "lam": lam, **more}
    return [f"{k}={_value(v)}" for k, v in facts.items() if v is not None]


def train_facts(cfg: DictConfig) -> dict[str, Any]:
    """run_tags() facts of a vrs-train run, from its config: a fixed-sigma classifier is Cohen's method;
    a multi-sigma classifier is VRS's stage 1 (stage=base); a selector run is VRS's stage 2."""
    module = str((cfg.get("module") or {}).get("_target_", ""))
    facts: dict[str, Any] = {"data": (cfg.get("data") or {}).get("name")}
    if module.endswith("SelectorModule"):
        sel = cfg.get("selector") or {}
        facts.update(method="vrs", stage="selector", sigma=(sel.get("sigma_min"), sel.get("sigma_max")),
                     prior=(cfg.get("prior") or {}).get("name"))
        return facts
    noise = cfg.get("noise") or {}
    if "sigma_min" in noise:
        facts.update(method="vrs", stage="base", sigma=(noise.sigma_min, noise.sigma_max))
    elif "sigma" in noise:
        facts.update(method="cohen", sigma=float(noise.sigma))
    # the training method (vrs.modules.training: the file of its _target_), where it is not the default
    target = str(((cfg.get("module") or {}).get("training") or {}).get("_target_", ""))
    if target.count(".") >= 2 and target.rsplit(".", 2)[-2] != "gaussian":
        facts["training"] = target.rsplit(".", 2)[-2]
    return facts


def is_wandb(conf: Any) -> bool:
    return isinstance(conf, DictConfig) and conf.get("_target_") in WANDB_TARGETS


def build_loggers(cfg: DictConfig, **facts: Any) -> list[Any]:
    """Instantiate every `_target_` entry of cfg.logger; W&B loggers get the config's `tags` plus
    run_tags(**facts) (duplicates dropped, order kept)."""
    out = []
    for _, conf in (cfg.get("logger") or {}).items():
        if not (isinstance(conf, DictConfig) and "_target_" in conf):
            continue
        if is_wandb(conf):
            tags = list(dict.fromkeys([*(conf.get("tags") or []), *run_tags(**facts)]))
            out.append(instantiate(conf, tags=tags))
        else:
            out.append(instantiate(conf))
    return out
