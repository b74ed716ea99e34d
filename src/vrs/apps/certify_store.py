"""The results directory of vrs-certify: a crash-safe TSV of per-image rows, its meta sidecar, and atomic
writes for everything else.

Files in the results directory (`certify.out_dir`):
- certify.tsv: Cohen's columns `idx label predict radius correct time` plus `sigma` (PREDICT: without
  radius). One row per image, appended with one write() and fsync'd as soon as the image is finished, so
  a killed run loses at most the images in flight and never leaves half a row behind (a torn last line
  from a power cut is cut off on the next run). `radius` is rounded down to 6 decimals (never up); `time`
  is the wall time per image in seconds (a float, not Cohen's H:MM:SS string); predict = -1 on abstain.
- certify.meta.json: what the rows mean (mode, n0, n, alpha, sigma, seed, checkpoint hash, data, split,
  precision, ...). A run whose settings differ from an existing meta file is refused before anything in
  the directory changes: results made with different settings are never mixed.
- certify.rank<r>.tsv: rows of process r while a sharded run is going; merged into certify.tsv (sorted
  by idx) at the end of the run, or at the start of the next one if the run was killed.
The directory is locked (flock on the directory itself, so the lock creates no file) while a run writes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from pathlib import Path

from vrs.errors import VRSError
from vrs.utils.io import RowAppender, atomic_write, atomic_write_json, fsync_dir  # noqa: F401 - used by the apps

TSV_NAME = "certify.tsv"
META_NAME = "certify.meta.json"
SHARD_GLOB = "certify.rank*.tsv"
RESULTS_FORMAT = 1
COLUMNS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time", "sigma"),
    "predict": ("idx", "label", "predict", "correct", "time", "sigma"),
    # VRS certification (vrs.apps.certify_vrs): sigma chosen per image, the selector's interval, Cohen's
    # radius at that sigma, and the certificate used (c1 / c2 / abstain / sigma_undetermined)
    "vrs": ("idx", "label", "predict", "radius", "correct", "time", "sigma", "sigma_lo", "sigma_hi",
            "radius_cohen", "cert"),
}
# Keys of the meta file that must agree before new rows may be added to existing ones (the VRS keys are
# absent, so equal, in Cohen's meta files).
MATCH_KEYS = ("mode", "n0", "n", "alpha", "sigma", "seed", "ckpt_sha256", "data", "split", "precision",
              "noise_block", "device_type", "certificate", "lam", "n_h0", "n_h", "alpha_h", "sigma_h", "grid",
              "fused_stages")
# What a key absent from an older meta file meant (results written before the key existed).
MATCH_DEFAULTS = {"fused_stages": 0}


# ---- rows --------------------------------------------------------------------------------------------
def floor6(x: float) -> float:
    """x rounded DOWN to 6 decimals: a radius written to the TSV never exceeds the certified one."""
    return math.floor(x * 1e6) / 1e6


def format_row(mode: str, row: dict) -> str:
    if mode == "certify":
        return (f"{row['idx']}\t{row['label']}\t{row['predict']}\t{floor6(row['radius']):.6f}\t{row['correct']}\t"
                f"{row['time']:.4f}\t{row['sigma']:.6g}\n")
    if mode == "vrs":
        return (f"{row['idx']}\t{row['label']}\t{row['predict']}\t{floor6(row['radius']):.6f}\t{row['correct']}\t"
                f"{row['time']:.4f}\t{row['sigma']:.6g}\t{row['sigma_lo']:.6g}\t{row['sigma_hi']:.6g}\t"
                f"{floor6(row['radius_cohen']):.6f}\t{row['cert']}\n")
    return f"{row['idx']}\t{row['label']}\t{row['predict']}\t{row['correct']}\t{row['time']:.4f}\t{row['sigma']:.6g}\n"


_TYPES = {"idx": int, "label": int, "predict": int, "radius": float, "correct": int, "time": float, "sigma": float,
          "sigma_lo": float, "sigma_hi": float, "radius_cohen": float, "cert": str}


def parse_row(line: str, columns: tuple[str, ...]) -> dict:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != len(columns):
        raise ValueError(f"{len(fields)} fields, expected {len(columns)}")
    return {c: _TYPES[c](f) for c, f in zip(columns, fields)}


def read_rows(path: Path, columns: tuple[str, ...]) -> tuple[dict[int, str], int, bool]:
    """Rows of a results TSV as {idx: line}; also the byte length of its complete part and whether a torn
    (unterminated) last line follows it. VRSError for a wrong header, a malformed or duplicate row."""
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    torn = end < len(raw)
    text = raw[:end].decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    header = "\t".join(columns) + "\n"
    if not lines:
        return {}, 0, torn
    if lines[0] != header:
        raise VRSError(f"{path} does not start with the header {header.strip()!r}: not a results file of this "
                       "mode; use another certify.out_dir")
    rows: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            idx = parse_row(line, columns)["idx"]
        except ValueError as err:
            raise VRSError(f"{path}, line {number} is malformed ({err}): fix or delete that line") from None
        if idx in rows and rows[idx] != line:
            raise VRSError(f"{path} holds two different rows for idx {idx}")
        rows[idx] = line
    return rows, end, torn


# ---- the directory -------------------------------------------------------------------------------------
class ResultsDir:
    """A results directory for one mode and one set of settings (`meta`)."""

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        self.meta = dict(meta, format=RESULTS_FORMAT)
        self.mode = meta["mode"]
        self.columns = COLUMNS[self.mode]
        self.tsv = self.path / TSV_NAME
        self.meta_path = self.path / META_NAME
        self._lock_fd: int | None = None

    def shard_path(self, rank: int) -> Path:
        return self.path / f"certify.rank{rank}.tsv"

    # -- locking --
    def lock(self) -> None:
        """Exclusive lock on the directory (VRSError if another vrs-certify holds it); released on exit."""
        if self.path.exists() and not self.path.is_dir():
            raise VRSError(f"certify.out_dir={str(self.path)!r} is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VRSError(f"cannot create the results directory {self.path}: {err.strerror or err}") from None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise VRSError(f"another vrs-certify is writing to {self.path}; wait for it or use another "
                               "certify.out_dir") from None
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- opening --
    def check_meta(self) -> None:
        """Refuse (VRSError) an existing directory whose rows were made with other settings."""
        if self.meta_path.exists():
            try:
                old = json.loads(self.meta_path.read_text())
            except (OSError, ValueError) as err:
                raise VRSError(f"{self.meta_path} is unreadable ({err}); use another certify.out_dir") from None
            before, now = ({k: m.get(k, MATCH_DEFAULTS.get(k)) for k in MATCH_KEYS} for m in (old, self.meta))
            diffs = [f"{k}: existing {before[k]!r}, now {now[k]!r}" for k in MATCH_KEYS if before[k] != now[k]]
            if old.get("format") != RESULTS_FORMAT:
                diffs.insert(0, f"format: existing {old.get('format')!r}, now {RESULTS_FORMAT}")
            if diffs:
                raise VRSError(f"{self.path} already holds results made with other settings ({'; '.join(diffs)}); "
                               "refusing to mix them: use another certify.out_dir or the same settings")
        elif self.tsv.exists() or list(self.path.glob(SHARD_GLOB)):
            raise VRSError(f"{self.path} holds {TSV_NAME} rows but no {META_NAME}, so their settings are unknown; "
                           "use another certify.out_dir")

    def open(self) -> dict[int, dict]:
        """Validate, then (only then) write the meta file and fold leftover shard rows or a torn line into
        certify.tsv. Returns the finished rows {idx: row}."""
        self.check_meta()
        rows, torn, shards = self._read_all()
        if not self.meta_path.exists():
            atomic_write_json(self.meta_path, self.meta)
        if shards or torn:
            self._write_merged(rows, shards)
        return {idx: parse_row(line, self.columns) for idx, line in rows.items()}

    def _read_all(self) -> tuple[dict[int, str], bool, list[Path]]:
        rows: dict[int, str] = {}
        torn = False
        shards = sorted(self.path.glob(SHARD_GLOB))
        for path in ([self.tsv] if self.tsv.exists() else []) + shards:
            part, _, part_torn = read_rows(path, self.columns)
            torn |= part_torn
            for idx, line in part.items():
                if idx in rows and rows[idx] != line:
                    raise VRSError(f"{path} and another results file hold different rows for idx {idx}")
                rows[idx] = line
        return rows, torn, shards

    def _write_merged(self, rows: dict[int, str], shards: list[Path]) -> None:
        text = "\t".join(self.columns) + "\n" + "".join(rows[i] for i in sorted(rows))
        atomic_write(self.tsv, text)
        for shard in shards:  # their rows are in certify.tsv now; a crash before this point only duplicates
            shard.unlink(missing_ok=True)
        if shards:
            fsync_dir(self.path)

    def merge(self) -> dict[int, dict]:
        """Fold the shard files into certify.tsv, sorted by idx (and sort certify.tsv if it is not)."""
        rows, torn, shards = self._read_all()
        if shards or torn or list(rows) != sorted(rows):
            self._write_merged(rows, shards)
        return {idx: parse_row(line, self.columns) for idx, line in rows.items()}
