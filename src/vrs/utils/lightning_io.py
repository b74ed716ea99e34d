"""Lightning's checkpoint writer and CSV logger, made crash-safe with vrs.utils.io (its own module, so that
importing vrs.utils.io does not import Lightning: vrs-certify never needs it).

- `AtomicCheckpointIO` (conf/trainer: plugins): every checkpoint written next to its target, fsync'd, renamed.
- `CSVLogger` (conf/logger/csv.yaml): metrics.csv appended and fsync'd row by row, kept (its torn last line
  cut) when a run resumes into its directory.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.plugins.io import TorchCheckpointIO

from vrs.utils.io import append_fsynced, atomic_path, atomic_write, truncate


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every file system.

    Lightning 2.6 writes through an fsspec transaction whose temporary file lives in the system temp
    directory: when that is another file system than the run directory (a local /tmp and outputs on
    NFS or Lustre, the usual cluster set-up), the final move is a copy onto the checkpoint itself, so
    a kill during it leaves a truncated last.ckpt; nothing is fsync'd either. Here the checkpoint is
    written next to its target, fsync'd and renamed (`atomic_path`). Local paths only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class MetricsWriter(ExperimentWriter):
    """metrics.csv and hparams.yaml of `CSVLogger`.

    Rows are appended and fsync'd as they are logged (one write per row); when a new column appears
    the whole file is rewritten atomically with the new header (Lightning's writer rewrites it in
    place, and buffers 100 steps). An existing metrics.csv is read back, its torn last line cut off,
    instead of being deleted: a run resumed into its own directory keeps its history.
    """

    def __init__(self, log_dir: str) -> None:  # no super().__init__(): it deletes an existing metrics.csv
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []  # logged, not written yet
        self.rows: list[dict[str, str]] = []     # written
        self.metrics_keys: list[str] = []
        os.makedirs(log_dir, exist_ok=True)
        path = Path(self.metrics_file_path)
        if path.is_file():
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):  # a torn last line from a crash
                truncate(path, cut)
            reader = csv.DictReader(io.StringIO(data[:cut].decode("utf-8")))
            self.metrics_keys = list(reader.fieldnames or [])
            self.rows = list(reader)

    def save(self) -> None:
        if not self.metrics:
            return
        new = [{k: "" if v is None else str(v) for k, v in row.items()} for row in self.metrics]
        self.metrics = []
        keys = sorted(set(self.metrics_keys).union(*new))
        self.rows.extend(new)
        if keys != self.metrics_keys or not os.path.isfile(self.metrics_file_path):
            self.metrics_keys = keys
            self._rewrite()
        else:
            append_fsynced(Path(self.metrics_file_path), self._lines(new))

    def truncate_for_resume(self, n_rows: int, global_step: int) -> None:
        """Forget what a killed run logged after its checkpoint (the resumed run logs it again): keep the
        first n_rows rows (those written when the checkpoint was saved) and, after them, the rows of
        steps before the checkpoint's global_step (Lightning logs a batch's metrics after the
        checkpoint of that batch is saved)."""
        def step(row) -> float:
            try:
                return float(row.get("step") or "inf")
            except ValueError:
                return float("inf")

        keep = self.rows[:n_rows] + [r for r in self.rows[n_rows:] if step(r) < global_step]
        if len(keep) < len(self.rows):
            self.rows = keep
            self._rewrite()

    def _lines(self, rows: list[dict[str, str]], header: bool = False) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.metrics_keys, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def _rewrite(self) -> None:
        atomic_write(self.metrics_file_path, self._lines(self.rows, header=True))

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger (same arguments) with a crash-safe metrics.csv, written row by row
    (`MetricsWriter`). `vrs.callbacks.resume.ExactResume` records the log's length in every
    checkpoint and cuts the log back to it on resume, so the log of a killed and resumed run equals
    the log of an uninterrupted one."""

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            self._experiment = MetricsWriter(log_dir=self.log_dir)
        return self._experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.save()  # per row: a kill loses nothing that was logged

    def rows_written(self) -> int:
        """Rows in metrics.csv (0 on processes other than rank 0, which write no log)."""
        self.save()
        rows = getattr(self.experiment, "rows", None)
        return len(rows) if isinstance(rows, list) else 0
