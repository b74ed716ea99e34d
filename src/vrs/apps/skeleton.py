"""The run skeleton of vrs-certify and vrs-attack: processes (one, spawned by the app with
`certify.world_size` / `attack.world_size`, or torchrun's), device, opening the store, sharding the work,
logging the results, and the body of the app's `main`.

Both apps run the same way:

    ranks = Ranks.start(world_size)                   # one process, spawned ranks, or torchrun's ranks
    done = open_store(ranks, store, check)            # rank 0 locks, validates and repairs; all get the keys
    rows = run_ranks(ranks, todo, store, work, ...)   # rank r takes todo[r::world]; rank 0 merges the shards
    summary -> store.write_summary, plot; log_results(...); store.unlock(); ranks.close()

and their `main` is `run_app(cfg, app, run, print_results, order)` under the decorators of vrs.errors.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from vrs.utils.output_folders import forget_run_files, restore_run_files
from vrs.apps.results import ResultsStore
from vrs.apps.before_run import validate_app_config
from vrs.errors import VRSError
from vrs.utils.config import print_config_tree
from vrs.utils.loggers import build_loggers, finish_wandb

log = logging.getLogger(__name__)


# ---- processes and device ----------------------------------------------------------------------------------
def torchrun_env() -> tuple[int, int] | None:
    """(rank, world size) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"]), world
    return None


@dataclass
class Ranks:
    """This process's place in the run: rank, world size, and torch.distributed under torchrun (else None)."""

    rank: int
    world: int
    dist: Any = None

    @classmethod
    def start(cls, world_size: int) -> Ranks:
        """torchrun's ranks when launched by it (WORLD_SIZE > 1); else rank 0 of `world_size` processes
        (the others are spawned by run_ranks)."""
        launched = torchrun_env()
        if launched is None:
            return cls(0, world_size)
        import torch.distributed as dist  # deferred: torch is heavy and only torchrun needs this

        if not dist.is_initialized():  # gloo is only the control plane: nothing but small objects travels
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        return cls(launched[0], launched[1], dist)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        """The rank among this machine's processes (torchrun's LOCAL_RANK): which GPU this process takes."""
        return int(os.environ.get("LOCAL_RANK", self.rank)) if self.dist is not None else self.rank

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (the value itself in one process)."""
        if self.dist is None:
            return value
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.dist is not None:
            self.dist.destroy_process_group()


def spawn_ranks(world: int, target: Callable, rank_args: Callable[[int], tuple], rank0: Callable[[], Any],
                name: str) -> None:
    """Run rank0() in this process while ranks 1..world-1 run target(*rank_args(rank)) in spawned processes.

    Any process that fails is one VRSError after the others are stopped; the rows they finished stay on disk
    (both apps append them per item), so rerunning the same command resumes.
    """
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=rank_args(r), name=f"{name}-rank{r}") for r in range(1, world)]
    for p in procs:
        p.start()
    try:
        rank0()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed:
        raise VRSError(f"shard processes failed: {failed}; finished rows are kept, rerun the same command to resume")


def resolve_device(device: str, key: str) -> str:
    """The device a config value names (`auto`: CUDA when there is one); VRSError naming `key` otherwise."""
    import torch  # deferred: vrs-certify --help and config errors stay fast

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VRSError(f"{key}={device!r} but no CUDA device is available; use {key}=cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise VRSError(f"{key}={device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    return device


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's with its core count (summary.json's `device`)."""
    import platform

    import torch  # deferred: torch stays off vrs-attack's start-up path

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def load_data(data_cfg: dict, split: str) -> tuple[Any, Any, dict]:
    """(images as uint8, labels, the data spec) of one split of the data config."""
    from hydra.utils import instantiate

    dm = instantiate(data_cfg)
    dm.setup()
    x, y = dm.splits[split]
    return x, y, dm.spec.to_dict()


