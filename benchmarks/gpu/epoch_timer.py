"""A Lightning callback for benchmarks/gpu/multigpu.sh: the wall time of each training epoch (the training
batches only, validation excluded), written by rank 0 to $EPOCH_TIMES as JSON. On CUDA the clock stops
after a device synchronisation. Added to a run with PYTHONPATH=benchmarks/gpu and
+callbacks.epoch_timer._target_=epoch_timer.EpochTimer (the DDP processes inherit both)."""

from __future__ import annotations

import json
import os
import time

import pytorch_lightning as pl
import torch


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0: float | None = None

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = self._now(trainer)

    def _stop(self, trainer) -> None:
        if self._t0 is None:
            return
        self.times.append(self._now(trainer) - self._t0)
        self._t0 = None
        path = os.environ.get("EPOCH_TIMES")
        if path and trainer.global_rank == 0:
            with open(path, "w") as fh:
                json.dump({"world_size": trainer.world_size, "epoch_seconds": self.times,
                           "train_batches": trainer.num_training_batches}, fh)

    def on_validation_start(self, trainer, pl_module) -> None:  # the validation ending a training epoch
        if not trainer.sanity_checking:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # no validation this epoch
        self._stop(trainer)
