"""vrs.config_schema: every shipped config passes, bad values fail naming the key, the value and what is
allowed; checkpoints and output directories are checked before any compute; Hydra's own errors read as
one line. (tests/test_fuzz.py drives the same through the apps' entry points.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_config
from vrs.apps import CONFIG_DIR
from vrs.config.rules import integer, list_of, number, one_of, optional
from vrs.config_schema import check_values
from vrs.preflight import check_checkpoints, check_output_dirs, check_writable_dir
from vrs.errors import ConfigError, VRSError, describe_hydra_error

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = Path(CONFIG_DIR)


# ---- rules ------------------------------------------------------------------------------------------------
def test_rules_say_what_is_allowed():
    assert (integer(1).allowed, number(gt=0).allowed, number(gt=0, lt=1).allowed, number(ge=0, le=1).allowed) == (
        "an integer >= 1", "a number > 0", "a number in (0, 1)", "a number in [0, 1]")
    assert not integer(1).ok(True) and not integer(1).ok(1.0) and integer(1).ok(3)  # a bool is no integer
    assert not number(gt=0).ok(float("nan")) and not number(gt=0).ok(float("inf")) and not number(gt=0).ok("1")
    assert one_of("auto", True, False).ok(True) and not one_of("auto", True, False).ok(1)
    assert optional(integer(1), " (all)").allowed == "null (all) or an integer >= 1"
    distinct = list_of(integer(0), distinct=True)
    assert distinct.ok([0, 2]) and not distinct.ok([1, 1]) and not distinct.ok([]) and not distinct.ok([-1])


# ---- every shipped config passes -----------------------------------------------------------------------------
def _options(group: str) -> list[str]:
    return sorted(p.relative_to(CONF / group).with_suffix("").as_posix() for p in (CONF / group).rglob("*.yaml"))


TRAIN_EXPERIMENTS = [e for e in _options("experiment") if "/" not in e]
VALID = ([("train", [f"experiment={e}"]) for e in TRAIN_EXPERIMENTS]
         + [("train", ["data=digits", o]) for o in ("callbacks=robustness", "trainer=ddp")]
         + [("certify", ["ckpt_path=x.ckpt", f"certify={c}"]) for c in _options("certify")]
         + [("certify", ["ckpt_path=x.ckpt", f"experiment={e}"]) for e in _options("experiment") if e.startswith("certify/")]
         + [("attack", ["ckpt_path=x.ckpt", f"attack={a}"]) for a in _options("attack")]
         + [("attack", ["ckpt_path=x.ckpt", f"experiment={e}"]) for e in _options("experiment") if e.startswith("attack/")])


@pytest.mark.parametrize(("app", "overrides"), VALID, ids=[f"{a}:{' '.join(o)}" for a, o in VALID])
def test_shipped_configs_pass(app, overrides, tmp_path):
    check_values(compose_config(*overrides, config_name=app, output_dir=tmp_path), app)


def test_report_config_passes(tmp_path):
    check_values(compose_config(f"report.inputs=[{tmp_path}]", config_name="report", output_dir=tmp_path), "report")


# ---- bad values: ConfigError naming the key -----------------------------------------------------------------
BAD = [
    ("train", ["optimizer.lr=0"], "optimizer.lr", "a number > 0"),
    ("train", ["optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.momentum", "nesterov"),
    ("train", ["trainer.max_epochs=0"], "trainer.max_epochs", "an integer >= 1"),
    ("train", ["trainer.min_epochs=9", "trainer.max_epochs=3"], "trainer.min_epochs", "at most trainer.max_epochs (3)"),
    ("train", ["data=digits", "data.val_size=1497"], "data.val_size", "training split's size (1497)"),
    ("train", ["data.train_subset=0"], "data.train_subset", "null (all) or an integer >= 1"),
    ("train", ["data.batch_size=0"], "data.batch_size", "a positive integer"),  # the data module's own rule
    ("train", ["noise.sigma=-1"], "noise.sigma", "a number > 0"),
    ("train", ["noise=multi", "noise.sigma_min=0.5", "noise.sigma_max=0.5"], "noise.sigma_max", "> noise.sigma_min"),
    ("train", ["model.in_channels=3"], "model.in_channels", "data.channels (1)"),
    ("train", ["model.width=0"], "model.width", "an integer >= 1"),
    ("train", ["seed=-1"], "seed", "an integer >= 0"),
    ("train", ["+trainer.max_epoch=3"], "trainer.max_epoch", "a parameter of pytorch_lightning.Trainer"),
    ("train", ["logger=none"], "logger", "LearningRateMonitor"),
    ("train", ["experiment=vrs_smoke", "module.lam.dist=gamma"], "module.lam.dist", "one of"),
    ("train", ["experiment=vrs_smoke", "selector.sigma_min=2.0"], "selector.sigma_max", "> selector.sigma_min"),
    ("certify", ["certify.n0=0"], "certify.n0", "an integer >= 1"),
    ("certify", ["certify.n0=200", "certify.n=100"], "certify.n0", "at most certify.n=100"),
    ("certify", ["certify.alpha=1"], "certify.alpha", "strictly between 0 and 1"),
    ("certify", ["certify.indices=[3,3]"], "certify.indices", "without repeats"),
    ("certify", ["+certify.nn=5"], "certify.nn", "a key of certify"),
    ("certify", ["certify=vrs_c1", "certify.lam=1.5"], "certify.lam", "a number in [0, 1]"),
    ("certify", ["certify=vrs_c2", "certify.alpha_h=0"], "certify.alpha_h", "a number in (0, 1)"),
    ("certify", ["certify=vrs_c1", "certify.mode=predict"], "certify.mode", "certify with certify=vrs_c1"),
    ("certify", ["ckpt_path=null"], "ckpt_path", "the path of a vrs-train checkpoint"),
    ("attack", ["attack.eps=-0.5"], "attack.eps", ">= 0"),
    ("attack", ["attack=pgd_linf", "attack.eps=1.5"], "attack.eps", "at most 1"),
    ("attack", ["defense.m=0"], "defense.m", "an integer >= 1"),
    ("attack", ["predict.alpha=0"], "predict.alpha", "strictly between 0 and 1"),
    ("attack", ["device=tpu"], "device", "auto, cpu, cuda or cuda:<index>"),
    ("report", ["report.radii=[-1]"], "report.radii", "a number >= 0"),
    ("report", ["+report.colour=red"], "report.colour", "a key of report"),
]


@pytest.mark.parametrize(("app", "overrides", "key", "allowed"), BAD, ids=[f"{a}:{' '.join(o)}" for a, o, _, _ in BAD])
def test_bad_values_name_the_key(app, overrides, key, allowed, tmp_path):
    extra = {"certify": ["ckpt_path=x.ckpt"], "attack": ["ckpt_path=x.ckpt"], "report": [f"report.inputs=[{tmp_path}]"]}
    given = extra.get(app, []) + overrides
    cfg = compose_config(*given, config_name=app, output_dir=tmp_path / "out")
    with pytest.raises(ConfigError) as info:
        check_values(cfg, app)
    err = info.value
    assert err.key == key and allowed in err.allowed, str(err)
    assert str(err).startswith(f"{key}=") and "\n" not in str(err)
    assert not (tmp_path / "out").exists()


def test_missing_node_and_unresolvable_value(tmp_path):
    GlobalHydra.instance().clear()
    with pytest.raises(Exception) as info:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose("certify", overrides=["ckpt_path=x.ckpt", "~certify.n"])
    assert describe_hydra_error(info.value).startswith("certify.n cannot be deleted: every key of certify is needed")
    cfg = compose_config("noise.sigma=${nope}", output_dir=tmp_path)
    with pytest.raises(VRSError, match=r"^the config does not resolve at noise.sigma: "):
        check_values(cfg, "train")


@pytest.mark.parametrize(("app", "node", "option"), [
    ("certify", "certify", "certify=cohen"), ("certify", "certify", "certify=vrs_c2"), ("attack", "defense", None),
    ("attack", "predict", None), ("report", "report", None), ("train", "paths", None)])
def test_every_typed_node_is_its_yaml(app, node, option, tmp_path):
    """Each typed config (vrs.config) has exactly the keys its yaml files give (no key without a value, no value
    without a rule), and the shipped values pass its rules."""
    import dataclasses

    from vrs.config import is_typed, to_typed

    given = ([option] if option else []) + (["ckpt_path=x"] if app in ("certify", "attack") else [])
    cfg = compose_config(*given, config_name=app, output_dir=tmp_path)
    assert is_typed(cfg[node]), node
    fields = [f.name for f in dataclasses.fields(type(to_typed(cfg[node])))]
    assert list(cfg[node]) == fields, (node, set(cfg[node]) ^ set(fields))


def test_every_attack_option_holds_only_attack_config_keys():
    """The attack node is not typed by Hydra (each attack group option holds its own keys): every key of
    conf/attack.yaml's attack node and of every conf/attack/*.yaml is a field of AttackConfig."""
    import dataclasses

    from omegaconf import OmegaConf

    from vrs.config.attack import AttackConfig

    fields = {f.name for f in dataclasses.fields(AttackConfig)}
    assert set(OmegaConf.load(CONF / "attack.yaml").attack) <= fields
    for option in _options("attack"):
        assert set(OmegaConf.load(CONF / "attack" / f"{option}.yaml")) <= fields, option


