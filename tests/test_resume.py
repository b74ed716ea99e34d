"""Training resume: a real `vrs-train` process SIGKILLed mid-epoch and restarted from last.ckpt ends
bit-identical to an uninterrupted run (weights, optimizer state, final metrics, metrics.csv), on the CPU in
deterministic mode; without the reseeding callback it does not. Plus the resumable device loader, and
vrs-train refusing checkpoints it cannot resume from (one clear error, nothing written).

The kill is made deterministic by `StallAt` (a callback the killed process loads from this file via
PYTHONPATH): at a chosen step, after last.ckpt of that step is on disk, it signals the test and waits to be
killed. So the kill always lands mid-epoch, in a process that is still training.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import DIGITS_OVERRIDES, QUIET, REPO_ROOT, app_command, app_env, compose_config
from vrs.apps.train import train
from vrs.data.datamodule import TensorBatches
from vrs.errors import VRSError

pytestmark = pytest.mark.usefixtures("one_thread")  # the killed process gets OMP_NUM_THREADS=1 as well

# digits: 1,297 training images in batches of 64 = 21 steps per epoch; last.ckpt every 5 steps.
STEPS_PER_EPOCH = 21
RUN = ["data=digits", "model.width=8", "model.hidden=32", "data.batch_size=64", "trainer.max_epochs=3",
       "trainer.deterministic=true", "trainer.log_every_n_steps=4", "callbacks.last_checkpoint.every_n_train_steps=5",
       "seed=3", *QUIET]
KILL_AT = 35  # epoch 1, after 14 of its 21 batches (35 is a multiple of 5: last.ckpt is that step's)


class StallAt(pl.Callback):
    """At training step `step` (last.ckpt of that step already written): write `marker`, then wait to be
    killed. Used by the killed process only."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(f"{trainer.current_epoch} {batch_idx}")
            time.sleep(600)


