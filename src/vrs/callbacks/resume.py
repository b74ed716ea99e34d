"""Exact resume: a training run killed at any step and restarted from last.ckpt continues bit-identically
(on the same device and software) to a run that was never interrupted.

Lightning restores the weights, optimizer, LR schedule, loop counters and callback states. It does not
restore:
- the random number generators (torch, numpy, python): the noise, crop and flip draws after a restart
  would differ. `ExactResume` reseeds them from (seed, rank, phase, number of training batches so far)
  before every training batch and at the start of every validation and test run, so the draws depend on
  the position in training only, never on what happened before in this process;
- the position inside an epoch, unless the loader has state: the device loader
  (`vrs.data.datamodule.TensorBatches`) has; `data.loader=torch` replays the epoch from its start;
- the torchmetrics states accumulated in the epoch so far: `ExactResume` stores them in a mid-epoch
  checkpoint (otherwise train/acc of the interrupted epoch would cover only the batches after the restart);
- the CSV log (`vrs.utils.lightning_io.CSVLogger`): `ExactResume` records its length in the checkpoint, and a run
  resumed into its own directory cuts off what the killed run logged after the checkpoint.
`ExactResume` also refuses to write a checkpoint with non-finite weights (`raise_if_nonfinite_weights`).

`LastCheckpoint` writes last.ckpt at every epoch end and, with `every_n_train_steps`, also within an epoch
(Lightning's ModelCheckpoint takes only one of the two triggers).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import Metric

from vrs.errors import check
from vrs.modules.guards import NonFiniteError
from vrs.utils.lightning_io import CSVLogger

TRAIN, VAL, TEST = 0, 1, 2  # phases: each gets its own random streams
_MASK = (1 << 62) - 1


def seed_all(seed: int, device: torch.device | None = None) -> None:
    """Seed torch's CPU generator and that of `device` (a GPU), numpy's global generator and python's
    `random`. Not torch.manual_seed: it also seeds every other device type (lazily where there is none,
    recording a stack trace each time), which costs ~0.3 ms a call."""
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()
                                      ].manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def _mid_epoch(trainer: pl.Trainer) -> bool:
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return 0 < done < trainer.num_training_batches


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


class ExactResume(pl.Callback):
    """Reseed every random generator per training batch; carry the epoch's metric states over a restart.

    The seeds mix the run's `seed`, the process rank (so data-parallel processes draw independent noise),
    the phase and the number of training batches done, through numpy's SeedSequence. Costs about
    0.05 ms per batch on the host (measured on a 2-core CPU); no device synchronisation.
    """

    def __init__(self, seed: int = 0):
        check(isinstance(seed, int) and not isinstance(seed, bool), "callbacks.exact_resume.seed", seed, "an integer")
        self.seed = seed
        self.batches = 0  # training batches done in this fit, restored from a checkpoint

    def _reseed(self, trainer: pl.Trainer, phase: int) -> None:
        parts = [self.seed & _MASK, trainer.global_rank, phase, self.batches]
        seed_all(int(np.random.SeedSequence(parts).generate_state(2, np.uint64)[0] & _MASK),
                 trainer.strategy.root_device)

    # Reseed before the batch is fetched and augmented (on_after_batch_transfer runs before
    # on_train_batch_start), so crop and flip draws are covered too: at the start (a run restarted
    # mid-epoch gets no on_train_epoch_start), at every epoch start (after validation) and after each batch.
    def on_train_start(self, trainer, pl_module) -> None:
        self._reseed(trainer, TRAIN)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reseed(trainer, TRAIN)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self._reseed(trainer, TRAIN)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._reseed(trainer, VAL)

    def on_test_start(self, trainer, pl_module) -> None:
        self._reseed(trainer, TEST)

    # ---- checkpoint ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        raise_if_nonfinite_weights(pl_module)
        if _mid_epoch(trainer):  # at an epoch end the states are complete and get reset: nothing to carry
            checkpoint["vrs_metric_states"] = {
                name: {k: _to(v, "cpu") for k, v in m.metric_state.items()}
                for name, m in pl_module.named_modules() if isinstance(m, Metric) and name}
        checkpoint["vrs_log_rows"] = [lg.rows_written() for lg in _csv_loggers(trainer)]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # only a resumed fit continues the checkpoint's epoch and log: trainer.test(ckpt_path=best) loads an earlier
        # checkpoint as well, and the log of the fit before it must keep every epoch
        if trainer.state.fn != TrainerFn.FITTING:
            return
        modules = dict(pl_module.named_modules())
        for name, states in (checkpoint.get("vrs_metric_states") or {}).items():
            metric = modules.get(name)
            if isinstance(metric, Metric):
                for key, value in states.items():
                    setattr(metric, key, _to(value, metric.device))
        # a run resumed into its own directory: drop what the killed run logged after this checkpoint
        for lg, rows in zip(_csv_loggers(trainer), checkpoint.get("vrs_log_rows") or []):
            lg.experiment.truncate_for_resume(int(rows), int(checkpoint.get("global_step", 0)))


def _csv_loggers(trainer: pl.Trainer) -> list:
    return [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]


def raise_if_nonfinite_weights(pl_module: pl.LightningModule) -> None:
    """NonFiniteError (a FloatingPointError) instead of writing a checkpoint with NaN / Inf weights, so last.ckpt
    stays the last good state. On a GPU the loss guard (vrs.modules.guards) reads its flag only every log_every_n_steps,
    and a non-finite gradient spoils the weights one step before the loss shows it."""
    if hasattr(pl_module, "_raise_if_nonfinite"):
        pl_module._raise_if_nonfinite()  # the loss guard's pending flag
    params = list(pl_module.named_parameters())
    if not params or bool(torch.stack([torch.isfinite(p).all() for _, p in params]).all()):  # one sync
        return
    bad = [name for name, p in params if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteError(f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at "
                                 f"step {pl_module.global_step}: checkpoint not written, the last one is kept "
                                 "(lower the learning rate, or check the data and noise settings)")


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt (the latest state, overwritten) at every epoch end and, when every_n_train_steps = N > 0,
    also every N optimizer steps within an epoch: a pre-empted run then loses at most N steps."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, filename: str = "last"):
        n = every_n_train_steps
        check(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0),
              "callbacks.last_checkpoint.every_n_train_steps", n, "null, 0 (epoch ends only) or a positive integer")
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, every_n_epochs=1,
                         enable_version_counter=False)
        self._every_n_train_steps = n or 0  # set after __init__: ModelCheckpoint refuses two triggers

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The epoch's last batch is saved at the epoch end, after validation: a checkpoint from before
        # that validation would make a resumed run skip it.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
