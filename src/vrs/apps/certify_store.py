"""vrs-certify's results table: Cohen's TSV (certify.tsv) and its sidecar (certify.meta.json), kept in the
results store of vrs.apps.results (locking, settings match on resume, shards, torn lines).

- certify.tsv: Cohen's columns `idx label predict radius correct time` plus `sigma` (PREDICT: without
  radius; VRS: more columns, see COLUMNS). One row per image, sorted by idx once the run ends. `radius` is
  rounded down to 6 decimals (never up); `time` is the wall time per image in seconds (a float, not Cohen's
  H:MM:SS string); predict = -1 on abstain.
- certify.meta.json: what the rows mean (mode, n0, n, alpha, sigma, seed, checkpoint hash, data, split,
  precision, ...); a run with other MATCH_KEYS is refused. Written before issue 16, it named the checkpoint
  hash `ckpt_sha256` (now `checkpoint_sha256`, as vrs-attack's settings.json): read as an alias.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from vrs.utils.output_folders import APP_FILES
from vrs.apps.results import SHARED_KEYS, ResultsStore, Table
from vrs.utils.io import RowWriter

TSV_NAME, META_NAME = APP_FILES["vrs-certify"]  # certify.tsv, certify.meta.json
RESULTS_FORMAT = 1
COLUMNS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time", "sigma"),
    "predict": ("idx", "label", "predict", "correct", "time", "sigma"),
    # VRS certification (vrs.apps.certify_vrs): sigma chosen per image, the selector's interval, Cohen's
    # radius at that sigma, and the certificate used (c1 / c2 / abstain / sigma_undetermined)
    "vrs": ("idx", "label", "predict", "radius", "correct", "time", "sigma", "sigma_lo", "sigma_hi",
            "radius_cohen", "cert"),
    # Dual RS (certify=dual_rs, vrs.selection.vote): sigma from the vote-smoothed estimator, its radius R_sigma and
    # its bound, Cohen's radius R_c at that sigma; radius = min(R_sigma, R_c)
    "dual_rs": ("idx", "label", "predict", "radius", "correct", "time", "sigma", "radius_sigma", "p_sigma_lower",
                "radius_cohen", "cert"),
    # a test-time sigma search (sigma_search=multiscale | dds, vrs.selection.sigma_search): the sigma it chose,
    # the unsound radius of the published certificate where there is one (NaN: none), the certificate used
    "search": ("idx", "label", "predict", "radius", "correct", "time", "sigma", "radius_unsound", "cert"),
}
# certify.sampling=sequential / radius_target (vrs.smoothing.sequential): a table's columns plus the samples drawn
# for the image (n0 + estimation samples), and for radius_target its decision per target radius, e.g.
# "0.25=yes;0.5=no;1=budget". Named "<table>/<sampling>" (certify.meta.json's mode).
SAMPLING_COLUMNS = {"sequential": ("samples",), "radius_target": ("samples", "decisions")}
COLUMNS.update({f"{table}/{sampling}": COLUMNS[table] + extra for table in ("certify", "vrs", "dual_rs")
                for sampling, extra in SAMPLING_COLUMNS.items()})


def table_name(table: str, sampling: str) -> str:
    """The results table of `table` rows certified with certify.sampling = `sampling`."""
    return table if sampling == "fixed" else f"{table}/{sampling}"

# Keys of the meta file that must agree before new rows may be added to existing ones (the VRS keys are
# absent, so equal, in Cohen's meta files).
MATCH_KEYS = SHARED_KEYS + ("mode", "n0", "n", "alpha", "sigma", "precision", "noise_block", "device_type",
                           "certificate", "lam", "n_h0", "n_h", "alpha_h", "sigma_h", "grid", "fused_stages",
                           "sigma_search", "sampling", "radii", "looks", "radius_tol", "sound")
# What a key absent from an older meta file meant (results written before the key existed).
MATCH_DEFAULTS = {"fused_stages": 0, "sampling": "fixed", "sound": False}


# ---- rows --------------------------------------------------------------------------------------------
def floor6(x: float) -> float:
    """x rounded DOWN to 6 decimals: a radius written to the TSV never exceeds the certified one."""
    return math.floor(x * 1e6) / 1e6


def row_fields(mode: str, row: dict) -> dict[str, str]:
    """A row's values as certify.tsv writes them (radius rounded down, time to 0.1 ms, sigma to 6 digits)."""
    out = {c: str(row[c]) for c in COLUMNS[mode]}
    out["time"], out["sigma"] = f"{row['time']:.4f}", f"{row['sigma']:.6g}"
    for c in ("radius", "radius_cohen", "radius_sigma", "radius_unsound"):
        if c in out:
            out[c] = "nan" if math.isnan(row[c]) else f"{floor6(row[c]):.6f}"
    if "p_sigma_lower" in out:
        out["p_sigma_lower"] = f"{math.floor(row['p_sigma_lower'] * 1e6) / 1e6:.6f}"  # a lower bound: never up
    for c in ("sigma_lo", "sigma_hi"):
        if c in out:
            out[c] = f"{row[c]:.6g}"
    if "decisions" in out:
        out["decisions"] = ";".join(f"{r:g}={d}" for r, d in row["decisions"])
    return out


