"""Running an app's work over several processes: under torchrun, or spawned by the app itself
(`certify.world_size` / `attack.world_size`). Shared by vrs-certify and vrs-attack."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
from typing import Any, Callable

from vrs.errors import VRSError


def torchrun_env() -> tuple[int, int] | None:
    """(rank, world size) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"]), world
    return None


def init_torchrun():
    import torch.distributed as dist

    if not dist.is_initialized():  # gloo is only the control plane: nothing but small objects travels
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist


def from_rank0(dist, value: Any) -> Any:
    """Rank 0's `value` on every rank of a torchrun job (dist from init_torchrun); the value itself when dist is
    None (one process)."""
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def spawn_ranks(world: int, target: Callable, rank_args: Callable[[int], tuple], rank0: Callable[[], Any],
                name: str, ctx=None) -> None:
    """Run rank0() in this process while ranks 1..world-1 run target(*rank_args(rank)) in spawned processes.

    Any process that fails is one VRSError after the others are stopped; the rows they finished stay on disk
    (both apps append them per item), so rerunning the same command resumes.
    """
    ctx = ctx or mp.get_context("spawn")
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
