"""vrs-certify on VRS selector checkpoints: C1 (default) and C2 rows, their agreement with the pure
certificate functions on the same seeded draws, the alpha budget, the Cohen path on the same base
classifier, the lambda sweep with -m, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_config, run_app
from test_vrs_train import datamodule, fit_base, selector_module, trainer
from vrs.apps.certify_store import COLUMNS, format_row
from vrs.errors import ConfigError, VRSError
from vrs.selection.median import cell_bounds, cell_radius, empirical_median, grid_cell, selector_samples, snap
from vrs.checkpoint import load_vrs
from vrs.smoothing.smoothed import image_seed, stream_seed

FAST = ["data=digits", "certify.n0=10", "certify.n=100", "certify.max=8", "certify.progress=false",
        "print_config=false", "logger=none"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def vrs_files(tmp_path_factory) -> tuple[Path, Path]:
    """(VRS checkpoint, its base classifier checkpoint) on digits: a multi-sigma LeNet and a briefly
    trained selector (sigma_h 0.1, n_h 50, alpha_h 0.01)."""
    root = tmp_path_factory.mktemp("vrs_certify")
    base = fit_base(root, epochs=4)
    pl.seed_everything(0, verbose=False)
    module = selector_module(base, diagnostics={"enabled": False})
    t = trainer(root, 1, limit_train_batches=5, limit_val_batches=1)
    t.fit(module, datamodule=datamodule())
    path = root / "vrs.ckpt"
    t.save_checkpoint(path)
    return path, base


@pytest.fixture(scope="module")
def vrs_ckpt(vrs_files) -> Path:
    return vrs_files[0]


def certify_run(ckpt, out_dir, *overrides):
    from vrs.apps.certify import certify

    cfg = compose_config(f"ckpt_path={ckpt}", *FAST, f"certify.out_dir={out_dir}", *overrides,
                         config_name="certify", output_dir=out_dir)
    summary = certify(cfg)
    lines = (Path(out_dir) / "certify.tsv").read_text().splitlines()
    header = tuple(lines[0].split("\t"))
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return summary, header, rows


def test_c1_is_the_default_for_vrs_checkpoints_and_matches_the_pure_certificate(vrs_ckpt, tmp_path):
    summary, header, rows = certify_run(vrs_ckpt, tmp_path)
    assert header == COLUMNS["vrs"] and len(rows) == 8
    assert summary["certificate"] == "c1" and summary["lam"] == 0.5
    budget = summary["alpha_budget"]
    assert budget["alpha"] == 0.001 and budget["alpha_h"] == 0.01 and budget["alpha_total"] == pytest.approx(0.011)
    assert sum(summary["cert_counts"].values()) == 8 and summary["cert_counts"]["c1"] >= 4, summary["cert_counts"]
    meta = json.loads((tmp_path / "certify.meta.json").read_text())
    assert meta["mode"] == "vrs" and meta["certificate"] == "c1" and meta["lam"] == 0.5

    # Recompute every row's selector part from the same seeded draws with the pure functions.
    model = load_vrs(vrs_ckpt)
    grid, clip = model.median.grid, (model.sigma_min, model.sigma_max)
    dm = datamodule()
    dm.setup()
    x_test = dm.splits["test"][0].float() / 255
    for r in rows:
        idx, key = int(r["idx"]), image_seed(0, int(r["idx"]))

        def draws(stream, n, key=key, idx=idx):
            gen = torch.Generator().manual_seed(stream_seed(key, stream))
            return selector_samples(model.selector, x_test[idx : idx + 1], 0.5, n, model.median.sigma_h,
                                    model.median.batch_size, gen)[0]

        sigma0 = float(snap(float(empirical_median(draws(3, model.median.n_h0))), grid))
        assert float(r["sigma"]) == pytest.approx(sigma0, rel=1e-5)
        eps_star = cell_radius(draws(4, model.median.n_h).numpy(), grid, int(grid_cell(sigma0, grid)),
                               model.median.sigma_h, model.median.alpha_h, clip)
        radius, cohen = float(r["radius"]), float(r["radius_cohen"])
        if r["cert"] == "c1":
            assert int(r["predict"]) >= 0
            assert radius == pytest.approx(min(cohen, eps_star), abs=2e-6)
            lo, hi = cell_bounds(grid, int(grid_cell(sigma0, grid)))
            assert lo <= float(r["sigma_lo"]) <= float(r["sigma_hi"]) < hi  # interval at R stays in the cell
        elif r["cert"] == "sigma_undetermined":
            assert eps_star < 0 and int(r["predict"]) == -1 and radius == 0
        else:
            assert r["cert"] == "abstain" and int(r["predict"]) == -1 and cohen == 0
    assert summary["abstain_rate"] == pytest.approx(np.mean([int(r["predict"]) == -1 for r in rows]))

    # the same command again resumes (nothing left to do); other VRS settings are refused
    again, _, rows2 = certify_run(vrs_ckpt, tmp_path)
    assert again["images_this_run"] == 0 and rows2 == rows
    with pytest.raises(VRSError, match="other settings"):
        certify_run(vrs_ckpt, tmp_path, "certify=vrs_c1", "certify.lam=0.25")


def test_a_vrs_certify_reads_the_checkpoint_once(vrs_ckpt, tmp_path, monkeypatch):
    """The config check before the run (vrs.config_schema, from Hydra's callback), the app and its shard all
    use one read of the file (vrs.checkpoint remembers it): one torch.load in the process."""
    from vrs.apps.certify import certify
    from vrs.config_schema import validate_config

    ckpt = tmp_path / "vrs.ckpt"
    ckpt.write_bytes(vrs_ckpt.read_bytes())  # a file this process has not read yet
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(1) or real_load(*a, **kw))
    cfg = compose_config(f"ckpt_path={ckpt}", *FAST, "certify.max=2", f"certify.out_dir={tmp_path / 'out'}",
                         config_name="certify", output_dir=tmp_path / "hydra")
    validate_config(cfg, "certify")
    assert certify(cfg)["num_images"] == 2 and len(calls) == 1


def test_c2_with_continuous_sigma(vrs_ckpt, tmp_path):
    summary, header, rows = certify_run(vrs_ckpt, tmp_path, "certify=vrs_c2", "certify.grid=null",
                                        "certify.lam=1.0")
    assert summary["certificate"] == "c2" and summary["lam"] == 1.0 and summary["selector"]["grid"] is None
    certs = {r["cert"] for r in rows}
    assert "c2" in certs and certs <= {"c2", "abstain", "sigma_undetermined"}
    for r in rows:
        assert float(r["sigma_lo"]) <= float(r["sigma_hi"])
        if r["cert"] == "c2":  # sigma0 lies in the interval, so C2 cannot beat Cohen at sigma0
            assert 0 <= float(r["radius"]) <= float(r["radius_cohen"]) + 1e-6
    # unsnapped sigma: not restricted to the grid
    assert any(float(r["sigma"]) not in (0.12, 0.25, 0.5, 1.0) for r in rows)


def test_fixed_sigma_cohen_on_the_same_base_classifier(vrs_ckpt, tmp_path):
    summary, header, rows = certify_run(vrs_ckpt, tmp_path, "certify.sigma=0.25")
    assert header == COLUMNS["certify"] and summary["sigma"] == 0.25 and "certificate" not in summary
    assert {r["sigma"] for r in rows} == {"0.25"}


def test_vrs_certify_bad_inputs(vrs_files, tmp_path):
    vrs_ckpt, base_ckpt = vrs_files
    with pytest.raises(VRSError, match="needs a VRS selector checkpoint"):
        certify_run(base_ckpt, tmp_path / "a", "certify=vrs_c1")
    with pytest.raises(ConfigError, match="certify.lam"):
        certify_run(vrs_ckpt, tmp_path / "b", "certify=vrs_c1", "certify.lam=1.5")
    with pytest.raises(ConfigError, match="certify.sigma"):
        certify_run(vrs_ckpt, tmp_path / "c", "certify=vrs_c1", "certify.sigma=0.5")
    with pytest.raises(VRSError, match="needs a sigma grid"):
        certify_run(vrs_ckpt, tmp_path / "d", "certify=vrs_c1", "certify.grid=null")
    with pytest.raises(ConfigError, match="certify.certificate"):
        certify_run(vrs_ckpt, tmp_path / "e", "certify=vrs_c1", "certify.certificate=c3")
    with pytest.raises(VRSError, match="different data set|trained on"):
        certify_run(vrs_ckpt, tmp_path / "f", "certify=vrs_c1", "data=synthetic", "data.channels=1",
                    "data.size=8", "data.mean=[0.3]", "data.std=[0.4]")


@pytest.mark.slow  # a vrs-certify multirun process
def test_lambda_sweep_with_multirun(vrs_ckpt, tmp_path):
    proc = run_app("certify", "-m", f"ckpt_path={vrs_ckpt}", *FAST[:-1], "certify.max=3", "certify=vrs_c1",
                   "certify.lam=0,1", root=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("outputs/certify/multiruns/*/*/summary.json"))]
    assert sorted(s["lam"] for s in summaries) == [0.0, 1.0]
    assert all(s["certificate"] == "c1" and s["num_images"] == 3 for s in summaries)


# ---- one pipeline: the deployed sigma and the certification shared by vrs-certify, attacks and training ----
def test_one_deployed_sigma_for_the_vrs_model_the_attack_and_certify(vrs_ckpt):
    """For the same generator state, VRSModel.sigma, the attack's defended model (vrs-attack's load_defense)
    and vrs-certify's sigma0 give the same sigma per image: they are one function (deployed_sigma)."""
    from conftest import compose_config as compose
    from vrs.apps.attack import load_defense
    from vrs.selection.certify import SELECTOR_SELECTION, VRSOptions, image_streams, selector_draws

    model = load_vrs(vrs_ckpt)
    med = model.median
    dm = datamodule()
    dm.setup()
    x = dm.splits["test"][0][:6].float() / 255
    n = med.n_h0
    keys = [image_seed(0, i) for i in range(len(x))]
    v = VRSOptions("c1", 0.5, med.n_h0, med.n_h, med.alpha_h, med.sigma_h, med.grid, med.batch_size,
                   model.sigma_min, model.sigma_max)
    certify_sigma = torch.from_numpy(selector_draws(model.selector, x, keys, v)[0])
    per_image = model.sigma(x, 0.5, n_h=n, generator=image_streams(keys, SELECTOR_SELECTION, x.device))
    assert torch.equal(per_image, certify_sigma)
    assert set(per_image.tolist()) <= set(med.grid)

    cfg = compose(f"ckpt_path={vrs_ckpt}", "data=digits", "defense.lam=0.5", f"defense.deployed_n_h={n}",
                  config_name="attack")
    defended = load_defense(cfg, torch.device("cpu"))[0]
    for j, key in enumerate(keys):  # one image at a time, the global RNG in the state of its certify stream
        torch.manual_seed(stream_seed(key, SELECTOR_SELECTION))
        attack_sigma = defended.defended_sigma(x[j : j + 1])
        torch.manual_seed(stream_seed(key, SELECTOR_SELECTION))
        vrs_sigma = model.sigma(x[j : j + 1], 0.5, n_h=n)
        assert float(attack_sigma) == pytest.approx(float(certify_sigma[j]), rel=1e-7)  # float32 of the same value
        assert float(vrs_sigma) == float(certify_sigma[j])
    torch.manual_seed(3)
    batch = defended.defended_sigma(x)
    torch.manual_seed(3)
    assert torch.equal(batch, model.sigma(x, 0.5, n_h=n).float())


