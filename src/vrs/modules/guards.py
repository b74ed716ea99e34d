"""Read the training loss back from the device every few steps, not every step: to stop on a non-finite
loss and to show the loss in the progress bar.

A value logged with `prog_bar=True` on every step is read back by Lightning after every step (`.item()`),
which makes the CPU wait for the GPU each step: a launch-bound network (CIFAR ResNets) then runs at the sum
of the CPU's and the GPU's time instead of the larger of the two."""

from __future__ import annotations

import torch

from vrs.errors import VRSError


class NonFiniteError(VRSError, FloatingPointError):
    """Training diverged (NaN / Inf): one clear line and exit code 2 from the apps, like other bad settings."""


class NonFiniteLossGuard:
    """Mixin for LightningModules: call `_check_finite(loss)` in training_step.

    The flag accumulates on the device and is read every `log_every_n_steps` steps (when Lightning reads
    metrics anyway) and at the end of each epoch; the error names what to change (`nonfinite_hint`). At the
    same moments the loss is copied to the host and shown in the progress bar as `loss` (a host tensor, so
    Lightning's per-step read-back costs no sync); `train/loss` goes to the loggers as usual.
    """

    _nonfinite: torch.Tensor | None = None
    _shown_loss: torch.Tensor | None = None
    nonfinite_what = "training loss"
    nonfinite_hint = "lower the learning rate, or check the data and noise settings"

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        trainer = self._trainer
        every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1) if trainer is not None else 1
        if loss.device.type == "cpu" or (self.global_step + 1) % every == 0 or self._shown_loss is None:
            self._raise_if_nonfinite()
            self._shown_loss = loss.detach().float().cpu()
        self.log("loss", self._shown_loss, prog_bar=True, logger=False)

    def _raise_if_nonfinite(self) -> None:
        if self._nonfinite is not None and bool(self._nonfinite):
            self._nonfinite = None
            raise NonFiniteError(f"non-finite {self.nonfinite_what} before step {self.global_step + 1} "
                                 f"({self.nonfinite_hint})")

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()
