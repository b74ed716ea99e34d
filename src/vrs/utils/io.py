"""Crash-safe, resumable row files keyed by several columns (vrs-attack's attack.csv: one row per
(image, eps)), built on the primitives of the certification results store (`vrs.apps.certify_store`:
atomic writes, fsync'd appends). certify.tsv itself stays with that store: its rows are keyed by idx
alone and typed column by column.

- `RowWriter`: a delimited text file (CSV or TSV) with a header. New files get their header by an
  atomic write; rows are appended with one write() per batch and fsynced before they count as done, so
  a crash loses at most the rows in flight; a torn last line (no newline) is cut off when the file is
  opened again. `done_keys()` says what earlier runs finished, so a resumed run skips it. A file with
  another header is refused (VRSError) and left as it is.
- `lock_dir`: an exclusive flock on a results directory (no lock file), released when the process ends.
- `write_json_atomic` / `read_json`: JSON that readers see whole or not at all.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from vrs.apps.certify_store import RowAppender, atomic_write, atomic_write_json
from vrs.errors import VRSError


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class RowWriter:
    """Append-only rows with a fixed header in `path`.

    columns: the header; delimiter: "," (CSV) or "\\t" (TSV); key: the columns that identify a row for
    `done_keys` (default: the first column). Floats are written with 6 significant digits, so keys made
    from floats (eps) compare as written.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], delimiter: str = ",",
                 key: Sequence[str] | None = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.delimiter = delimiter
        self.key = list(key) if key else self.columns[:1]
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"key columns {missing} are not among the columns {self.columns}")
        self._rows: list[dict[str, str]] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._rows = self._read_existing()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, self._line(self.columns))
        self._appender = RowAppender(self.path, tuple(self.columns))  # the file exists: no header written

    def close(self) -> None:
        self._appender.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------
    def _read_existing(self) -> list[dict[str, str]]:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            raise VRSError(f"{self.path} has no complete header line; move it away to start afresh")
        reader = csv.reader(io.StringIO(data[:cut].decode("utf-8")), delimiter=self.delimiter)
        lines = list(reader)
        if lines[0] != self.columns:
            raise VRSError(f"{self.path} exists with columns {lines[0]}, expected {self.columns}: it was written "
                           "by another version or command; use another output directory")
        rows = []
        for i, line in enumerate(lines[1:], start=2):
            if len(line) != len(self.columns):
                raise VRSError(f"{self.path} line {i} has {len(line)} fields, expected {len(self.columns)}: "
                               "fix or delete that line")
            rows.append(dict(zip(self.columns, line)))
        if cut < len(data):  # a torn last line from a crash: drop it (only after the checks above)
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
        return rows

    @property
    def rows(self) -> list[dict[str, str]]:
        """Every row in the file (values as written), the earlier runs' and this one's."""
        return list(self._rows)

    def done_keys(self) -> set[tuple[str, ...]]:
        return {tuple(r[k] for k in self.key) for r in self._rows}

    def key_of(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """A row's key as it is (or would be) written."""
        return tuple(_format(row[k]) for k in self.key)

    # ---- writing -------------------------------------------------------------------------------
    def _line(self, values) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.delimiter, lineterminator="\n").writerow([_format(v) for v in values])
        return buf.getvalue()

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (mappings with every column) in one write, then fsync."""
        if not rows:
            return
        for row in rows:
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"row lacks columns {missing}")
        self._appender.append("".join(self._line(row[c] for c in self.columns) for row in rows))
        self._rows.extend({c: _format(row[c]) for c in self.columns} for row in rows)


def lock_dir(path: str | Path, what: str = "run") -> int:
    """Exclusive, non-blocking flock on directory `path` (created if missing); VRSError when another
    process holds it. Returns the descriptor: the lock lasts until it is closed or the process ends."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise VRSError(f"another {what} is writing to {path}; wait for it or use another directory") from None
        raise
    return fd


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON to path, atomically (the certification store's atomic write)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), _json_safe(obj))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