def test_nodes_built_from_the_composed_config():
    """Checked.of: a closed node refuses a stray key, an open one leaves it to its target's signature; a key the
    node may leave out is ABSENT (no rule runs), one it must hold is named; Lightning's Trainer takes
    accumulate_grad_batches=0 and max_epochs=0 without a word (2.6), TrainerConfig does not."""
    from vrs.config.apps import ImportTop
    from vrs.config.rules import ABSENT
    from vrs.config.train import OptimizerConfig, TrainerConfig

    images = {"split": "test", "skip": 1, "max": None, "indices": None, "batch_size": 8, "world_size": 1,
              "out_dir": None}
    from vrs.config.attack import AttackConfig

    assert AttackConfig.of({**images, "name": "none", "norm": "l2", "eps": 0.0}).steps is ABSENT
    with pytest.raises(ConfigError, match=r"^attack.stpes=3 is not allowed: a key of attack: one of split, skip"):
        AttackConfig.of({**images, "name": "pgd_l2", "norm": "l2", "eps": 0.5, "stpes": 3})
    assert TrainerConfig.of({"max_epochs": 3, "accelerator": "cpu"}).given() == {"max_epochs": 3}
    for bad in ({"accumulate_grad_batches": 0}, {"max_epochs": 0}):
        with pytest.raises(ConfigError, match=rf"^trainer.{next(iter(bad))}=0 is not allowed: an integer >= 1"):
            TrainerConfig.of(bad)
    with pytest.raises(ConfigError, match=r"^optimizer.momentum=None is not allowed: a number > 0 with optimizer"):
        OptimizerConfig.of({"lr": 0.1, "nesterov": True})
    with pytest.raises(VRSError, match=r"^optimizer.lr is missing: the optimizer node needs it"):
        OptimizerConfig.of({"momentum": 0.9})
    with pytest.raises(VRSError, match=r"^out_path is missing"):
        ImportTop.of({"ckpt_path": "x.pth.tar"})