# ---- the store across ranks ----------------------------------------------------------------------------
def open_store(ranks: Ranks, store: ResultsStore, check: Callable[[dict], None] | None = None) -> set:
    """Rank 0 locks the store and opens it (refusing other settings, damaged rows or rows check(rows) refuses
    before anything in it changes); every rank gets the keys of the finished rows (as store.open gives
    them), or the same VRSError (and the lock is released)."""
    status: dict[str, Any] = {}
    if ranks.main:
        try:
            store.lock()
            rows = store.open(check)  # check(rows) before open() writes anything
            status = {"done": sorted(rows)}
        except VRSError as err:
            status = {"error": str(err)}
    status = ranks.from_main(status)
    if "error" in status:
        store.unlock()
        raise VRSError(status["error"])
    forget_run_files()  # the run writes here now: Hydra's files in its run directory describe it
    return set(status["done"])


def run_ranks(ranks: Ranks, todo: list, store: ResultsStore, work: Callable[[list, int, Path], Any],
              spawn_target: Callable, spawn_args: Callable[[int, list], tuple], name: str,
              order: Callable | None = None) -> dict | None:
    """Share `todo` (images or batches) between the processes: rank r takes todo[r::world].

    work(mine, rank, table) runs here, appending to `table` (the store's table when there is one process,
    else this rank's shard); spawned ranks run spawn_target(*spawn_args(rank, mine)). Rank 0 folds the shards
    into the table at the end, also after a failure (the finished rows of every process are kept), and
    returns every row of the store (other torchrun ranks: None).
    """
    rows = None
    try:
        try:
            if ranks.dist is not None:
                work(todo[ranks.rank::ranks.world], ranks.rank, store.shard_path(ranks.rank))
                ranks.dist.barrier()
            elif ranks.world == 1:
                work(todo, 0, store.table_path)
            else:
                world = ranks.world
                spawn_ranks(world, spawn_target, lambda r: spawn_args(r, todo[r::world]),
                            lambda: work(todo[0::world], 0, store.shard_path(0)), name)
        finally:
            if ranks.main:
                rows = store.merge(order)
    except BaseException:
        store.unlock()  # a rerun in this process (a sweep, a test) must be able to lock the directory again
        raise
    return rows


# ---- loggers -------------------------------------------------------------------------------------------
def log_results(cfg: DictConfig, facts: dict, metrics: dict[str, float], images: dict[str, Path | None] | None = None,
                table: tuple[str, Sequence[str], list[list]] | None = None) -> None:
    """Send a finished run to the configured loggers (logger=...): the config, the metrics, and where the
    logger takes them the plots (key -> png) and one table (key, columns, data). `facts` are the W&B tags
    (vrs.utils.loggers.run_tags). A logger that fails is a warning: the run's files are written already."""
    if not cfg.get("logger"):
        return
    for lg in build_loggers(cfg, **facts):
        try:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(metrics, step=0)
            for key, png in (images or {}).items():
                if png is not None and png.is_file() and hasattr(lg, "log_image"):
                    lg.log_image(key=key, images=[str(png)])
            if table is not None and hasattr(lg, "log_table"):
                lg.log_table(key=table[0], columns=list(table[1]), data=table[2])
            lg.save()
            lg.finalize("success")
        except Exception as err:  # noqa: BLE001 - a logger failing must not lose the run's files
            log.warning("logger %s failed: %s", type(lg).__name__, err)


# ---- the app's main ------------------------------------------------------------------------------------
def run_app(cfg: DictConfig, app: str, run: Callable[[DictConfig], dict],
            print_results: Callable[[dict, DictConfig], Any], order: Sequence[str]) -> Any:
    """The body of vrs-<app>'s `main` (under hydra_errors_exit / hydra.main / user_errors_exit, which turn a
    VRSError into one line and exit code 2): validate the config before any compute or output, print it
    (rank 0), run, finish W&B whatever happened, print the results (rank 0) and return the sweep's objective. A run
    that stops before its store opened puts back Hydra's files of a reused run directory (vrs.utils.output_folders)."""
    validate_app_config(cfg, app)
    launched = torchrun_env()
    if cfg.get("print_config", True) and (launched is None or launched[0] == 0):
        print_config_tree(cfg, order=tuple(order))
    try:
        try:
            summary = run(cfg)
        finally:
            finish_wandb()
    except BaseException:
        restore_run_files()  # refused before its store opened: Hydra's files in a reused run directory put back
        raise
    if not summary:  # a torchrun rank other than 0
        return None
    return print_results(summary, cfg)
