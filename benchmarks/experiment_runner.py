"""The step runner that the experiment scripts (vrs_frontier.py, input_dependent.py, training_methods.py) share.

An experiment is a list of `Step`s, each writing into its own folder under --out. `run_steps` runs them in order
and keeps the experiment resumable and accountable:
  * a step whose folder holds `.done` is skipped (a script may skip more, or rerun a finished step, via `skip`);
  * with a time budget, no step starts (after the first of a call) whose estimate does not fit what is left, and the
    running step gets what is left (`execute` cuts it off; the apps resume row by row in the same folder);
  * <out>/experiment.json records every invocation (argv, machine, what ran and was skipped, its status) and every
    step's command and attempts with their wall times, written atomically after each step.
Exit codes: 0 complete, 3 stopped by the time budget (rerun the same command to continue), 1 a step failed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

DONE = ".done"
SEED = 0  # every app: data split (train / val), noise, attacks
QUIET = ["print_config=false"]
TRAIN_QUIET = QUIET + ["~callbacks.progress_bar"]


@dataclass
class Step:
    name: str                 # e.g. "train/base", "test/atk_paper_eot"
    group: str                # what a script's --steps selects (train, fixed, vrs, ...), or ""
    app: str | None           # vrs app (train, certify, attack, report), or None for an in-process step
    args: list[str]           # the app's Hydra overrides
    folder: Path
    estimate_s: float
    kind: str = "app"         # app, or a script's in-process kind (choose, summary)
    attack: str | None = None     # vrs_frontier's VRS attack steps: eot | down | median
    objective: str | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"vrs.apps.{self.app}", *self.args]

    def shown(self) -> str:
        """The step's command as a user would type it (in-process steps: what they run)."""
        return shlex.join(self.command()) if self.app else f"(in-process: {self.kind})"


def fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def eps_list(values) -> str:
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def clean_json(o):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: clean_json(v) for k, v in o.items()}
    if isinstance(o, list):
        return [clean_json(v) for v in o]
    return o


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, {os.cpu_count()} CPU cores)"
        return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"
    except Exception:  # noqa: BLE001 - a description only
        return f"{platform.machine()}, {os.cpu_count()} cores"


def load_record(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"steps": {}, "invocations": []}


def save_record(path: Path, record: dict) -> None:
    from vrs.utils.io import write_json_atomic  # the apps' atomic writer (fsync'd); vrs is importable here

    write_json_atomic(path, clean_json(record))


def run_app(step: Step, timeout: float | None, log: Path) -> tuple[int, bool]:
    """Run the step's app with its output in log; (exit code, timed out). On timeout: SIGINT, then SIGTERM, then
    SIGKILL to the app's process group (the apps fsync their rows, so a cut-off run resumes)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n# {datetime.now(timezone.utc).isoformat()} {shlex.join(step.command())}\n")
        f.flush()
        proc = subprocess.Popen(step.command(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return proc.wait(), True


def log_path(out: Path, step: Step) -> Path:
    return out / "logs" / (step.name.replace("/", "_") + ".log")


def print_estimate(steps: list[Step], size: str, device: str, dry_run: bool = False) -> int:
    """--estimate / --dry-run: each step's estimated seconds (and command), the total; exit code 0."""
    for s in steps:
        print(f"{s.estimate_s:8.0f} s  {s.name}" + (f"  {s.shown()}" if dry_run and s.app else ""))
    total = sum(s.estimate_s for s in steps)
    print(f"{total:8.0f} s  total ({total / 60:.1f} min), size {size}, device model {device}")
    return 0


# execute(step, seconds left or None, record) -> (exit code, timed out)
Execute = Callable[[Step, "float | None", dict], "tuple[int, bool]"]


def run_steps(script: str, steps: list[Step], out: Path, argv: list[str] | None, fields: dict,
              time_budget: float | None, execute: Execute,
              skip: Callable[[Step, dict, dict], str | None] | None = None,
              done_info: Callable[[Step, float], dict | None] | None = None) -> tuple[str, int]:
    """Run `steps` (module docstring); (status, exit code).

    fields: what the record states about this experiment (size, seed, methods, ...), updated on every invocation.
    skip(step, record, invocation): a reason to skip a step (recorded), "rerun" to run a step whose `.done` exists,
      or None for the default (skip when `.done` exists).
    done_info(step, wall_s): what `.done` records ({"wall_s"} by default); None: write no `.done` (a step that
      runs on every invocation, like a summary)."""
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "experiment.json"
    record = load_record(record_path)
    record.update(fields, python=sys.version.split()[0])
    started = time.time()
    inv = {"started": datetime.now(timezone.utc).isoformat(), "argv": sys.argv[1:] if argv is None else argv,
           "machine": machine(), "ran": [], "skipped": []}
    record["invocations"].append(inv)
    record["machine"] = inv["machine"]
    save_record(record_path, record)
    status, ran_any = "complete", False
    for s in steps:
        why = skip(s, record, inv) if skip else None
        if why == "failed":
            status = f"failed: {s.name}"
            break
        if why not in (None, "rerun"):
            inv["skipped"].append(s.name)
            continue
        if why is None and (s.folder / DONE).is_file():
            inv["skipped"].append(s.name)
            continue
        left = None if time_budget is None else time_budget - (time.time() - started)
        if left is not None and ran_any and (s.estimate_s > left or left <= 0):
            status = "stopped: time budget"
            print(f"{script}: {s.name} (~{s.estimate_s:.0f} s) does not fit the {max(left, 0):.0f} s left; rerun the "
                  "same command to continue", flush=True)
            break
        print(f"== {s.name} (~{s.estimate_s:.0f} s)" + (f": {s.shown()}" if s.app else ""), flush=True)
        t0 = time.time()
        entry = record["steps"].setdefault(s.name, {"attempts": []})
        # the first step of a call always starts, with at least 30 s (a rerun resumes it in its folder)
        rc, timed_out = execute(s, None if left is None else max(left, 30.0), record)
        wall = time.time() - t0
        ran_any = True
        entry["command"] = s.shown()
        entry["attempts"].append({"wall_s": round(wall, 1), "rc": rc, "timed_out": timed_out,
                                  "at": datetime.now(timezone.utc).isoformat()})
        entry["wall_s"] = round(sum(a["wall_s"] for a in entry["attempts"]), 1)
        entry["estimate_s"] = round(s.estimate_s, 1)
        inv["ran"].append(s.name)
        if rc == 0 and not timed_out:
            info = done_info(s, wall) if done_info else {"wall_s": round(wall, 1)}
            if info is not None:
                (s.folder / DONE).write_text(json.dumps(info) + "\n")
            entry["done"] = True
            print(f"== {s.name}: done in {wall:.0f} s", flush=True)
        else:
            status = "stopped: time budget" if timed_out else f"failed: {s.name} (exit code {rc})"
            print(f"{script}: {status}; log {out / 'logs'}", file=sys.stderr, flush=True)
            save_record(record_path, record)
            break
        save_record(record_path, record)
    inv["wall_s"] = round(time.time() - started, 1)
    inv["status"] = record["status"] = status
    record["total_step_wall_s"] = round(sum(e.get("wall_s", 0.0) for e in record["steps"].values()), 1)
    record["total_invocation_wall_s"] = round(sum(i.get("wall_s", 0.0) for i in record["invocations"]), 1)
    save_record(record_path, record)
    print(f"{script}: {status} ({inv['wall_s']:.0f} s this call, {record['total_step_wall_s']:.0f} s in steps so far); "
          f"record: {record_path}", flush=True)
    return status, 0 if status == "complete" else 3 if status.startswith("stopped") else 1