class RaiseAt(pl.Callback):
    """Stop the run with an exception at training step `step` (an in-process stand-in for a kill)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_tensors(a, b) -> bool:
    """Equal structure with bit-identical tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_tensors, a, b))
    return a == b


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, a copy of its last.ckpt) of a `vrs-train` process SIGKILLed at step KILL_AT (mid-epoch)."""
    root = tmp_path_factory.mktemp("killed_train")
    run_dir, marker = root / "run", root / "stalled"
    cmd = app_command("train", *RUN, f"hydra.run.dir={run_dir}", "+callbacks.stall._target_=test_resume.StallAt",
                      f"+callbacks.stall.step={KILL_AT}", f"+callbacks.stall.marker={marker}")
    env = app_env(root, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, f"vrs-train ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "vrs-train did not reach the kill step in time"
            time.sleep(0.05)
        assert marker.read_text() == f"1 {KILL_AT - STEPS_PER_EPOCH}"  # epoch 1, batch 14: mid-epoch
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    copy = root / "killed_last.ckpt"  # for the control: the resumed run overwrites the original
    copy.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    return run_dir, copy


@pytest.fixture(scope="module")
def uninterrupted(one_thread, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run_dir, train(compose_config(*RUN, output_dir=run_dir))


@pytest.mark.slow  # a vrs-train process killed, two trainings
def test_sigkill_mid_epoch_then_resume_is_bit_identical(killed_run, uninterrupted):
    ref_dir, ref_metrics = uninterrupted
    killed_run, _ = killed_run
    ckpt_path = killed_run / "checkpoints" / "last.ckpt"
    ckpt = load(ckpt_path)
    # the checkpoint the run restarts from is a mid-epoch one, and it records where in the epoch it was
    assert ckpt["global_step"] == KILL_AT and KILL_AT % STEPS_PER_EPOCH != 0 and ckpt["epoch"] == 1
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 14}]
    assert "train_acc" in ckpt["vrs_metric_states"]
    with open(killed_run / "csv" / "metrics.csv", newline="") as fh:  # the log survived the kill, whole
        rows = list(csv.reader(fh))
    assert len(rows) > 5 and all(len(r) == len(rows[0]) for r in rows)

    # restart in the same run directory, as a pre-empted job does
    metrics = train(compose_config(*RUN, f"ckpt_path={ckpt_path}", output_dir=killed_run))
    assert metrics == ref_metrics  # every final metric (val/*, test/*, train/*), exactly
    final, ref = load(killed_run / "checkpoints" / "last.ckpt"), load(ref_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref["global_step"] == 3 * STEPS_PER_EPOCH
    assert same_tensors(final["state_dict"], ref["state_dict"])
    assert same_tensors(final["optimizer_states"], ref["optimizer_states"])
    # the log of the killed + resumed run is the log of the uninterrupted one, byte for byte
    assert (killed_run / "csv" / "metrics.csv").read_bytes() == (ref_dir / "csv" / "metrics.csv").read_bytes()


def test_without_reseeding_the_resumed_run_differs(killed_run, uninterrupted, tmp_path):
    """The control: Lightning alone (no ExactResume) restores weights and position but not the random
    streams, so the noise after the restart differs and so do the weights."""
    ref_dir, _ = uninterrupted
    _, copy = killed_run
    assert load(copy)["global_step"] == KILL_AT
    train(compose_config(*RUN, "~callbacks.exact_resume", f"ckpt_path={copy}", "test=false", output_dir=tmp_path / "r"))
    final, ref = load(tmp_path / "r" / "checkpoints" / "last.ckpt"), load(ref_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref["global_step"]
    assert not same_tensors(final["state_dict"], ref["state_dict"])


def test_resume_from_an_epoch_end_checkpoint_is_bit_identical(uninterrupted, tmp_path):
    """Checkpoints every 21 steps coincide with epoch ends: the step checkpoint of an epoch's last batch is
    left to the epoch end (after validation, which a resumed run would otherwise skip). Stopped in epoch 2,
    the run restarts from the end of epoch 1."""
    ref_dir, ref_metrics = uninterrupted
    every_epoch = [o for o in RUN if "every_n_train_steps" not in o] + [
        f"callbacks.last_checkpoint.every_n_train_steps={STEPS_PER_EPOCH}"]
    stop = 2 * STEPS_PER_EPOCH + 3
    with pytest.raises(RuntimeError, match=f"stopped at step {stop}"):
        train(compose_config(*every_epoch, "+callbacks.stop._target_=test_resume.RaiseAt", f"+callbacks.stop.step={stop}",
                             output_dir=tmp_path))
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load(ckpt_path)
    assert ckpt["global_step"] == 2 * STEPS_PER_EPOCH and "vrs_metric_states" not in ckpt  # epoch 1's end
    metrics = train(compose_config(*every_epoch, f"ckpt_path={ckpt_path}", output_dir=tmp_path))
    assert metrics == ref_metrics  # a skipped validation would show here and in the log
    final, ref = load(ckpt_path), load(ref_dir / "checkpoints" / "last.ckpt")
    assert same_tensors(final["state_dict"], ref["state_dict"])
    assert (tmp_path / "csv" / "metrics.csv").read_bytes() == (ref_dir / "csv" / "metrics.csv").read_bytes()


def test_device_loader_resumes_inside_an_epoch():
    x, y = torch.arange(10).view(10, 1), torch.arange(10)
    epoch = {"now": 2}
    loader = TensorBatches(x, y, batch_size=3, shuffle=True, seed=0, epoch_fn=lambda: epoch["now"], done_fn=lambda: 2)
    full = [b[1].tolist() for b in loader]
    assert loader.state_dict() == {"epoch": 2, "batches_done": 2}
    resumed = TensorBatches(x, y, batch_size=3, shuffle=True, seed=0, epoch_fn=lambda: epoch["now"])
    resumed.load_state_dict({"epoch": 2, "batches_done": 2})
    assert [b[1].tolist() for b in resumed] == full[2:]  # the rest of the epoch, in the same order
    assert [b[1].tolist() for b in resumed] == full      # the next pass is a whole epoch again
    stale = TensorBatches(x, y, batch_size=3, shuffle=True, seed=0, epoch_fn=lambda: 3)
    stale.load_state_dict({"epoch": 2, "batches_done": 2})  # saved at the end of epoch 2: epoch 3 is whole
    assert len(list(stale)) == 4


# ---- checkpoints vrs-train cannot resume from -------------------------------------------------------------
def _bad_resume_checkpoints(good: Path, tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (file, extra overrides, expected message)."""
    raw = good.read_bytes()
    ckpt = load(good)
    (tmp / "truncated.ckpt").write_bytes(raw[: len(raw) // 3])
    (tmp / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" * 64)
    torch.save({k: v for k, v in ckpt.items() if k not in ("optimizer_states", "loops")}, tmp / "weights_only.ckpt")
    no_norm = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if not k.startswith("net.0.")})
    torch.save(no_norm, tmp / "no_norm.ckpt")
    other_data = ["data=synthetic", "data.channels=1", "data.size=8", "data.mean=[0.3]", "data.std=[0.4]"]
    return {"truncated": (tmp / "truncated.ckpt", [], "is corrupt or truncated"),
            "garbage": (tmp / "garbage.ckpt", [], "is corrupt or truncated"),
            "weights only": (tmp / "weights_only.ckpt", [], "holds no optimizer and loop state"),
            "no normalisation": (tmp / "no_norm.ckpt", [], "does not fit this run's network (the normalisation layer)"),
            "other architecture": (good, ["model.width=8"], "does not fit this run's network"),
            "other data set": (good, other_data, "was trained on other data (name 'digits' there, 'synthetic' here")}


def test_resume_from_a_bad_checkpoint_is_one_clear_error(digits_ckpt, tmp_path):
    for name, (path, extra, message) in _bad_resume_checkpoints(digits_ckpt, tmp_path).items():
        out = tmp_path / f"run_{name.replace(' ', '_')}"
        cfg = compose_config(*DIGITS_OVERRIDES, *QUIET, *extra, f"ckpt_path={path}", output_dir=out)
        with pytest.raises(VRSError, match=message.replace("(", r"\(").replace(")", r"\)")):
            train(cfg)
        assert not out.exists(), f"{name}: files were written before the error"


def test_testing_an_earlier_best_checkpoint_keeps_the_whole_log(tmp_path):
    """vrs-train tests the best checkpoint after fitting. Loading it must not cut metrics.csv back to that checkpoint's
    length, which only a resumed fit may do (found in issue 19's run: a MACER run whose best validation accuracy was
    epoch 0 kept only epoch 0's rows). The checkpoint monitor is inverted here so that the best is an early epoch."""
    import csv

    train(compose_config(*RUN, "callbacks.model_checkpoint.mode=min", output_dir=tmp_path))
    best = sorted((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    assert len(best) == 1 and best[0].name != "epoch_002.ckpt", best  # an earlier epoch than the last is tested
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/acc")}) == [0, 1, 2]
    assert any(r.get("test/acc") for r in rows)
