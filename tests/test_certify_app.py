"""vrs-certify end to end: outputs, resume, SIGKILL safety, sharding over 2 CPU processes, bad input.

Most runs use the session's digits checkpoint (tests/conftest.py: LeNet on 8x8 digits, sigma = 0.25), so a
run of tens of images takes seconds; the under-a-minute check uses a `vrs-train experiment=smoke` model.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import (QUIET, REPO_ROOT, app_command, app_env, call_main, compose_config, one_error_line,
                      run_app)
from vrs.apps.certify import certify
from vrs.apps.certify_store import COLUMNS, ResultsDir, format_row
from vrs.errors import ConfigError, VRSError

# One setting for the subprocess runs that are compared row by row.
RUN = ["data=digits", "certify.n0=20", "certify.n=1000", "certify.max=24", "certify.images_per_group=1",
       "certify.batch_size=500", "logger=none", "print_config=false", "certify.progress=false"]


def table(path: Path) -> list[tuple[str, ...]]:
    """Rows of a results TSV without the `time` column (the only one that may differ between runs)."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, c in enumerate(header) if c != "time"]
    return [tuple(line.split("\t")[i] for i in keep) for line in lines[1:]]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(digits_ckpt, tmp_path_factory) -> Path:
    """An uninterrupted single-process run of RUN (in this process): the rows the other runs must reproduce."""
    root = tmp_path_factory.mktemp("certify_ref")
    out = root / "ref"
    certify(compose_config(f"ckpt_path={digits_ckpt}", *RUN, f"certify.out_dir={out}", config_name="certify",
                           output_dir=root / "hydra"))
    rows = table(out / "certify.tsv")
    assert [int(r[0]) for r in rows] == list(range(24))
    return out


# ---- configs ------------------------------------------------------------------------------------------
def test_config_defaults_are_cohens():
    cfg = compose_config("ckpt_path=x.ckpt", config_name="certify", output_dir="/tmp/o")
    c = cfg.certify
    assert (c.n0, c.n, c.alpha, c.mode, c.sigma, c.skip, c.max) == (100, 100_000, 0.001, "certify", None, 1, None)
    assert c.out_dir == "/tmp/o" and "csv" in cfg.logger and cfg.data.name == "fashion_mnist"
    smoke = compose_config("certify=smoke", config_name="certify", output_dir="/tmp/o").certify
    assert (smoke.n0, smoke.n, smoke.max, smoke.alpha) == (10, 200, 5, 0.001)


# ---- outputs, resume ------------------------------------------------------------------------------------
def test_outputs_and_resume_in_process(digits_ckpt, tmp_path):
    common = ["data=digits", f"ckpt_path={digits_ckpt}", "certify.n0=20", "certify.n=500", "logger=none",
              "certify.progress=false", "certify.skip=3"]
    full = certify(compose_config(*common, "certify.max=10", config_name="certify", output_dir=tmp_path / "full"))
    part = tmp_path / "part"
    first = certify(compose_config(*common, "certify.max=4", config_name="certify", output_dir=part))
    assert first["images_this_run"] == 4
    again = certify(compose_config(*common, "certify.max=10", config_name="certify", output_dir=part))
    assert again["images_this_run"] == 6 and again["rows_in_file"] == 10
    assert table(part / "certify.tsv") == table(tmp_path / "full" / "certify.tsv")
    # nothing left to do: nothing recomputed, same rows
    last = certify(compose_config(*common, "certify.max=10", config_name="certify", output_dir=part))
    assert last["images_this_run"] == 0 and table(part / "certify.tsv") == table(tmp_path / "full" / "certify.tsv")

    tsv = (tmp_path / "full" / "certify.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time", "sigma"]
    assert [int(r.split("\t")[0]) for r in tsv[1:]] == list(range(0, 30, 3))
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary == full
    assert summary["subset"]["count"] == 10 and summary["subset"]["skip"] == 3
    assert (summary["n0"], summary["n"], summary["alpha"], summary["sigma"], summary["seed"]) == (20, 500, 0.001, 0.25, 0)
    assert summary["device"].startswith("CPU") and summary["seconds_per_image"] > 0
    # the summary is recomputed from the rows with the conventions of docs/method.md
    rows = [r.split("\t") for r in tsv[1:]]
    radii = [float(r[3]) for r in rows]
    correct = [r[4] == "1" for r in rows]
    assert summary["clean_accuracy"] == pytest.approx(sum(correct) / 10)
    assert summary["acr"] == pytest.approx(sum(r for r, c in zip(radii, correct) if c) / 10)
    assert summary["certified_accuracy"]["0.25"] == pytest.approx(sum(c and r >= 0.25 for r, c in zip(radii, correct)) / 10)
    assert summary["abstain_rate"] == pytest.approx(sum(r[2] == "-1" for r in rows) / 10)
    assert all(float(r[6]) == 0.25 for r in rows) and summary["clean_accuracy"] >= 0.6
    assert (tmp_path / "full" / "certified_accuracy.png").stat().st_size > 1000


