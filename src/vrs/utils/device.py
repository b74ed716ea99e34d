"""Which device a shard of work runs on."""

from __future__ import annotations

import os

import torch


def shard_device(device: str, rank: int, world: int) -> str:
    """Pin this process to its device: shard `rank` of `world` takes GPU rank % count when no index is
    given (torch.cuda.set_device needs one); CPU shards split the cores between them."""
    if torch.device(device).type == "cuda":
        if torch.device(device).index is None:
            device = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return device