def format_row(mode: str, row: dict) -> str:
    """One line of certify.tsv."""
    return "\t".join(row_fields(mode, row).values()) + "\n"


def row_writer(path: Path, mode: str) -> RowWriter:
    """The appender of certify.tsv (or of a shard) in `mode`: write([row_fields(mode, row)])."""
    return table(mode).writer(path)


_TYPES = {"idx": int, "label": int, "predict": int, "radius": float, "correct": int, "time": float, "sigma": float,
          "sigma_lo": float, "sigma_hi": float, "radius_cohen": float, "cert": str,
          "radius_sigma": float, "p_sigma_lower": float, "radius_unsound": float, "samples": int, "decisions": str}
DECISIONS = re.compile(r"^([0-9.eE+-]+=(yes|no|budget))(;[0-9.eE+-]+=(yes|no|budget))*$")


def _finite_at_least(low: float, strict: bool = False, nan_ok: bool = False):
    def ok(v: float) -> bool:
        return (nan_ok and math.isnan(v)) or (math.isfinite(v) and (v > low if strict else v >= low))
    return ok


# The `cert` column: the certificate that gave the radius (vrs.selection.certificates.ARGUMENTS), or why none did.
CERT_VALUES = ("c1", "c2", "dual_rs", "multiscale", "empirical", "abstain", "sigma_undetermined")

# What a value must be besides parsing: a row that breaks one is damaged (a radius of NaN, Inf or < 0 would be
# counted as certified; a NaN sigma is allowed, an older VRS row's "no sigma").
_VALID = {"idx": (lambda v: v >= 0, "an integer >= 0"), "label": (lambda v: v >= 0, "an integer >= 0"),
          "predict": (lambda v: v >= -1, "a class >= 0 or -1 (abstain)"), "correct": (lambda v: v in (0, 1), "0 or 1"),
          "radius": (_finite_at_least(0.0), "a finite number >= 0"),
          "radius_cohen": (_finite_at_least(0.0), "a finite number >= 0"),
          "time": (_finite_at_least(0.0), "a finite number >= 0"),
          "sigma": (_finite_at_least(0.0, strict=True, nan_ok=True), "a finite number > 0"),
          "sigma_lo": (_finite_at_least(0.0, strict=True, nan_ok=True), "a finite number > 0"),
          "sigma_hi": (_finite_at_least(0.0, strict=True, nan_ok=True), "a finite number > 0"),
          "radius_sigma": (_finite_at_least(0.0), "a finite number >= 0"),
          "p_sigma_lower": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
          "radius_unsound": (_finite_at_least(0.0, nan_ok=True), "a finite number >= 0, or nan"),
          "cert": (lambda v: v in CERT_VALUES, "one of " + ", ".join(CERT_VALUES)),
          "samples": (lambda v: v >= 1, "an integer >= 1"),
          "decisions": (lambda v: bool(DECISIONS.match(v)), "<radius>=yes|no|budget items joined by ';'")}


def typed_row(row: dict[str, str]) -> dict:
    """A row as written (strings) with its values typed; ValueError, naming the column, when one does not parse
    or is out of range (e.g. a radius that is NaN, Inf or negative)."""
    out = {}
    for c, v in row.items():
        try:
            out[c] = _TYPES[c](v)
        except ValueError:
            raise ValueError(f"{c}={v!r} is not {'an integer' if _TYPES[c] is int else 'a number'}") from None
        ok, allowed = _VALID.get(c, (None, ""))
        if ok is not None and not ok(out[c]):
            raise ValueError(f"{c}={v!r} is not allowed: {allowed}")
    return out


def table(mode: str) -> Table:
    """The results table of one mode (certify, predict, vrs)."""
    return Table(app="vrs-certify", out_key="certify.out_dir", name=TSV_NAME, sidecar=META_NAME,
                 columns=COLUMNS[mode], delimiter="\t", key=("idx",), match=MATCH_KEYS, defaults=MATCH_DEFAULTS,
                 format=RESULTS_FORMAT, check_row=typed_row, sort_key=lambda row: int(row["idx"]))


class ResultsDir(ResultsStore):
    """vrs-certify's results directory for one mode and one set of settings (`meta`)."""

    def __init__(self, path: str | Path, meta: dict):
        super().__init__(path, table(meta["mode"]), meta)
        self.tsv = self.table_path

    check_meta = ResultsStore.check_settings  # the name tests and callers know

    def rows_view(self, rows: dict) -> dict[int, dict]:
        """The finished rows {idx: typed row} (open: after validating, then repairing; merge: every row)."""
        return {int(k[0]): typed_row(r) for k, r in rows.items()}
