"""Validation before a run, as the apps orchestrate it: Hydra's ValidateBeforeRun callback (conf/hydra/default.yaml)
runs vrs.config_schema.validate_config before Hydra creates the run directory, and for a multirun on every job before
the first starts; `validate_app_config`, the first call of every app's main, skips what the callback just did.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf, open_dict

from vrs.config_schema import APPS, validate_config
from vrs.errors import ConfigError, describe_hydra_error, find_user_error
from vrs.utils.output_folders import keep_run_files

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
            raise ConfigError("hydra.sweeper.storage", storage,
                              f"null with SQLAlchemy {sqlalchemy.__version__}: optuna {optuna.__version__} needs "
                              "SQLAlchemy < 2 for a database (pip install -r requirements.lock)")


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
                def validate_job(job=job, num=num) -> None:
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
        except Exception as exc:
            err = find_user_error(exc)
            if os.environ.get("VRS_FULL_ERROR") or (err is None and not (where and isinstance(exc, HydraException))):
                raise
            if err is None:
                err = describe_hydra_error(exc)
            print(f"error: {err}{where}", file=sys.stderr)
            sys.exit(2)