def test_training_callback_certifies_exactly_like_vrs_certify(vrs_ckpt, tmp_path):
    """CertifiedRobustness on the SelectorModule of a VRS checkpoint and vrs-certify on that checkpoint, same
    images (the first 8 of the test split), seed and settings: identical rows."""
    from vrs.callbacks.robustness import CertifiedRobustness, defences
    from vrs.modules.selector import SelectorModule

    _, header, rows = certify_run(vrs_ckpt, tmp_path, "certify=vrs_c1", "certify.lam=0.25", "seed=3")
    module = SelectorModule.load_from_checkpoint(vrs_ckpt, map_location="cpu", base_ckpt="unused.ckpt").eval()
    dm = datamodule()
    dm.setup()
    x = dm.splits["test"][0][:8].float() / 255
    cb = CertifiedRobustness(num_images=8, n0=10, n=100, lams=[0.25], seed=3)
    (d,) = defences(module, None, [0.25])
    got = cb.certify_vrs(d, x)
    assert [r["idx"] for r in got] == [int(r["idx"]) for r in rows] == list(range(8))
    labels = dm.splits["test"][1][:8]
    for mine, app in zip(got, rows):  # the callback's row, written as vrs-certify writes rows, is the app's row
        label = int(labels[mine["idx"]])
        line = format_row("vrs", {**mine, "label": label, "correct": int(mine["predict"] == label), "time": 0.0})
        ours = dict(zip(header, line.rstrip("\n").split("\t")))
        assert {k: v for k, v in ours.items() if k != "time"} == {k: v for k, v in app.items() if k != "time"}
    assert "c1" in {r["cert"] for r in got}, "expected some certified images"


def test_too_few_selector_draws_warn_and_a_nan_selector_is_refused(vrs_ckpt, tmp_path, caplog):
    """certify.n_h so small that no interval closes: a warning, and every image is sigma_undetermined; a
    selector weight that is NaN: one error naming the checkpoint and the tensor."""
    import logging

    with caplog.at_level(logging.WARNING, logger="vrs.apps.certify"):
        _, _, rows = certify_run(vrs_ckpt, tmp_path / "few", "certify=vrs_c1", "certify.n_h=5", "certify.max=3")
    assert "certify.n_h=5 estimation draws cannot bound the selector's median" in caplog.text
    assert {r["cert"] for r in rows} <= {"sigma_undetermined", "abstain"} and "sigma_undetermined" in \
        {r["cert"] for r in rows}
    ckpt = torch.load(vrs_ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("selector.") and k.endswith("weight"))
    ckpt["state_dict"][key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan_selector.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(VRSError, match=f"checkpoint {bad} holds non-finite weights: {key} has 1 NaN"):
        certify_run(bad, tmp_path / "nan", "certify=vrs_c1")
    assert not (tmp_path / "nan").exists()
