"""Preflight: what a run needs from files, checked once per run before any compute (after vrs.config_schema has
checked the values).

    preflight(cfg, plain, app)   # vrs.config_schema.validate_config calls it, from Hydra's ValidateBeforeRun
                                 # callback before the run directory exists (or from the app's main)

1. `check_checkpoints`: ckpt_path / module.base_ckpt exist, load (weights only), are of the kind the app needs and
   were trained on the configured data set: shape, classes, normalisation (vrs.checkpoint.check_data_matches).
2. `check_output_dirs`: every directory the app writes into is a directory, can be written (a real test write),
   and has at least paths.min_free_mb MB free.
3. `check_output_folders`: none of them holds another app's results, or (the run directory) another app's Hydra
   run; vrs-train reuses a training run's folder only to resume it (vrs.utils.output_folders).
4. vrs-report's inputs exist (`parse_inputs`).
Each raises a ConfigError / VRSError that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig

from vrs.errors import ConfigError, VRSError, check, find_user_error
from vrs.utils.config import construct
from vrs.utils.dashboard_spec import check_upload_needs
from vrs.utils.output_folders import check_output_folder, check_report_folder

# The output directories each app writes into (key -> the files there that are appended to in place).
OUTPUT_DIRS = {"train": {"paths.output_dir": ()},
               "certify": {"paths.output_dir": (), "certify.out_dir": ("certify.tsv",)},
               "attack": {"paths.output_dir": (), "attack.out_dir": ("attack.csv",)},
               "report": {"paths.output_dir": (), "report.out_dir": ()},
               "dashboard": {"paths.output_dir": ()},
               "import": {"paths.output_dir": ()}}
DEFAULT_MIN_FREE_MB = 100


def node_at(cfg: dict, dotted: str) -> Any:
    """cfg's value at a dotted key (`report.out_dir`), None where there is none."""
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def preflight(cfg: DictConfig | dict, plain: dict, app: str) -> None:
    """Everything the run needs from files, before any compute: `cfg` as given (unresolved: compared with a training
    run's .hydra/config.yaml), `plain` resolved and checked by vrs.config_schema.check_values."""
    if app == "report":
        parse_inputs(plain["report"]["inputs"])
    if app == "dashboard":
        check_upload_needs(plain["dashboard"])  # a save needs W&B's key and wandb-workspaces
    check_output_dirs(plain, app)
    check_checkpoints(plain, app)
    check_output_folders(cfg, plain, app)


# ---- vrs-report's inputs ---------------------------------------------------------------------------------------
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


# ---- checkpoints ------------------------------------------------------------------------------
def data_spec(data: dict) -> dict:
    return {k: data.get(k) for k in ("name", "channels", "size", "num_classes", "mean", "std")}


def _naming(key: str, fn: Callable[[], Any]) -> Any:
    """fn(), its VRSError prefixed with the key that led to it (vrs.checkpoint's messages name the file)."""
    try:
        return fn()
    except Exception as exc:
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
                        lambda: construct(module, data=construct(data).spec.to_dict()))
        if cfg.get("ckpt_path"):
            _naming("ckpt_path", lambda: check_resume_checkpoint(cfg["ckpt_path"], built))


# ---- output directories -------------------------------------------------------------------------
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
        path = node_at(cfg, key)
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


# ---- what the output directories hold -----------------------------------------------------------
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
    run_dir = node_at(plain, "paths.output_dir")
    for key in OUTPUT_DIRS[app]:
        path = node_at(plain, key)
        if path is None or (key != "paths.output_dir" and path == run_dir):
            continue  # null: the run directory, checked as paths.output_dir
        check_output_folder(app, key, path, hydra_dir=key == "paths.output_dir", ckpt_path=plain.get("ckpt_path"),
                            config=cfg)
    if app == "report":  # a report folder holds the report of one set of inputs
        check_report_folder(node_at(plain, "report.out_dir"), node_at(plain, "report.inputs"))
