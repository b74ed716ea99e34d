"""What an output folder holds, and whether an app may write into it (issue 23): one rule for every app.

    held_results(folder)    -> {"vrs-certify": ["certify.tsv", ...], ...}   by the apps' marker files
    hydra_run_of(folder)    -> "certify"                                    the app of its .hydra/ files
    check_output_folder(app, key, folder, ...)                              VRSError, or nothing

An app writes into a folder that is new or empty, or holds its own results:
- never into one that holds another app's results (vrs-attack's summary.json would replace vrs-certify's;
  vrs-report's plots bear the same names as theirs; a training run's .hydra/ and metrics.csv would be mixed
  with another run's) nor, as the Hydra run directory, into another app's run (Hydra would replace its
  .hydra/*.yaml);
- vrs-certify and vrs-attack resume their own results only with the same settings (their results store,
  vrs.apps.results, compares the settings sidecar);
- vrs-train writes into a training run only to resume it: ckpt_path=<that run>/checkpoints/<file> and the same
  config (its .hydra/config.yaml) apart from ckpt_path and print_config;
- vrs-report rewrites a report folder only with a report of the same inputs (a refresh; its title and radii
  may change): report.meta.json records the inputs, resolved. A folder of an older version without it is
  taken as it is (its report.md names the inputs as typed, relative to a directory it does not record, so
  they cannot be compared) and gets the sidecar with the new report.

vrs.config_schema runs check_output_folders before Hydra creates (or writes into) the run directory, so a
refused folder is left byte-identical. A refusal only the app can make (vrs-certify's and vrs-attack's store
comparing settings that come from the checkpoint; a damaged input of vrs-report) comes after Hydra wrote its
files into a reused run directory: keep_run_files / restore_run_files put them back (see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from vrs.errors import VRSError
from vrs.utils.io import atomic_write, truncate

# The table and sidecar of each app that keeps its results in a results store (vrs.apps.results): its marker files
# here, and the names the apps write (issue 23: vrs-attack into a vrs-certify directory replaced its summary.json).
APP_FILES = {"vrs-certify": ("certify.tsv", "certify.meta.json"), "vrs-attack": ("attack.csv", "settings.json")}

# Files only one app writes (patterns relative to the folder). Plots and summary.json are not markers: several
# apps write files of those names.
MARKERS: dict[str, tuple[str, ...]] = {
    "vrs-certify": (*APP_FILES["vrs-certify"], "certify.rank*.tsv"),  # certify.tsv, certify.meta.json, shards
    "vrs-attack": (*APP_FILES["vrs-attack"], "attack.rank*.csv"),      # attack.csv, settings.json, shards
    "vrs-report": ("report.md", "report.csv", "frontier.csv", "sigma_diagnostics.csv", "report.meta.json"),
    "vrs-import": ("imported.ckpt",),
    "vrs-train": ("checkpoints/*.ckpt", "csv/metrics.csv", "csv/hparams.yaml", "base/checkpoints/*.ckpt",
                  "base/csv/metrics.csv"),
}
CSV_LOG = "csv/"  # Lightning's CSVLogger folder (logger=csv), which every app writes
# vrs-report's sidecar: the inputs (resolved), radii and title of the report in the folder.
REPORT_META = "report.meta.json"
# Keys of a training run's config that may differ when it is resumed in its own folder.
RESUME_FREE_KEYS = ("ckpt_path", "print_config")


def held_results(folder: str | Path) -> dict[str, list[str]]:
    """{app: the marker files found} for every app whose results `folder` holds (empty when none, or when
    the folder does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    for app, patterns in MARKERS.items():
        files = sorted({str(p.relative_to(folder)) for pat in patterns for p in folder.glob(pat) if p.is_file()})
        if files:
            found[app] = files
    # vrs-certify and vrs-attack with logger=csv write csv/metrics.csv and csv/hparams.yaml too: beside their own
    # results those are theirs, not a training run's (a training run's folder holds its checkpoints)
    train = found.get("vrs-train", [])
    if train and all(f.startswith(CSV_LOG) for f in train) and ("vrs-certify" in found or "vrs-attack" in found):
        del found["vrs-train"]
    return found


def hydra_run_of(folder: str | Path) -> str | None:
    """The app (train, certify, attack, report) whose Hydra run `folder` is, from its .hydra/hydra.yaml
    (job.config_name); None when there is none or it does not say."""
    path = Path(folder) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        import yaml  # deferred: only reused run directories are read

        job = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("job") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    name = job.get("config_name")
    return name if isinstance(name, str) else None


def _show(items: Iterable[str], most: int = 3, what: str = "files") -> str:
    items = list(items)
    return ", ".join(items[:most]) + (f", ... ({len(items)} {what})" if len(items) > most else "")


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (plain containers, interpolations unresolved)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if prefix == "" and k in RESUME_FREE_KEYS:
                continue
            if k not in old or k not in new:
                out.append(key)
            else:
                out += config_diff(old[k], new[k], key)
        return out
    return [] if old == new else [prefix]


def check_training_resume(key: str, folder: Path, ckpt_path: Any, config: Any) -> None:
    """vrs-train into a folder holding a training run: only a resume of that run (ckpt_path inside it, the
    same config as its .hydra/config.yaml), else VRSError."""
    how = (f"vrs-train writes into an existing training run only to resume it (ckpt_path={folder}/checkpoints/"
           f"last.ckpt and the same settings): use another {key}")
    if not ckpt_path:
        raise VRSError(f"{key}={folder} holds a vrs-train run ({_show(held_results(folder)['vrs-train'])}); {how}")
    ckpt = Path(str(ckpt_path)).absolute()
    if folder.absolute() not in ckpt.parents:
        raise VRSError(f"{key}={folder} holds a vrs-train run, and ckpt_path={ckpt_path} is not one of its "
                       f"checkpoints; {how}")
    old_path = folder / ".hydra" / "config.yaml"
    if config is None or not old_path.is_file():
        return  # nothing to compare with (a run made outside Hydra, or a direct call)
    from omegaconf import DictConfig, OmegaConf  # deferred: only a resume in place compares configs

    try:
        old = OmegaConf.to_container(OmegaConf.load(old_path), resolve=False)
    except Exception as err:  # noqa: BLE001 - a damaged config.yaml: the settings are unknown
        raise VRSError(f"{key}={folder} holds a vrs-train run whose {old_path.name} is unreadable "
                       f"({type(err).__name__}), so its settings are unknown; use another {key}") from None
    new = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    new = {k: v for k, v in new.items() if k != "hydra"}
    diffs = config_diff(old, new)
    if diffs:
        raise VRSError(f"{key}={folder} holds a vrs-train run made with other settings "
                       f"({_show(diffs, 5, 'keys')} differ from its .hydra/config.yaml); {how}")


def check_output_folder(app: str, key: str, folder: str | Path, hydra_dir: bool = False, ckpt_path: Any = None,
                        config: Any = None) -> None:
    """VRSError (naming `key`, the folder, what it holds and what is allowed) unless vrs-`app` may write into
    `folder`. hydra_dir: Hydra writes its .hydra/ files there too (paths.output_dir). ckpt_path, config:
    vrs-train's, to tell a resume in place from another run."""
    folder = Path(folder)
    held = held_results(folder)
    mine = f"vrs-{app}"
    allowed = ("a new or empty folder, or one of vrs-train's own runs to resume it" if app == "train" else
               f"a new or empty folder, or one of {mine}'s own results folders")
    for other, files in held.items():
        if other != mine:
            raise VRSError(f"{key}={folder} holds {other} results ({_show(files)}); {mine} writes only into "
                           f"{allowed}: use another {key}")
    run_of = hydra_run_of(folder) if hydra_dir else None
    if run_of is not None and run_of != app:
        raise VRSError(f"{key}={folder} is the run directory of a vrs-{run_of} run (.hydra/), whose files this run "
                       f"would replace; {mine} writes only into {allowed}: use another {key}")
    if app == "train" and mine in held:
        check_training_resume(key, folder, ckpt_path, config)


def report_inputs(inputs: Any) -> list[str]:
    """What a report is the report of: report.inputs resolved to absolute paths, sorted, without repeats."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs or [])
    return sorted({str(Path(str(p)).resolve()) for p in inputs})


def check_report_folder(folder: Any, inputs: Any) -> None:
    """VRSError unless report.out_dir=`folder` is new, holds no report.meta.json (see the module's doc) or holds
    the report of the same inputs."""
    path = Path(str(folder)) / REPORT_META if folder else None
    if path is None or not path.is_file():
        return
    import json  # deferred: only an existing report folder is read

    try:
        held = json.loads(path.read_text()).get("inputs")
        if not (isinstance(held, list) and all(isinstance(p, str) for p in held)):
            raise ValueError("no list of inputs")
    except (OSError, ValueError, AttributeError) as err:
        raise VRSError(f"report.out_dir={folder} holds a report whose {REPORT_META} is unreadable "
                       f"({type(err).__name__}), so its inputs are unknown; use another report.out_dir") from None
    if report_inputs(held) != report_inputs(inputs):
        raise VRSError(f"report.out_dir={folder} holds the report of other inputs (report.inputs=[{','.join(held)}]); "
                       f"a report folder is rewritten only by a report of the same inputs (a refresh): use another "
                       f"report.out_dir for report.inputs=[{','.join(report_inputs(inputs))}]")


# ---- a reused run directory: Hydra's files put back when the app refuses the run -----------------------------
# Hydra writes .hydra/config.yaml, hydra.yaml and overrides.yaml and appends to <task_name>.log in the run directory
# after ValidateBeforeRun checked the config, before the app runs. Some refusals come only then: vrs-certify's and
# vrs-attack's results store (by default in the run directory: `hydra.run.dir=<an earlier run>` resumes it) compares
# settings that come from the checkpoint (its hash, the sigma it was trained with, the fused stages of its network),
# so they cannot be compared before Hydra writes without loading and deriving them twice. Instead the callback keeps
# those files as they are when the run directory already exists (keep_run_files); an app that stops before it wrote
# anything puts them back (restore_run_files: the refused run leaves the directory byte-identical), and one whose
# store opened lets Hydra's files stand (forget_run_files: they describe the run that now writes there).
_kept: dict[str, Any] = {}
T = TypeVar("T")


def keep_run_files(run_dir: str | Path, whole: Iterable[Path], appended: Iterable[Path] = ()) -> None:
    """Remember the files Hydra is about to write into an existing run directory: `whole` (rewritten: their bytes)
    and `appended` (the log: its size); None for those that do not exist yet."""
    _kept.clear()
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        return  # a new run directory: nothing to put back
    whole = [Path(p) for p in whole]
    _kept.update(dir=run_dir, whole={p: p.read_bytes() if p.is_file() else None for p in whole},
                 appended={Path(p): Path(p).stat().st_size if Path(p).is_file() else None for p in appended},
                 new_dirs=sorted({p.parent for p in whole if not p.parent.exists()}, reverse=True))


def run_or_put_back(work: Callable[[], T]) -> T:
    """work()'s result, after which Hydra's files of the run directory stand (forget_run_files); if work() raises,
    they are put back first (restore_run_files): a refused run writes nothing, not even those files."""
    try:
        result = work()
    except BaseException:
        restore_run_files()
        raise
    forget_run_files()
    return result


def forget_run_files() -> None:
    """The run writes its results now: Hydra's files describe it and stay."""
    _kept.clear()


def restore_run_files() -> None:
    """Put back what keep_run_files kept of the current Hydra run's directory (the files byte-identical, the log
    cut to its old length, files and folders Hydra added removed); nothing when another directory was kept."""
    from hydra.core.hydra_config import HydraConfig  # deferred: only a refused run gets here

    kept = dict(_kept)
    _kept.clear()
    if not kept or not HydraConfig.initialized():
        return
    if Path(HydraConfig.get().runtime.output_dir).absolute() != kept["dir"]:
        return
    for path, data in kept["whole"].items():
        if data is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != data:
            atomic_write(path, data)
    for path, size in kept["appended"].items():
        if size is None:
            path.unlink(missing_ok=True)
        elif path.is_file() and path.stat().st_size > size:
            truncate(path, size)
    for folder in kept["new_dirs"]:
        try:
            folder.rmdir()
        except OSError:
            pass