# ---- checkpoints ------------------------------------------------------------------------------------------------
def test_checkpoint_must_match_the_data_set(digits_ckpt, tmp_path):
    def check(*overrides, app="certify"):
        cfg = compose_config(f"ckpt_path={digits_ckpt}", *overrides, config_name=app, output_dir=tmp_path)
        check_checkpoints(check_values(cfg, app), app)

    check("data=digits")  # the data set it was trained on
    check("data=digits", app="attack")
    with pytest.raises(VRSError, match=r"^ckpt_path: checkpoint .* was trained on digits \(1x8x8, 10 classes\), but "
                                       r"data=synthetic gives synthetic \(3x32x32"):
        check("data=synthetic")
    with pytest.raises(VRSError, match=re.escape("was trained with other normalisation constants (mean [0.3] there, "
                                                 "[0.5] here)")):
        check("data=digits", "data.mean=[0.5]")
    check("data=digits", "data.mean=[0.5]", "certify.allow_other_dataset=true")  # the escape hatch
    with pytest.raises(VRSError, match=r"^ckpt_path: checkpoint not found: "):
        check("data=digits", f"ckpt_path={tmp_path}/nope.ckpt")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(digits_ckpt.read_bytes()[:1000])
    with pytest.raises(VRSError, match=r"corrupt or truncated"):
        check("data=digits", f"ckpt_path={broken}")


