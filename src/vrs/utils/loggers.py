"""Logger factories. W&B must never block or fail a run: offline when no API key is configured, and a
logger that cannot start falls back to offline with a warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when an API key is set in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_logger(save_dir: str, project: str = "vrs", offline: bool | None = None, **kwargs):
    """A Lightning WandbLogger whose run files live under save_dir (the Hydra run directory).

    offline=None picks offline mode when no API key is configured; WANDB_MODE, if set, wins.
    """
    from pytorch_lightning.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if offline is None:
        offline = os.environ.get("WANDB_MODE", "") in ("offline", "dryrun") or not wandb_has_credentials()
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        logger = WandbLogger(save_dir=save_dir, project=project, offline=offline, **kwargs)
        _ = logger.experiment  # start the run now, so failures show here and not mid-training
        return logger
    except Exception as err:  # noqa: BLE001 - any W&B trouble must degrade to offline, never stop the run
        if offline:
            raise
        log.warning("W&B online logging failed (%s); continuing offline", err)
        os.environ["WANDB_MODE"] = "offline"
        logger = WandbLogger(save_dir=save_dir, project=project, offline=True, **kwargs)
        _ = logger.experiment
        return logger


def finish_wandb() -> None:
    """Close the current W&B run (one run per Hydra job, also in multirun)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
