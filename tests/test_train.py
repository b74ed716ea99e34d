"""Training: fast_dev_run on digits and synthetic, checkpoints carry normalisation, fresh noise per batch,
resume continues the epoch count, multirun with one W&B (offline) run per job, and bad input through
`vrs-train`'s command line gives one clear line and exit code 2 (in this process; a real process for the
full-traceback case)."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from conftest import FASHION_MNIST_DIR, QUIET, REPO_ROOT, app_env, call_main, compose_config, run_app
from vrs.apps.train import train
from vrs.modules.classifier import NoisyClassifierModule


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ---- in-process: the same train() the app runs -----------------------------------------------
@pytest.mark.parametrize(("data", "model"), [("digits", "lenet"),
                                             pytest.param("synthetic", "resnet20", marks=pytest.mark.slow)])
def test_fast_dev_run(data, model, tmp_path):
    cfg = compose_config(f"data={data}", f"model={model}", "debug=fdr", *QUIET, output_dir=tmp_path)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and 0 <= metrics["val/acc"] <= 1 and 0 <= metrics["val/acc_clean"] <= 1
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run writes no checkpoints


def test_digits_run_learns(digits_run):
    m = digits_run.metrics
    assert m["test/acc_clean"] > 0.85 and m["test/acc"] > 0.7, m  # 10 classes: chance is 0.1
    assert (digits_run.run_dir / "csv" / "metrics.csv").is_file()


def test_checkpoint_carries_normalisation(digits_ckpt):
    ckpt = torch.load(digits_ckpt, map_location="cpu", weights_only=True)  # plain containers only
    state, hp = ckpt["state_dict"], ckpt["hyper_parameters"]
    assert state["net.0.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["net.0.std"].flatten().tolist() == pytest.approx([0.4])
    assert hp["data"]["mean"] == [0.3] and hp["data"]["std"] == [0.4] and hp["data"]["name"] == "digits"
    assert ckpt["vrs"] == {"format": 1, "kind": "classifier", "data": hp["data"]}
    assert hp["noise"]["sigma"] == 0.25 and hp["net"]["_target_"].endswith("LeNet")
    # the checkpoint alone rebuilds the network, normalisation first
    module = NoisyClassifierModule.load_from_checkpoint(digits_ckpt, map_location="cpu").eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(module.net[0](x), (x - 0.3) / 0.4)
    with torch.no_grad():
        assert torch.equal(module(x), module.net[1]((x - 0.3) / 0.4))


@pytest.mark.parametrize("noise", ["fixed", "multi"])
def test_noise_is_fresh_per_batch_in_pixel_space(noise, tmp_path, monkeypatch):
    import vrs.modules.training.gaussian as gaussian  # the default training method adds the training noise

    calls = []
    real_add_noise = gaussian.add_noise

    def spy(x, sigma):
        out = real_add_noise(x, sigma)
        calls.append((x.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(gaussian, "add_noise", spy)
    cfg = compose_config("data=digits", f"noise={noise}", "data.crop_padding=0", *QUIET, output_dir=tmp_path)
    dm = instantiate(cfg.data)
    module = instantiate(cfg.module, data=dm.spec.to_dict())
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0,
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert len(calls) == 6  # one call per training batch
    noises = [(out - x) for x, out in calls]
    for x, _ in calls:  # noise is added to [0,1] pixels (normalisation happens inside the model)
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    for i in range(len(noises)):
        for j in range(i):
            a, b = noises[i].flatten(), noises[j].flatten()
            n = min(len(a), len(b))
            assert abs(float(torch.corrcoef(torch.stack([a[:n], b[:n]]))[0, 1])) < 0.1  # independent draws
    per_sample = torch.cat([nz.flatten(1).std(1) for nz in noises])
    if noise == "fixed":
        assert per_sample.mean() == pytest.approx(0.25, rel=0.05)
    else:  # sigma drawn per sample, log-uniform on [0.12, 1.0]
        # (each estimate is the std of 64 pixels, so within about +-30% of its sigma)
        assert 0.06 < float(per_sample.min()) and float(per_sample.max()) < 1.5
        assert (per_sample < 0.3).float().mean() > 0.25 and (per_sample > 0.6).float().mean() > 0.1


# ---- the real app in subprocesses -----------------------------------------------------------------
@pytest.mark.slow  # a vrs-train process
def test_resume_continues_epoch_count(digits_run, tmp_path):
    first = torch.load(digits_run.ckpt, map_location="cpu", weights_only=True)
    trained, steps = first["epoch"] + 1, first["global_step"]  # "epoch" is the index of the last one
    assert trained == 6 and steps > 0
    per_epoch = steps // trained
    run_dir = tmp_path / "resumed"
    overrides = [o for o in digits_run.overrides if not o.startswith("trainer.max_epochs")]
    vrs_train = Path(sys.executable).with_name("vrs-train")  # the console script
    cmd = [str(vrs_train), *overrides, f"ckpt_path={digits_run.ckpt}", f"trainer.max_epochs={trained + 2}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=app_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Run directory: {run_dir}" in proc.stdout
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == trained + 1 and resumed["global_step"] == steps + 2 * per_epoch
    # only the two new epochs (6 and 7) were trained: the resumed run's log starts where the first stopped
    with open(run_dir / "csv" / "metrics.csv") as fh:
        logged = {int(float(row["epoch"])) for row in csv.DictReader(fh) if row["train/loss"] or row["val/acc"]}
    assert logged == {trained, trained + 1}


@pytest.mark.slow  # a vrs-train process, two jobs, W&B
def test_multirun_two_jobs_two_wandb_offline_runs(tmp_path):
    sweep = tmp_path / "multi"
    repo_wandb_before = (REPO_ROOT / "wandb").exists()
    proc = run_app("train", "-m", "data=digits", "model.width=8", "logger=wandb", "noise.sigma=0.25,0.5",
                   "debug=limit", "trainer.max_epochs=1", "test=false", *QUIET, f"hydra.sweep.dir={sweep}",
                   root=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_ids = set()
    for job, sigma in ((0, 0.25), (1, 0.5)):
        job_dir = sweep / str(job)
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        assert f"noise.sigma={sigma}" in (job_dir / ".hydra" / "overrides.yaml").read_text()
        runs = list((job_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one W&B run per job, under that job's run directory
        (wandb_file,) = runs[0].glob("run-*.wandb")
        data = wandb_file.read_bytes()
        assert f'"sigma":{sigma}'.encode() in data and b"val/acc" in data  # config and metrics were logged
        run_ids.add(wandb_file.stem)
    assert len(run_ids) == 2
    assert not (tmp_path / "wandb").exists()  # nothing outside the run directories
    assert repo_wandb_before or not (REPO_ROOT / "wandb").exists()


@pytest.mark.slow  # a vrs-train process on Fashion-MNIST
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST not installed")
def test_smoke_experiment_on_fashion_mnist(tmp_path):
    start = time.perf_counter()
    proc = run_app("train", "experiment=smoke", "print_config=false", root=tmp_path)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "smoke" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and f"Run directory: {run_dir}" in proc.stdout
    acc = float(proc.stdout.split("test/acc_clean = ")[1].split()[0])
    assert acc > 0.4, proc.stdout  # one epoch on 2,048 images: far above chance (0.1)
    print(f"experiment=smoke: {wall:.1f} s wall (the issue asks for under a minute)")


BAD_INPUT = {
    "unknown_group_option": (["data=foo"], "error: data='foo' is not allowed: one of cifar10, cifar100, digits, "
                                           "fashion_mnist, imagenet, mnist, synthetic"),
    "sigma_zero": (["noise.sigma=0"], "error: noise.sigma=0 is not allowed: a number > 0"),
    "sigma_min_above_max": (["noise=multi", "noise.sigma_min=0.5", "noise.sigma_max=0.2"],
                            "error: noise.sigma_max=0.2 is not allowed: a number > noise.sigma_min (0.5)"),
    "missing_data_dir": (["data=mnist", "data.download=false", "data.data_dir={tmp}/nodata"],
                         "error: data set mnist not found in any of ['{tmp}/nodata/mnist'] and data.download=false"),
    "missing_ckpt": (["data=digits", "ckpt_path={tmp}/nope.ckpt"], "error: ckpt_path: checkpoint not found: {tmp}/nope.ckpt"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_one_clear_line(case, tmp_path, capsys, monkeypatch):
    """Through vrs-train's main (its command line and error handling) in this process: a new process per case
    would only add its start-up; test_fuzz.test_real_processes and the test below run the console app."""
    args, expected = BAD_INPUT[case]
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    code, err = call_main("train", [a.format(tmp=tmp_path) for a in args] + ["trainer=cpu", "print_config=false"],
                          capsys)
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith(expected.format(tmp=tmp_path)), err[-2000:]
    assert sum(ln.startswith("error:") for ln in err.splitlines()) == 1


@pytest.mark.slow  # a vrs-train process
def test_bad_input_full_traceback_on_request(tmp_path):
    proc = run_app("train", "data=digits", "noise.sigma=-1", "print_config=false", root=tmp_path, VRS_FULL_ERROR="1",
                   HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_python_m_vrs_apps_train_help(tmp_path):
    proc = run_app("train", "--help", root=tmp_path)
    assert proc.returncode == 0 and "data: cifar10, cifar100, digits, fashion_mnist, imagenet, mnist, synthetic" in proc.stdout
    assert shutil.which("vrs-train", path=str(Path(sys.executable).parent))


def test_non_finite_loss_stops_training(tmp_path):
    cfg = compose_config("data=digits", "optimizer.lr=1e6", *QUIET, output_dir=tmp_path)
    dm = instantiate(cfg.data)
    module = instantiate(cfg.module, data=dm.spec.to_dict())
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch == 0  # stopped within the first epoch