def test_resume_checkpoint_must_fit_the_run(digits_ckpt, tmp_path):
    """vrs-train ckpt_path=...: the network and the data must be the checkpoint's (vrs.checkpoint's rules)."""
    def check(*overrides):
        cfg = compose_config(f"ckpt_path={digits_ckpt}", *overrides, output_dir=tmp_path)
        check_checkpoints(check_values(cfg, "train"), "train")

    check("data=digits", "model.width=16", "model.hidden=64")  # the conftest run's settings
    with pytest.raises(VRSError, match=r"^ckpt_path=.* does not fit this run's network"):
        check("data=digits")  # other widths
    with pytest.raises(VRSError, match=r"^ckpt_path=.* was trained on other data"):
        check("data=synthetic", "data.channels=1", "data.size=8", "data.mean=[0.3]", "data.std=[0.4]",
              "model.width=16", "model.hidden=64")


# ---- output directories ------------------------------------------------------------------------------------------
def test_output_dir_checks(tmp_path):
    check_writable_dir("certify.out_dir", tmp_path / "a" / "b", min_free_mb=0)  # can be created: fine...
    assert list(tmp_path.iterdir()) == []  # ...and the check itself created nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^certify.out_dir='.*/file' is not allowed: a directory \(this is a file\)"):
        check_writable_dir("certify.out_dir", tmp_path / "file")
    with pytest.raises(ConfigError, match=r"cannot be created"):
        check_writable_dir("certify.out_dir", tmp_path / "file" / "sub")
    # "full": more free space asked for than the disk has (the same check a nearly full disk fails)
    with pytest.raises(ConfigError, match=r"is not allowed: a directory with at least 1e\+12 MB free "
                                          r"\(paths.min_free_mb\); .* has \d+ MB free"):
        check_writable_dir("paths.output_dir", tmp_path, min_free_mb=1e12)


def test_every_output_dir_of_an_app_is_checked(tmp_path):
    (tmp_path / "taken").write_text("x")
    cfg = compose_config("ckpt_path=x.ckpt", f"certify.out_dir={tmp_path}/taken", config_name="certify",
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        check_output_dirs(check_values(cfg, "certify"), "certify")
    assert info.value.key == "certify.out_dir"
    cfg = compose_config(config_name="train", output_dir=tmp_path / "taken")
    with pytest.raises(ConfigError) as info:
        check_output_dirs(check_values(cfg, "train"), "train")
    assert info.value.key == "paths.output_dir"


# ---- Hydra's own errors, one line each ---------------------------------------------------------------------------
HYDRA_ERRORS = [
    (["data=foo"], "data='foo' is not allowed: one of cifar10, cifar100, digits, fashion_mnist, imagenet, mnist, synthetic"),
    (["noise.sgima=0.3"], "noise.sgima=0.3 is not allowed: a key of noise: one of _target_, sigma (to add a new "
                          "key write +noise.sgima=0.3)"),
    (["+foo=[1"], "cannot parse the override '+foo=[1': no viable alternative at input '[1'"),
    (["trainer"], "cannot parse the override 'trainer': Error parsing override 'trainer'; missing EQUAL"),
]


@pytest.mark.parametrize(("overrides", "line"), HYDRA_ERRORS, ids=[" ".join(o) for o, _ in HYDRA_ERRORS])
def test_hydra_errors_read_as_one_line(overrides, line):
    GlobalHydra.instance().clear()
    with pytest.raises(Exception) as info:  # whatever Hydra raises
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose("train", overrides=overrides)
    text = describe_hydra_error(info.value)
    assert text.startswith(line) and "\n" not in text, text

