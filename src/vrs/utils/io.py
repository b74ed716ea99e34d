"""Crash-safe files: every file the apps write goes through here, so that a process killed at any moment
leaves each file either as it was or complete, never half-written.

Two kinds of file:
- whole files (summary.json, meta files, plots, .npz arrays, checkpoints, hparams.yaml, reports): written
  to a temporary file in the same directory, fsync'd, then renamed over the target (`atomic_write`,
  `write_json_atomic`, `atomic_path` for writers that need a file name, `save_figure`;
  vrs.utils.lightning_io.AtomicCheckpointIO for Lightning's checkpoints). A rename within one directory is
  atomic on POSIX file systems: readers see the old or the new file. The temporary file is named
  `.<stem>.tmp-<pid><suffix>` and removed when the write fails.
- append-only tables (certify.tsv, attack.csv, metrics.csv): `RowWriter` writes the header, reads the rows
  back (`read_table`), cuts a torn last line (a power cut between write and fsync) and appends complete
  rows with one write() each, fsync'd before they count as done (`append_fsynced`).

Also here: `lock_dir`, an exclusive flock on a results directory. The Lightning classes built on
these (`AtomicCheckpointIO`, `CSVLogger`) are in vrs.utils.lightning_io.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from vrs.errors import VRSError


# ---- whole files -------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a rename in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    # same directory (so the rename stays on one file system), same suffix (matplotlib and numpy pick the
    # format from it), hidden, and unique per process
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without an error, the file written
    there is fsync'd and renamed to `path`. On an error the temporary file is removed and `path` keeps
    its old content (or stays absent)."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a file so that readers (and a crash) see either the old or the complete new content."""
    data = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """fig.savefig(path) atomically (the format follows the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)


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
    """JSON to path (parent directories created), atomically; numpy / torch values become lists."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


# ---- append-only tables --------------------------------------------------------------------------------
def append_fsynced(path: Path, text: str) -> None:
    """Append `text` (complete rows) to an existing file with one write(), fsync'd before returning: a kill
    leaves the rows whole or absent (at worst a torn last line, which `read_table` reports)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        if os.write(fd, data) != len(data):
            raise VRSError(f"could not write a whole row to {path} (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def format_value(value: Any) -> str:
    """A value as RowWriter writes it: bools as 0/1, floats with 6 significant digits, the rest as str()."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def format_line(values: Sequence[Any], delimiter: str = ",") -> str:
    """One table row as RowWriter writes it (floats with 6 significant digits, strings as they are)."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerow([format_value(v) for v in values])
    return buf.getvalue()


class DamagedRow(VRSError):
    """A table row that does not parse (wrong number of fields, a value out of range): names the file and line."""


def read_table(path: Path, columns: Sequence[str], delimiter: str = ",",
               check_row: Callable[[dict[str, str]], Any] | None = None) -> tuple[list[dict[str, str]], int]:
    """The rows of a table (values as written) and the byte length of its complete part (shorter than the
    file when a torn last line follows). VRSError, naming the file and line, for another header, a row with
    the wrong number of fields, or one that `check_row` refuses (it raises ValueError)."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        if data:
            raise VRSError(f"{path} has no complete header line; move it away to start afresh")
        return [], 0
    lines = list(csv.reader(io.StringIO(data[:cut].decode("utf-8", errors="replace")), delimiter=delimiter))
    if lines[0] != list(columns):
        raise VRSError(f"{path} exists with columns {lines[0]}, expected {list(columns)}: it was written by another "
                       "version, command or mode; use another output directory")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(columns):
            raise DamagedRow(f"{path}, line {number} is malformed ({len(line)} fields, expected {len(columns)}): "
                             "fix or delete that line")
        row = dict(zip(columns, line))
        if check_row is not None:
            try:
                check_row(row)
            except ValueError as err:
                raise DamagedRow(f"{path}, line {number} is malformed ({err}): fix or delete that line") from None
        rows.append(row)
    return rows, cut


class RowWriter:
    """An append-only table with a fixed header (certify.tsv, attack.csv, their shards): the one row writer.

    columns: the header; delimiter: "," (CSV) or "\\t" (TSV); key: the columns that identify a row
    (`key_of`; default: the first column), so a resumed run skips what earlier runs finished. Floats are
    written with 6 significant digits, so keys made from floats (eps) compare as written; strings are written
    as they are (a caller with its own number format passes strings). An existing file is read back
    (`read_table`; another header is refused and the file left as it is) and a torn last line cut off.
    Every `write` is one fsync'd append.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], delimiter: str = ",",
                 key: Sequence[str] | None = None, check_row: Callable[[dict[str, str]], Any] | None = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.delimiter = delimiter
        self.key = list(key) if key else self.columns[:1]
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"key columns {missing} are not among the columns {self.columns}")
        self._rows: list[dict[str, str]] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._rows, cut = read_table(self.path, self.columns, delimiter, check_row)
            if cut < self.path.stat().st_size:  # a torn last line from a crash: dropped, after the checks
                truncate(self.path, cut)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, format_line(self.columns, delimiter))

    # the file is opened per write: nothing to release, but `with RowWriter(...)` reads well at call sites
    def close(self) -> None:
        pass

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rows(self) -> list[dict[str, str]]:
        """Every row in the file (values as written), the earlier runs' and this one's."""
        return list(self._rows)

    def key_of(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """A row's key as it is (or would be) written."""
        return tuple(format_value(row[k]) for k in self.key)

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (mappings with every column) in one fsync'd write."""
        if not rows:
            return
        for row in rows:
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"row lacks columns {missing}")
        append_fsynced(self.path, "".join(format_line([row[c] for c in self.columns], self.delimiter) for row in rows))
        self._rows.extend({c: format_value(row[c]) for c in self.columns} for row in rows)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


# ---- results directories --------------------------------------------------------------------------------
def lock_dir(path: str | Path, what: str = "run", key: str = "the output directory") -> int:
    """Exclusive, non-blocking flock on directory `path` (created if missing; flock on the directory itself,
    so the lock creates no file); VRSError, naming the config `key`, when `path` is a file, cannot be
    created or another process (`what`) holds the lock. Returns the descriptor: the lock lasts until it is
    closed or the process ends."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VRSError(f"{key}={str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VRSError(f"cannot create the results directory {path}: {err.strerror or err}") from None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise VRSError(f"another {what} is writing to {path}; wait for it or use another {key}") from None
        raise
    return fd
