"""The results store of vrs-certify and vrs-attack: one directory, one append-only table, one settings sidecar.

A results directory (`certify.out_dir` / `attack.out_dir`) holds
- the table (certify.tsv, attack.csv): one row per finished item (an image; an image at one eps), appended
  and fsync'd as soon as it is done (vrs.utils.io.RowWriter), so a killed run loses at most the items in
  flight. A torn last line (a power cut between write and fsync) is cut off when the store is opened again.
- the settings sidecar (certify.meta.json, settings.json): what the rows mean. A run whose settings differ
  from the sidecar's (in the table's `match` keys) is refused before anything in the directory changes:
  results made with different settings are never mixed. Both apps name the shared settings alike
  (SHARED_KEYS: the checkpoint's hash is `checkpoint_sha256`); names that older versions wrote are read as
  their aliases (ALIASES), so older directories still resume.
- shard tables (certify.rank<r>.tsv, attack.rank<r>.csv): the rows of process r while a sharded run goes;
  folded into the table at the end of the run, or at the start of the next one if the run was killed.
- summary.json, plots: whole files, written atomically at the end.
The directory is locked (flock on the directory itself, so the lock creates no file) while a run writes.

Also here: the image subset of a run (`select_indices`, `describe_subset`), one rule for both apps.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from vrs.errors import ConfigError, VRSError
from vrs.utils.io import (RowWriter, append_fsynced, atomic_write, format_line, fsync_dir, lock_dir, read_table,
                          truncate, write_json_atomic)
from vrs.utils.output_folders import check_output_folder

# Settings both apps record under these names (the rest of a sidecar is the app's own).
SHARED_KEYS = ("checkpoint_sha256", "data", "split", "seed")
# Names that earlier versions wrote for a setting (vrs-certify's certify.meta.json before issue 16): read as the
# current name, so those directories still resume.
ALIASES = {"ckpt_sha256": "checkpoint_sha256", "ckpt_path": "checkpoint"}
SUMMARY_NAME = "summary.json"


def normalize_settings(settings: dict) -> dict:
    """`settings` with the names of ALIASES replaced by the current ones."""
    return {ALIASES.get(k, k): v for k, v in settings.items()}


def settings_diff(old: dict, new: dict, keys: Sequence[str], defaults: dict | None = None) -> list[str]:
    """'key: existing X, now Y' for every key that differs (one level into dicts); a key absent from `old`
    means defaults[key] (results written before the key existed)."""
    defaults = defaults or {}
    out = []
    for k in keys:
        a, b = old.get(k, defaults.get(k)), new.get(k, defaults.get(k))
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{s}: existing {a.get(s)!r}, now {b.get(s)!r}" for s in sorted(set(a) | set(b))
                    if a.get(s) != b.get(s)]
        elif a != b:
            out.append(f"{k}: existing {a!r}, now {b!r}")
    return out


@dataclass(frozen=True)
class Table:
    """What one app's results directory holds: its table, its sidecar and the rules for resuming."""

    app: str                          # "vrs-certify": named in the lock's error
    out_key: str                      # the config key of the directory ("certify.out_dir"), named in errors
    name: str                         # the table's file name
    sidecar: str                      # the settings file's name
    columns: tuple[str, ...]
    delimiter: str = ","
    key: tuple[str, ...] = ("idx",)   # the columns that identify a row
    match: tuple[str, ...] = SHARED_KEYS  # settings a resumed run must share
    defaults: dict = field(default_factory=dict)  # what a match key absent from an older sidecar meant
    format: int | None = None         # a version number written to (and required of) the sidecar
    check_row: Callable[[dict[str, str]], Any] | None = None  # raises ValueError for a malformed row
    sort_key: Callable[[dict[str, str]], Any] | None = None   # keep the whole table sorted by it

    @property
    def stem_suffix(self) -> tuple[str, str]:
        stem, _, suffix = self.name.rpartition(".")
        return stem, suffix

    def writer(self, path: Path) -> RowWriter:
        """The appender of this table at `path` (the table itself or a shard)."""
        return RowWriter(path, self.columns, self.delimiter, self.key, self.check_row)