def test_predict_mode(digits_ckpt, tmp_path):
    out = certify(compose_config("data=digits", f"ckpt_path={digits_ckpt}", "certify.mode=predict", "certify.n=300",
                                 "certify.max=8", "logger=none", "certify.progress=false", "certify.alpha=0.01",
                                 config_name="certify", output_dir=tmp_path))
    lines = (tmp_path / "certify.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(COLUMNS["predict"]) and len(lines) == 9
    assert out["mode"] == "predict" and "certified_accuracy" not in out and out["clean_accuracy"] >= 0.6


# ---- the crash-safety rules of the results directory ---------------------------------------------------
def _meta(**kw):
    return {"mode": "certify", "n0": 10, "n": 100, "alpha": 0.001, "sigma": 0.25, "seed": 0, "ckpt_sha256": "ab",
            "data": "digits", "split": "test", "precision": "fp32", "noise_block": 1024, "device_type": "cpu"} | kw


def _row(idx):
    return format_row("certify", {"idx": idx, "label": 1, "predict": 1, "radius": 0.1234567, "correct": 1,
                                  "time": 0.5, "sigma": 0.25})


def test_results_dir_torn_line_shards_and_refusal(tmp_path):
    store = ResultsDir(tmp_path, _meta())
    assert store.open() == {}
    header = "\t".join(COLUMNS["certify"]) + "\n"
    # a power cut mid-row left a torn last line; a killed sharded run left shard files (one row twice)
    store.tsv.write_text(header + _row(0) + _row(1) + "2\t1\t1\t0.1")
    store.shard_path(0).write_text(header + _row(4) + _row(1))
    store.shard_path(1).write_text(header + _row(3))
    rows = ResultsDir(tmp_path, _meta()).open()
    assert sorted(rows) == [0, 1, 3, 4] and rows[0]["radius"] == 0.123456  # rounded down, never up
    assert store.tsv.read_text() == header + "".join(_row(i) for i in (0, 1, 3, 4))
    assert not list(tmp_path.glob("certify.rank*.tsv"))
    # other settings: refused, and nothing in the directory changes
    before = snapshot(tmp_path)
    for change in ({"n": 200}, {"alpha": 0.01}, {"sigma": 0.5}, {"seed": 1}, {"ckpt_sha256": "cd"}, {"n0": 5}):
        with pytest.raises(VRSError, match="other settings"):
            ResultsDir(tmp_path, _meta(**change)).open()
        assert snapshot(tmp_path) == before
    # conflicting rows for one image are never merged
    store.shard_path(0).write_text(header + _row(0).replace("\t1\t0.5", "\t0\t0.5"))
    with pytest.raises(VRSError, match="idx 0"):
        ResultsDir(tmp_path, _meta()).open()
    # rows without a meta file: unknown settings, refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "certify.tsv").write_text(header + _row(0))
    with pytest.raises(VRSError, match="no certify.meta.json"):
        ResultsDir(other, _meta()).open()


def test_directory_lock(tmp_path):
    a = ResultsDir(tmp_path, _meta())
    a.lock()
    with pytest.raises(VRSError, match="another vrs-certify"):
        ResultsDir(tmp_path, _meta()).lock()
    a.unlock()
    ResultsDir(tmp_path, _meta()).lock()


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume(reference, digits_ckpt, tmp_path):
    """A real subprocess is SIGKILLed mid-run: no torn or duplicate row; the rerun completes the same rows."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    out = tmp_path / "killed"
    cmd = app_command("certify", f"ckpt_path={digits_ckpt}", *RUN, f"certify.out_dir={out}")
    tsv = out / "certify.tsv"
    for attempt in range(1):  # raise the count to kill it several times
        target = rng.randint(1 + 8 * attempt, 8 + 8 * attempt)
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=app_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline:
            if tsv.exists() and tsv.read_bytes().count(b"\n") - 1 >= target:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))  # somewhere inside the next image's work
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raw = tsv.read_bytes()
        assert raw.endswith(b"\n")  # never a partial row
        rows = table(tsv)
        idx = [int(r[0]) for r in rows]
        assert len(idx) == len(set(idx)) and idx == sorted(idx)
        assert target <= len(rows) < 24
        assert rows == table(reference / "certify.tsv")[: len(rows)]
    proc = run_app("certify", f"ckpt_path={digits_ckpt}", *RUN, f"certify.out_dir={out}", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table(tsv) == table(reference / "certify.tsv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in_file"] == 24 and summary["images_this_run"] == 24 - len(rows)


@pytest.mark.slow
def test_two_processes_give_the_same_rows(reference, digits_ckpt, tmp_path):
    out = tmp_path / "sharded"
    proc = run_app("certify", f"ckpt_path={digits_ckpt}", *RUN, "certify.world_size=2",
                   "certify.images_per_group=4", f"certify.out_dir={out}", root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table(out / "certify.tsv") == table(reference / "certify.tsv")
    assert not list(out.glob("certify.rank*.tsv"))
    summary = json.loads((out / "summary.json").read_text())
    ref = json.loads((reference / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["acr"] == ref["acr"]
    assert summary["certified_accuracy"] == ref["certified_accuracy"]


# ---- bad input: one clear error, exit code 2, existing results untouched -----------------------------------
@pytest.mark.parametrize("override,key", [("certify.n0=3000", "certify.n0"), ("certify.n=0", "certify.n"),
                                          ("certify.alpha=1.0", "certify.alpha"), ("certify.alpha=-0.1", "certify.alpha"),
                                          ("certify.skip=0", "certify.skip"), ("certify.precision=fp64", "certify.precision")])
def test_bad_settings_in_process(override, key, digits_ckpt, tmp_path):
    cfg = compose_config("data=digits", f"ckpt_path={digits_ckpt}", "certify.n=2000", override, "logger=none",
                         config_name="certify", output_dir=tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        certify(cfg)
    assert err.value.key == key
    assert not (tmp_path / "out").exists()


def _bad_checkpoints(tmp_path: Path, good: Path, smoke_ckpt: Path) -> dict[str, tuple[Path, str]]:
    trunc = tmp_path / "truncated.ckpt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    ckpt = torch.load(good, weights_only=True)
    no_norm = tmp_path / "no_norm.ckpt"
    ckpt_nn = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if not k.startswith("net.0.")})
    torch.save(ckpt_nn, no_norm)
    no_vrs = tmp_path / "no_vrs.ckpt"
    torch.save({k: v for k, v in ckpt.items() if k != "vrs"}, no_vrs)
    return {"missing": (tmp_path / "nope.ckpt", "not found"), "truncated": (trunc, "corrupt or truncated"),
            "garbage": (garbage, "corrupt or truncated"), "no normalisation": (no_norm, "normalisation"),
            "not vrs": (no_vrs, "not written by vrs-train"),
            "other shape": (smoke_ckpt, "was trained on fashion_mnist (1x28x28")}


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory) -> Path:
    """A `vrs-train experiment=smoke` checkpoint (LeNet on Fashion-MNIST), trained on fewer images here."""
    from vrs.apps.train import train

    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not (REPO_ROOT / "data" / "fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not available offline")
    run_dir = tmp_path_factory.mktemp("smoke_run")
    cfg = compose_config("experiment=smoke", *QUIET, "data.train_subset=512", "data.val_size=256", "test=false",
                         output_dir=run_dir)
    train(cfg)
    return run_dir / "checkpoints" / "last.ckpt"


def test_bad_checkpoints_in_process_leave_results_untouched(reference, digits_ckpt, smoke_ckpt, tmp_path):
    out = tmp_path / "existing"
    (out).mkdir()
    for name in ("certify.tsv", "certify.meta.json", "summary.json"):
        (out / name).write_bytes((reference / name).read_bytes())
    before = snapshot(out)
    for what, (path, message) in _bad_checkpoints(tmp_path, digits_ckpt, smoke_ckpt).items():
        cfg = compose_config("data=digits", f"ckpt_path={path}", *RUN, f"certify.out_dir={out}",
                             config_name="certify", output_dir=tmp_path / "hydra")
        with pytest.raises(VRSError, match=re.escape(message)):
            certify(cfg)
        assert snapshot(out) == before, what
    # the right checkpoint with other settings: refused as well
    cfg = compose_config("data=digits", f"ckpt_path={digits_ckpt}", *RUN, "certify.n=500", f"certify.out_dir={out}",
                         config_name="certify", output_dir=tmp_path / "hydra")
    with pytest.raises(VRSError, match="n: existing 1000, now 500"):
        certify(cfg)
    assert snapshot(out) == before


def test_class_count_mismatch(digits_ckpt, tmp_path):
    cfg = compose_config("data=synthetic", "data.channels=1", "data.size=8", "data.num_classes=5", "data.mean=[0.5]",
                         "data.std=[0.25]", f"ckpt_path={digits_ckpt}", "certify.n0=10", "certify.n=100", "logger=none",
                         config_name="certify", output_dir=tmp_path / "out")
    with pytest.raises(VRSError, match=re.escape("(1x8x8, 10 classes), but data=synthetic gives synthetic (1x8x8, 5 classes)")):
        certify(cfg)
    assert not (tmp_path / "out").exists()


def test_bad_input_from_the_command_line(reference, digits_ckpt, tmp_path, capsys, monkeypatch):
    """vrs-certify's command line and error handling, through its main in this process (test_fuzz runs the
    console app as a real process)."""
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out = tmp_path / "existing"
    out.mkdir()
    for name in ("certify.tsv", "certify.meta.json"):
        (out / name).write_bytes((reference / name).read_bytes())
    before = snapshot(out)
    base = [f"ckpt_path={digits_ckpt}", *RUN, f"certify.out_dir={out}"]
    line = one_error_line(*call_main("certify", [*base, "certify.n0=5000"], capsys))
    assert "certify.n0=5000" in line and "certify.n=1000" in line
    line = one_error_line(*call_main("certify", [*base, "certify.alpha=0.01"], capsys))
    assert "alpha: existing 0.001, now 0.01" in line
    assert snapshot(out) == before


# ---- the quick look on a CPU ---------------------------------------------------------------------------------
@pytest.mark.slow  # trains on Fashion-MNIST, then a vrs-certify process
def test_smoke_checkpoint_certifies_in_under_a_minute(smoke_ckpt, tmp_path):
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "vrs-certify"
    cmd = [str(exe)] if exe.exists() else app_command("certify")
    start = time.perf_counter()
    proc = subprocess.run([*cmd, f"ckpt_path={smoke_ckpt}", "certify.n0=10", "certify.n=200", "certify.max=5"],
                          cwd=REPO_ROOT, env=app_env(tmp_path), capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, elapsed
    out = Path(json.loads(next((tmp_path / "outputs" / "certify" / "runs").glob("*/summary.json")).read_text())["out_dir"])
    assert len((out / "certify.tsv").read_text().splitlines()) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 5 and summary["data"] == "fashion_mnist" and summary["sigma"] == 0.25
    assert (out / "certified_accuracy.png").exists() and (out / "csv" / "metrics.csv").exists()
    assert "ACR =" in proc.stdout


def test_wandb_gets_the_table_and_the_plot(digits_ckpt, tmp_path, monkeypatch):
    """logger=wandb (offline): the summary, the per-image table and the certified-accuracy plot are logged."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_config("data=digits", f"ckpt_path={digits_ckpt}", "certify.n0=10", "certify.n=200", "certify.max=4",
                         "logger=wandb", "logger.wandb.name=certify-test", "certify.progress=false",
                         config_name="certify", output_dir=tmp_path)
    try:
        certify(cfg)
    finally:
        from vrs.utils.loggers import finish_wandb

        finish_wandb()
    files = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert any("media/table/cert/table" in f for f in files), files
    assert any("media/images/cert/certified_accuracy" in f for f in files), files


