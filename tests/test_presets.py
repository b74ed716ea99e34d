"""Experiment presets (conf/experiment/): each composes for the app it is meant for, is documented in one
line (its yaml header and the README's preset table), and its smoke variant runs.

Which app: conf/experiment/*.yaml are vrs-train presets, conf/experiment/certify/*.yaml vrs-certify presets
(`experiment=certify/<name>`), conf/experiment/attack/*.yaml vrs-attack presets.
Smoke variant (README, "Experiment presets"): a training preset plus `debug=smoke` keeps the preset's model,
noise, module and schedule and shrinks data and loops; a certify / attack preset plus SMOKE[app] shrinks the
sample sizes, run on the smoke checkpoint of the training preset of the same name. Data sets that are not on
this machine (MNIST, CIFAR-10: no download here) are replaced by a few images written in their official file
format (data.root=...), so the preset's data config, shape, augmentation and normalisation stay as they are.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FASHION_MNIST_DIR, QUIET, REPO_ROOT, compose_config
from vrs.apps import CONFIG_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

PRESET_DIR = Path(CONFIG_DIR) / "experiment"
APPS = {"train": PRESET_DIR, "certify": PRESET_DIR / "certify", "attack": PRESET_DIR / "attack"}
PRESETS = [(app, ("" if app == "train" else f"{app}/") + p.stem) for app, d in APPS.items()
           for p in sorted(d.glob("*.yaml"))]

# The smoke variant of a certify / attack preset (a training preset's is debug=smoke); VRS_CERTIFY_SMOKE also
# shrinks the selector's median smoothing (certify=vrs_c1 / vrs_c2 presets).
SMOKE = {"certify": ["certify.n0=10", "certify.n=50", "certify.max=2", "certify.progress=false"],
         "attack": ["attack.max=2", "attack.batch_size=2", "attack.eps=[0.5]", "attack.steps=1", "attack.eot=1",
                    "defense.m=2", "defense.n_h=2", "defense.deployed_n_h=8", "predict.n=20"]}
VRS_CERTIFY_SMOKE = ["certify.n_h0=8", "certify.n_h=32"]


def header(path: Path) -> list[str]:
    """The comment lines after `# @package _global_`, up to the first config line."""
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_", path
    out = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        out.append(line)
    return out


def preset_cfg(app: str, name: str, *overrides: str, output_dir: Path | None = None):
    return compose_config(f"experiment={name}", *overrides, config_name=app, output_dir=output_dir)


# ---- compose and document ----------------------------------------------------------------------------------
def test_the_expected_presets_exist():
    names = {n for _, n in PRESETS}
    assert {"cohen_fmnist", "cohen_mnist", "cohen_cifar10", "vrs_fmnist", "vrs_mnist", "vrs_cifar10",
            "certify/cohen_cifar10", "certify/vrs_cifar10", "attack/cohen_cifar10", "attack/vrs_cifar10"} <= names


@pytest.mark.parametrize(("app", "name"), PRESETS, ids=[n for _, n in PRESETS])
def test_preset_composes_and_is_documented_in_one_line(app, name):
    cfg = preset_cfg(app, name, *([] if app == "train" else ["ckpt_path=x.ckpt"]))
    # its runs form one experiment: outputs/<task_name>/ and the W&B group carry the preset's name
    assert cfg.task_name == name.split("/")[-1]
    description = header(APPS[app] / f"{name.split('/')[-1]}.yaml")[0]  # the first line says what it is
    assert len(description) > 20, description
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"| `experiment={name}` |" in readme, f"README's preset table has no row for experiment={name}"


def test_paper_settings_of_the_cifar10_presets():
    train = preset_cfg("train", "vrs_cifar10")
    assert train.data.name == "cifar10" and train.model.depth == 110 and train.selector.net.depth == 20
    assert (train.noise.sigma_min, train.noise.sigma_max) == (0.12, 1.0)
    assert (train.selector.sigma_min, train.selector.sigma_max) == (0.12, 1.0)
    assert train.base_stage.trainer.max_epochs == 90 and train.scheduler.step_size == 30
    assert train.base_stage.optimizer.lr == 0.1 and train.data.batch_size == 256
    for name in ("certify/vrs_cifar10", "certify/cohen_cifar10"):
        c = preset_cfg("certify", name, "ckpt_path=x.ckpt").certify
        assert (c.n, c.n0, c.alpha, c.skip, c.split) == (100_000, 100, 0.001, 20, "test")  # 500 of 10,000 images
    assert preset_cfg("certify", "certify/vrs_cifar10", "ckpt_path=x.ckpt").certify.certificate == "c1"
    cohen = preset_cfg("train", "cohen_cifar10")
    assert cohen.model.depth == 110 and cohen.trainer.max_epochs == 90 and cohen.noise.sigma == 0.25


def test_debug_smoke_keeps_what_the_preset_chose():
    """debug=smoke changes sizes and loops only: model, noise, module, optimizer and schedule stay."""
    for name in ("vrs_cifar10", "cohen_cifar10", "vrs_fmnist"):
        full, smoke = preset_cfg("train", name), preset_cfg("train", name, "debug=smoke")
        for key in ("model", "noise", "module", "optimizer", "scheduler", "selector", "prior"):
            assert full.get(key) == smoke.get(key), (name, key)
        assert smoke.trainer.accelerator == "cpu" and smoke.trainer.limit_train_batches == 2


# ---- smoke variants run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data_roots(tmp_path_factory) -> dict[str, list[str]]:
    """data.root overrides for data sets that are not on this machine: a few images in the official format."""
    from test_data import write_cifar10, write_mnist_folder

    root = tmp_path_factory.mktemp("tiny_data")
    write_mnist_folder(root / "mnist", n_train=96, n_test=32)
    write_cifar10(root, per_batch=20, n_test=40)
    small = "data.val_size=8"  # the preset's 5,000 validation images would leave no training images
    write_class_folders(root / "imagenet", 1000, images={"train": 30, "val": 101})
    roots = {"mnist": [f"data.root={root / 'mnist'}", small], "cifar10": [f"data.root={root}", small],
             # ImageNet: the 1000 class folders, a few 8x8 JPEGs, read at 64x64 instead of 224x224 (ResNet-50 on a
             # CPU: 12x less compute; the preset's transforms, classes and normalisation stay)
             "imagenet": [f"data.root={root / 'imagenet'}", small, "data.size=64", "data.resize=73",
                          "data.num_workers=0"]}
    if not FASHION_MNIST_DIR.is_dir():  # CI installs Debian's copy; elsewhere, stand-in files of the same format
        write_mnist_folder(root / "fashion-mnist", n_train=96, n_test=32)
        roots["fashion_mnist"] = [f"data.root={root / 'fashion-mnist'}", small]
    return roots


def write_class_folders(root: Path, classes: int, images: dict[str, int]) -> None:
    """The class-folder layout of data=imagenet: <root>/train/c0000 ... (all `classes` folders), one 8x8 JPEG in
    each of the first images["train"]; <root>/val/ with one in each of the first images["val"] classes."""
    from PIL import Image

    for split, n in images.items():
        for c in range(classes if split == "train" else n):
            folder = root / split / f"c{c:04d}"
            folder.mkdir(parents=True)
            if c < n:
                Image.new("RGB", (8, 8), (c % 256, 40, 99)).save(folder / "0.JPEG")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, tiny_data_roots):
    """smoke_runs(name) -> (run dir, metrics) of `vrs-train experiment=<name> debug=smoke`, trained once."""
    from vrs.apps.train import run

    done: dict[str, tuple[Path, dict]] = {}

    def get(name: str):
        if name not in done:
            data = OmegaConf.select(preset_cfg("train", name), "data.name")
            out = tmp_path_factory.mktemp(f"smoke_{name}")
            cfg = preset_cfg("train", name, "debug=smoke", *QUIET, "logger=csv", *tiny_data_roots.get(data, []),
                             output_dir=out)
            done[name] = (out, run(cfg))
        return done[name]

    return get


TRAIN_PRESETS = [n for app, n in PRESETS if app == "train"]


@pytest.mark.parametrize("name", TRAIN_PRESETS)
def test_training_preset_smoke_variant_runs(name, smoke_runs):
    out, metrics = smoke_runs(name)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert math.isfinite(metrics["val/acc"]) and 0 <= metrics["val/acc"] <= 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    full = preset_cfg("train", name)
    if str(full.module._target_).endswith("SelectorModule"):  # VRS: both stages ran, stage 1 into base/
        assert ckpt["vrs"]["kind"] == "vrs" and (out / "base" / "checkpoints" / "last.ckpt").is_file()
        base_model = torch.load(out / "base" / "checkpoints" / "last.ckpt", map_location="cpu",
                                weights_only=False)["hyper_parameters"]["net"]
    else:
        base_model = ckpt["hyper_parameters"]["net"]
    assert base_model["_target_"] == full.model._target_ and base_model.get("depth") == full.model.get("depth")


@pytest.mark.parametrize("app,name", [(a, n) for a, n in PRESETS if a != "train"], ids=lambda v: v)
def test_certify_and_attack_preset_smoke_variant_runs(app, name, smoke_runs, tiny_data_roots, tmp_path):
    """On the smoke checkpoint of the training preset of the same name (certify/vrs_cifar10 <- vrs_cifar10)."""
    train_dir, _ = smoke_runs(name.split("/")[-1])
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    data = preset_cfg(app, name, "ckpt_path=x.ckpt").data.name
    vrs = "certificate" in preset_cfg(app, name, "ckpt_path=x.ckpt").get("certify", {})
    smoke = SMOKE[app] + (VRS_CERTIFY_SMOKE if vrs else [])
    cfg = preset_cfg(app, name, f"ckpt_path={ckpt}", "print_config=false", "logger=csv", *smoke,
                     *tiny_data_roots.get(data, []), output_dir=tmp_path)
    if app == "certify":
        from vrs.apps.certify import certify

        summary = certify(cfg)
        skip = cfg.certify.skip  # the preset's: 20 of CIFAR-10's test images, 100 of ImageNet's val/
        assert summary["num_images"] == 2 and summary["subset"]["skip"] == skip and summary["data"] == data
        assert summary["subset"]["first"] == 0 and summary["subset"]["last"] == skip
        assert (tmp_path / "certify.tsv").is_file() and 0 <= summary["acr"]
    else:
        from vrs.apps.attack import run

        summary = run(cfg)
        assert summary["subset"]["count"] == 2 and summary["subset"]["skip"] == 20 and summary["complete"]
        assert summary["attack"] == cfg.attack.name and summary["norm"] == "l2"
        assert ("lam" in summary["defense"]) == name.endswith("vrs_cifar10")


# ---- the container the presets run in (no Docker daemon here: the compose file is checked as data) ---------------
def test_docker_compose_mounts_data_and_outputs_and_passes_the_wandb_key():
    import yaml

    compose_file = REPO_ROOT / "docker" / "compose.yaml"
    service = yaml.safe_load(compose_file.read_text())["services"]["vrs"]
    context = (compose_file.parent / service["build"]["context"]).resolve()
    assert context == REPO_ROOT.resolve() and (context / service["build"]["dockerfile"]).is_file()
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in service["volumes"]}
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    # where the image looks for data and writes outputs (VRS_DATA_DIR, VRS_ROOT/outputs) is what is mounted
    assert set(mounts) == {"/data", "/app/outputs"}
    assert "VRS_DATA_DIR=/data" in dockerfile and "VRS_ROOT=/app" in dockerfile
    assert mounts["/data"].endswith(":-../data}") and mounts["/app/outputs"].endswith(":-../outputs}")
    assert "WANDB_API_KEY" in service["environment"]  # passed through from the caller's shell, never stored
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
