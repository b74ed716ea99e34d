"""Every option of every config group of vrs-train composes (and instantiates where that is cheap);
unknown options and bad values give clean errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from vrs.apps import CONFIG_DIR
from vrs.errors import ConfigError, VRSError, find_user_error
from vrs.utils.config import instantiate_dict, print_config_tree

CONF = Path(CONFIG_DIR)
# The groups of conf/train.yaml's defaults list; every yaml file in them is an option and is tested below.
TRAIN_GROUPS = [next(iter(d)) for d in OmegaConf.load(CONF / "train.yaml").defaults if not isinstance(d, str)]
# Options (or whole groups) that only compose together with others: VRS's selector stage.
COMPANIONS = {"module=selector": ["selector=cnn", "prior=gaussian"],
              "selector": ["module=selector", "prior=gaussian"], "prior": ["module=selector", "selector=cnn"]}


def companions(group: str, option: str) -> list[str]:
    return COMPANIONS.get(f"{group}={option}", COMPANIONS.get(group, []))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in TRAIN_GROUPS for o in options(g)]


def test_every_train_group_has_options():
    assert set(TRAIN_GROUPS) >= {"data", "model", "noise", "module", "optimizer", "scheduler", "trainer", "callbacks",
                                 "logger", "paths", "hydra", "experiment", "hparams_search", "debug"}
    assert {g for g, _ in ALL_OPTIONS} == set(TRAIN_GROUPS)
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic"} <= set(options("data"))
    assert {"lenet", "mlp", "resnet20", "resnet56", "resnet110", "wrn"} <= set(options("model"))
    assert {"fixed", "multi"} <= set(options("noise"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"csv", "wandb", "tensorboard"} <= set(options("logger"))


def test_defaults():
    cfg = compose_config()
    assert cfg.data.name == "fashion_mnist" and cfg.model._target_.endswith("LeNet")
    assert cfg.noise.sigma == 0.25 and cfg.module.net == cfg.model
    # the model takes its input shape from the data config
    assert (cfg.model.in_channels, cfg.model.input_size, cfg.model.num_classes) == (1, 28, 10)
    assert cfg.optimized_metric == "val/acc"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_config(f"{group}={option}", *companions(group, option), output_dir=tmp_path)
    # Everything but Hydra's own run-time interpolations resolves.
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["data"]["name"] and container["model"]["_target_"]
    if group == "data":
        assert cfg.data.name == option
        assert (cfg.model.in_channels, cfg.model.input_size, cfg.model.num_classes) == (
            cfg.data.channels, cfg.data.size, cfg.data.num_classes)


def _dm(cfg):
    dm = instantiate(cfg.data)
    assert dm.spec.name == cfg.data.name and len(dm.spec.mean) == dm.spec.channels
    return dm


@pytest.mark.parametrize("option", options("data"))
def test_data_option_instantiates(option, tmp_path):
    dm = _dm(compose_config(f"data={option}", output_dir=tmp_path))
    if option in ("digits", "synthetic"):  # no files needed: load and check one batch
        dm.setup()
        x, y = next(iter(dm.train_dataloader()))
        assert x.dtype == torch.uint8 and x.shape[1:] == (dm.spec.channels, dm.spec.size, dm.spec.size)
        assert int(y.max()) < dm.spec.num_classes


# Each model with the data set it is meant for (its input shape comes from the data config).
MODEL_DATA = [("lenet", "fashion_mnist"), ("lenet", "digits"), ("resnet20", "cifar10"), ("resnet56", "cifar100"),
              ("resnet110", "cifar10"), ("wrn", "cifar10"), ("resnet20", "fashion_mnist"), ("mlp", "fashion_mnist"),
              ("mlp", "digits")]


@pytest.mark.parametrize(("model", "data"), MODEL_DATA, ids=[f"{m}-{d}" for m, d in MODEL_DATA])
def test_model_builds_and_runs(model, data, tmp_path):
    overrides = [f"model={model}", f"data={data}"]
    if model == "wrn":  # WRN-28-10 has 36M parameters: a narrower one checks the same code quickly
        overrides += ["model.depth=16", "model.widen_factor=2"]
    cfg = compose_config(*overrides, output_dir=tmp_path)
    module = instantiate(cfg.module, data=_dm(cfg).spec.to_dict())
    x = torch.rand(2, cfg.data.channels, cfg.data.size, cfg.data.size)
    module.eval()
    with torch.no_grad():
        logits = module(x)
    assert logits.shape == (2, cfg.data.num_classes) and torch.isfinite(logits).all()
    # normalisation is the network's first layer, with the data set's constants
    norm = module.net[0]
    assert torch.allclose(norm.mean.flatten(), torch.tensor(list(cfg.data.mean)))
    assert torch.allclose(norm.std.flatten(), torch.tensor(list(cfg.data.std)))


def test_resnet_depths(tmp_path):
    for depth in (20, 56, 110):
        cfg = compose_config(f"model=resnet{depth}", "data=cifar10", output_dir=tmp_path)
        net = instantiate(cfg.model)
        convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())
        assert convs + 1 == depth  # 6n+2 layers = 3x3 convs + the final linear layer


# Each noise, optimizer and scheduler option at least once (composing is ~0.3 s, so not all 12 combinations).
MODULE_COMBOS = [("fixed", "sgd", "cosine"), ("multi", "adamw", "step"), ("fixed", "adamw", "none"),
                 ("fixed", "sgd", "multistep")]


def test_module_combos_cover_all_options():
    for i, group in enumerate(("noise", "optimizer", "scheduler")):
        assert {c[i] for c in MODULE_COMBOS} == set(options(group))


@pytest.mark.parametrize(("noise", "optimizer", "scheduler"), MODULE_COMBOS, ids="-".join)
def test_module_optimizer_scheduler(noise, optimizer, scheduler, tmp_path):
    cfg = compose_config("data=digits", f"noise={noise}", f"optimizer={optimizer}", f"scheduler={scheduler}",
                         output_dir=tmp_path)
    module = instantiate(cfg.module, data=_dm(cfg).spec.to_dict())
    trainer = pl.Trainer(max_epochs=7, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    module.trainer = trainer
    out = module.configure_optimizers()
    opt = out["optimizer"] if isinstance(out, dict) else out
    assert type(opt).__name__.lower() == optimizer
    assert opt.defaults["lr"] == cfg.optimizer.lr
    if scheduler == "none":
        assert not isinstance(out, dict)
    else:
        sched = out["lr_scheduler"]["scheduler"]
        assert out["lr_scheduler"]["interval"] == "epoch"
        if scheduler == "cosine":
            assert sched.T_max == 7  # null T_max = the number of epochs
        elif scheduler == "multistep":
            assert sorted(sched.milestones) == [200, 400] and sched.gamma == 0.1
        else:
            assert sched.step_size == 30 and sched.gamma == 0.1
    sigmas = module.noise(1000)
    assert sigmas.shape == (1000,) and (sigmas > 0).all()


@pytest.mark.parametrize("trainer", ["cpu", "default"])
def test_trainer_callbacks_loggers_instantiate(trainer, tmp_path):
    cfg = compose_config(f"trainer={trainer}", "logger=many", output_dir=tmp_path)
    callbacks = instantiate_dict(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    assert {"ModelCheckpoint", "RichProgressBar", "LearningRateMonitor"} <= names
    loggers = instantiate_dict(compose_config("logger=tensorboard", output_dir=tmp_path).logger)
    loggers += instantiate_dict(compose_config("logger=csv", output_dir=tmp_path).logger)
    t = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert t.max_epochs == cfg.trainer.max_epochs
    assert t.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")
    assert {type(lg).__name__ for lg in t.loggers} == {"TensorBoardLogger", "CSVLogger"}
    assert all(Path(lg.log_dir).is_relative_to(tmp_path) for lg in t.loggers)


def test_gpu_and_ddp_trainer_configs():
    gpu = compose_config("trainer=gpu").trainer
    assert (gpu.accelerator, gpu.precision) == ("gpu", "bf16-mixed")
    ddp = compose_config("trainer=ddp").trainer
    assert (ddp.strategy, ddp.devices, ddp.sync_batchnorm) == ("ddp", 2, True)


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_hydra_launcher_options(launcher):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")


def test_experiments():
    c = compose_config("experiment=cohen_cifar10")
    assert (c.data.name, c.model.depth, c.trainer.max_epochs, c.trainer.accelerator) == ("cifar10", 110, 90, "gpu")
    assert c.scheduler._target_.endswith("StepLR") and c.optimizer.lr == 0.1 and c.data.batch_size == 256
    c = compose_config("experiment=multi_fmnist")
    assert c.noise._target_.endswith("LogUniformSigma") and (c.noise.sigma_min, c.noise.sigma_max) == (0.12, 1.0)
    c = compose_config("experiment=smoke")
    assert (c.trainer.accelerator, c.trainer.max_epochs, c.data.train_subset) == ("cpu", 1, 2048)
    # an experiment is a delta: command-line overrides still win
    c = compose_config("experiment=cohen_fmnist", "noise.sigma=0.5", "trainer.max_epochs=3")
    assert (c.noise.sigma, c.trainer.max_epochs, c.task_name) == (0.5, 3, "cohen_fmnist")


def test_hparams_search_optuna():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/acc" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) >= {"optimizer.lr", "data.batch_size"}


def test_print_config_tree(capsys, tmp_path):
    print_config_tree(compose_config("data=digits", output_dir=tmp_path), order=("data", "model"))
    out = capsys.readouterr().out
    assert out.index("data") < out.index("model") < out.index("trainer")
    assert "name: digits" in out and "sigma: 0.25" in out


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["data=foo", "model=resnet7", "noise=gaussian", "experiment=nope"])
def test_unknown_group_option(override):
    group = override.split("=")[0]
    with pytest.raises(MissingConfigException) as info:
        compose_config(override)
    msg = str(info.value)
    assert f"Could not find '{override.replace('=', '/')}'" in msg
    for option in options(group):  # the message lists what is allowed
        assert option in msg


BAD_VALUES = [
    (["noise.sigma=0"], "noise.sigma"),
    (["noise.sigma=-0.5"], "noise.sigma"),
    (["noise.sigma=abc"], "noise.sigma"),
    (["noise=multi", "noise.sigma_min=0.5", "noise.sigma_max=0.25"], "noise.sigma_max"),
    (["noise=multi", "noise.sigma_min=0"], "noise.sigma_min"),
    (["model=resnet20", "model.depth=21"], "model.depth"),
    (["model=wrn", "model.depth=28", "model.widen_factor=0"], "model.widen_factor"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_module_values(overrides, key, tmp_path):
    cfg = compose_config("data=digits", *overrides, output_dir=tmp_path)
    with pytest.raises(InstantiationException) as info:  # Hydra wraps the error once per level...
        instantiate(cfg.module, data=_dm(cfg).spec.to_dict())
    err = find_user_error(info.value)  # ...and the app unwraps it to one line
    assert isinstance(err, ConfigError) and err.key == key
    assert str(err).startswith(f"{key}=") and "is not allowed: " in str(err)


BAD_DATA = [
    (["data.loader=gpu"], "data.loader"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.val_size=-1"], "data.val_size"),
    (["data.mean=[0.1,0.2]"], "data.mean/data.std"),
    (["data.std=[0.0]"], "data.std"),
    (["data.crop_padding=-2"], "data.crop_padding"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_DATA, ids=[" ".join(o) for o, _ in BAD_DATA])
def test_bad_data_values(overrides, key, tmp_path):
    cfg = compose_config("data=digits", *overrides, output_dir=tmp_path)
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.data)
    err = find_user_error(info.value)
    assert isinstance(err, ConfigError) and err.key == key


def test_data_shape_mismatch_is_a_user_error(tmp_path):
    dm = _dm(compose_config("data=digits", "data.size=28", output_dir=tmp_path))
    with pytest.raises(VRSError, match=r"data.size"):
        dm.setup()
    dm = _dm(compose_config("data=digits", "data.val_size=5000", output_dir=tmp_path))
    with pytest.raises(VRSError, match=r"data.val_size=5000 leaves no training images"):
        dm.setup()