# ---- certify.sampling / certify.sound (issue 21) -----------------------------------------------------------------
def test_radius_target_sound_rows_resume_and_grouping(digits_ckpt, tmp_path):
    """radius_target with the sound lattice noise: rows carry `samples` and `decisions`, the summary the mean samples
    and decision counts; a resume with more images, and another grouping of the images, give the same rows."""
    common = ["data=digits", f"ckpt_path={digits_ckpt}", "certify.n0=16", "certify.n=400", "logger=none",
              "certify.progress=false", "certify.sampling=radius_target", "certify.radii=[0.1,0.25]",
              "certify.sound=true", "certify.looks=4", "certify.batch_size=400"]
    first = certify(compose_config(*common, "certify.max=3", "certify.images_per_group=1", config_name="certify",
                                   output_dir=tmp_path / "a"))
    assert first["num_images"] == 3
    resumed = certify(compose_config(*common, "certify.max=6", "certify.images_per_group=1", config_name="certify",
                                     output_dir=tmp_path / "a"))
    whole = certify(compose_config(*common, "certify.max=6", "certify.images_per_group=4", config_name="certify",
                                   output_dir=tmp_path / "b"))
    assert resumed["images_this_run"] == 3 and table(tmp_path / "a" / "certify.tsv") == table(tmp_path / "b" / "certify.tsv")
    header = (tmp_path / "b" / "certify.tsv").read_text().splitlines()[0].split("\t")
    assert header == list(COLUMNS["certify/radius_target"]) and header[-2:] == ["samples", "decisions"]
    rows = table(tmp_path / "b" / "certify.tsv")
    samples = [int(r[-2]) for r in rows]
    assert all(16 + 50 <= s <= 416 for s in samples)  # n0 + at least the first look, at most n0 + n
    for r in rows:  # "yes" at r exactly when the radius reaches r
        decided = dict(item.split("=") for item in r[-1].split(";"))
        radius, predict = float(r[3]), int(r[2])
        assert set(decided) == {"0.1", "0.25"}
        assert (decided["0.1"] == "yes") == (radius >= 0.1 and predict >= 0)
    assert whole["mean_samples_per_image"] == pytest.approx(sum(samples) / len(samples))
    assert whole["samples_per_image_fixed"] == 416 and whole["sampling"]["schedule"] == [50, 100, 200, 400]
    assert sum(whole["decision_counts"]["0.1"].values()) == 6
    assert 0 < whole["sound"]["slack"] < 1e-9
    meta = json.loads((tmp_path / "b" / "certify.meta.json").read_text())
    assert (meta["sampling"], meta["sound"], meta["radii"]) == ("radius_target", True, [0.1, 0.25])
    # other target radii are other results: refused in the same folder
    with pytest.raises(VRSError, match="radii"):
        certify(compose_config(*common[:-4], "certify.radii=[0.5]", "certify.sound=true", "certify.looks=4",
                               "certify.batch_size=400", "certify.max=6", config_name="certify",
                               output_dir=tmp_path / "b"))
