"""Stop training on a non-finite loss without a GPU->CPU sync every step."""

from __future__ import annotations

import torch


class NonFiniteLossGuard:
    """Mixin for LightningModules: call `_check_finite(loss)` in training_step.

    The flag accumulates on the device and is read every `log_every_n_steps` steps (when Lightning reads
    metrics anyway) and at the end of each epoch; the error names what to change (`nonfinite_hint`).
    """

    _nonfinite: torch.Tensor | None = None
    nonfinite_what = "training loss"
    nonfinite_hint = "lower the learning rate, or check the data and noise settings"

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        trainer = self._trainer
        every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1) if trainer is not None else 1
        if loss.device.type == "cpu" or (self.global_step + 1) % every == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        if self._nonfinite is not None and bool(self._nonfinite):
            self._nonfinite = None
            raise FloatingPointError(f"non-finite {self.nonfinite_what} before step {self.global_step + 1} "
                                     f"({self.nonfinite_hint})")

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()