class ResultsStore:
    """One results directory of `table`'s kind, for one set of settings."""

    def __init__(self, path: str | Path, table: Table, settings: dict):
        self.path = Path(path)
        self.table = table
        self.settings = normalize_settings(settings)
        if table.format is not None:
            self.settings["format"] = table.format
        self.table_path = self.path / table.name
        self.settings_path = self.path / table.sidecar
        self._lock_fd: int | None = None
        self._created: list[Path] = []  # the directories lock() created

    def shard_path(self, rank: int) -> Path:
        stem, suffix = self.table.stem_suffix
        return self.path / f"{stem}.rank{rank}.{suffix}"

    def shards(self) -> list[Path]:
        stem, suffix = self.table.stem_suffix
        return sorted(self.path.glob(f"{stem}.rank*.{suffix}"))

    # -- locking --
    def lock(self) -> None:
        """Exclusive lock on the directory (created if missing); VRSError if another run holds it."""
        missing = [p for p in (self.path.absolute(), *self.path.absolute().parents) if not p.exists()]
        self._lock_fd = lock_dir(self.path, self.table.app, self.table.out_key)
        self._created = missing  # deepest first

    def unlock(self) -> None:
        """Release the lock. The directories lock() created and nothing was written into (a store refused when
        it was opened) are removed: a refusal leaves no new empty folder behind (issue 23)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only an empty folder: never anything written into it
            except OSError:
                break
        self._created = []

    # -- opening --
    def read_settings(self) -> dict:
        try:
            return normalize_settings(json.loads(self.settings_path.read_text()))
        except ValueError as err:
            raise VRSError(f"{self.settings_path} is unreadable: {self.table.sidecar} is not valid JSON ({err}); "
                           f"use another {self.table.out_key}") from None
        except OSError as err:
            raise VRSError(f"{self.settings_path} is unreadable ({err}); use another {self.table.out_key}") from None

    def check_settings(self) -> None:
        """Refuse (VRSError) a directory that holds another app's results, rows made with other settings, or rows
        whose settings are unknown."""

        t = self.table
        check_output_folder(t.app.removeprefix("vrs-"), t.out_key, self.path)
        if self.settings_path.exists():
            old = self.read_settings()
            diffs = settings_diff(old, self.settings, t.match, t.defaults)
            if t.format is not None and old.get("format") != t.format:
                diffs.insert(0, f"format: existing {old.get('format')!r}, now {t.format}")
            if diffs:
                raise VRSError(f"{self.path} already holds results made with other settings ({'; '.join(diffs)}); "
                               f"refusing to mix them: use another {t.out_key}, or the same settings to resume it")
        elif self.table_path.exists() or self.shards():
            raise VRSError(f"{self.path} holds {t.name} rows but no {t.sidecar}, so their settings are unknown; "
                           f"use another {t.out_key}")

    def rows_view(self, rows: dict[tuple[str, ...], dict[str, str]]) -> Any:
        """The finished rows as open() returns them (here as written; subclasses type them)."""
        return rows

    def open(self, check: Callable[[Any], None] | None = None) -> Any:
        """Validate everything first (settings, every row of the table and its shards, then check(rows) of the
        caller); only then write the sidecar (when new) and fold leftover shard rows or a torn line into the
        table: a refused directory is left as it was. Returns the finished rows (rows_view of {key: row})."""
        self.check_settings()
        found = self._read_all()
        if check is not None:
            check(self.rows_view(found[0]))
        if not self.settings_path.exists():
            write_json_atomic(self.settings_path, self.settings)
        return self.rows_view(self._fold(found))

    def merge(self, order: Callable[[dict[str, str]], Any] | None = None) -> dict[tuple[str, ...], dict[str, str]]:
        """Fold the shard tables (this run's, or a killed run's) into the table, new rows in `order` (the
        table's sort_key, if it has one, orders the whole table), and delete the shards. Returns every row
        (rows_view)."""
        return self.rows_view(self._fold(self._read_all(), order))

    def _key(self, row: dict[str, str]) -> tuple[str, ...]:
        return tuple(row[k] for k in self.table.key)

    def _read_all(self) -> tuple[dict, int, int | None, list[Path]]:
        """(rows {key: row}, how many of them the table holds, the length of the table's complete part when a
        torn line follows it, the shards). VRSError for two different rows of one key."""
        t = self.table
        rows: dict[tuple[str, ...], dict[str, str]] = {}
        in_table, torn_at = 0, None
        shards = self.shards()
        for path in ([self.table_path] if self.table_path.exists() else []) + shards:
            part, cut = read_table(path, t.columns, t.delimiter, t.check_row)
            for row in part:
                key = self._key(row)
                if key in rows and rows[key] != row:
                    what = ", ".join(f"{c} {v}" for c, v in zip(t.key, key))
                    raise VRSError(f"{path} holds a row for {what} that differs from the one in {t.name} or a shard; "
                                   f"refusing to mix them: use another {t.out_key}")
                rows.setdefault(key, row)
            if path == self.table_path:
                in_table = len(rows)
                torn_at = cut if cut < path.stat().st_size else None
        return rows, in_table, torn_at, shards

    def _fold(self, found: tuple, order: Callable | None = None) -> dict[tuple[str, ...], dict[str, str]]:
        rows, in_table, torn_at, shards = found
        t = self.table
        listed = list(rows.values())
        if t.sort_key is not None:  # the whole table in order, rewritten atomically when it is not
            ordered = sorted(listed, key=t.sort_key)
            if shards or torn_at is not None or ordered != listed:
                atomic_write(self.table_path, format_line(t.columns, t.delimiter)
                             + "".join(format_line([r[c] for c in t.columns], t.delimiter) for r in ordered))
            rows = {self._key(r): r for r in ordered}
        else:  # earlier rows stay as they are; the shards' rows are appended
            if torn_at is not None:
                truncate(self.table_path, torn_at)
            new = listed[in_table:]
            if order is not None:
                new.sort(key=order)
            if new:
                if not self.table_path.exists():
                    atomic_write(self.table_path, format_line(t.columns, t.delimiter))
                append_fsynced(self.table_path, "".join(format_line([r[c] for c in t.columns], t.delimiter)
                                                        for r in new))
        for shard in shards:  # their rows are in the table now; a crash before this point only duplicates them
            shard.unlink(missing_ok=True)
        if shards:
            fsync_dir(self.path)
        return rows

    def write_summary(self, summary: dict) -> Path:
        path = self.path / SUMMARY_NAME
        write_json_atomic(path, summary)
        return path


# ---- the image subset ------------------------------------------------------------------------------------
def select_indices(num_images: int, split: str, prefix: str, skip: int = 1, max_images: int | None = None,
                   indices: Sequence[int] | int | None = None) -> list[int]:
    """The images of a run: <prefix>.indices when given, else every skip-th image from 0, at most max_images
    of them. ConfigError naming <prefix>.indices for an index beyond the split."""
    if indices is not None:
        indices = [indices] if isinstance(indices, int) else [int(i) for i in indices]
        bad = [i for i in indices if i >= num_images]
        if bad:
            raise ConfigError(f"{prefix}.indices", bad[:5], f"indices below the {split} split's size ({num_images})")
        return indices
    chosen = list(range(0, num_images, skip))
    return chosen[:max_images] if max_images is not None else chosen


def store_subset(stored: Sequence[int], chosen: list[int], split: str, num_images: int, table: str, skip: int = 1,
                 max_images: int | None = None, indices: Sequence[int] | None = None) -> dict:
    """summary.json's `subset` when the summary covers every image in the store (`stored`): this run's subset
    (describe_subset) when they are the same images, else the stored images as a list, with this run's rule
    under `this_run` (a resume that asked for fewer or other images than the table holds)."""
    this_run = describe_subset(chosen, split, num_images, skip, max_images, indices)
    stored = sorted(set(stored))
    if stored == sorted(set(chosen)):
        return this_run
    whole = describe_subset(stored, split, num_images, indices=stored)
    whole["rule"] = f"every image in {table} ({len(stored)}); this run asked for {this_run['rule']} ({len(chosen)})"
    whole["this_run"] = this_run
    return whole


def describe_subset(chosen: list[int], split: str, num_images: int, skip: int = 1, max_images: int | None = None,
                    indices: Sequence[int] | None = None) -> dict:
    """summary.json's `subset`: the rule, its size, its ends and a digest of the indices."""
    if indices is not None:
        rule = f"explicit list of {len(chosen)} indices"
    else:
        rule = f"every {skip}th image from index 0" if skip > 1 else "every image"
        rule += f", the first {max_images} of them" if max_images else ""
    digest = hashlib.sha256(",".join(map(str, chosen)).encode()).hexdigest()[:16]
    return {"split": split, "split_size": num_images, "rule": rule, "skip": skip, "max": max_images,
            "indices": indices, "count": len(chosen), "first": chosen[0] if chosen else None,
            "last": chosen[-1] if chosen else None, "indices_sha256_16": digest}
