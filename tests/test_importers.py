"""vrs-import (vrs.importers): published checkpoints of locuslab/smoothing, SmoothAdv, MACER, Consistency and SmoothMix.

Each test writes a small synthetic checkpoint the way the codebase's own code writes it: the same layer names and
nesting (Sequential(NormalizeLayer, network) -> `1.`; DataParallel -> `module.`; MACER's {"net", "epoch"}), random
weights and random BatchNorm statistics (so that a BatchNorm mapped onto the wrong layer changes the logits).
The reference networks below are written here from the codebases' descriptions (bearpaw's CIFAR ResNet as in
code/archs/cifar_resnet.py, torchvision's ResNet-50, MACER's model.py), with their normalisation layers keeping
the constants in plain attributes as the originals do. After the import, the network that vrs.checkpoint reads
must give the reference's logits on the same [0, 1] inputs: both in float64, |difference| <= 1e-9 * max|logit|.
Bad files and settings each give one clear error (in-process app runs: exit code 2, one `error:` line).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import compose_config
from conftest import call_main, one_error_line
from vrs.apps.importer import print_results
from vrs.apps.importer import run as import_run
from vrs.checkpoint import check_data_matches, load_base_classifier, load_checkpoint
from vrs.config_schema import validate_config
from vrs.preflight import data_spec
from vrs.errors import VRSError
from vrs.importers.codebases import ANCHOR_CONSTANTS

pytestmark = pytest.mark.usefixtures("one_thread")

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]  # code/datasets.py of the anchors
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOLERANCE = 1e-9  # relative to the largest |logit|, float64 on both sides


# ---- the reference networks, as the codebases build them --------------------------------------------------
class NormalizeLayer(nn.Module):
    """(x - mean) / sd with the constants as plain attributes (not in the state dict), as the anchors keep them."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        return (x - self.means.to(x).view(1, -1, 1, 1)) / self.sds.to(x).view(1, -1, 1, 1)


class InputCenterLayer(nn.Module):
    """x - mean (SmoothAdv's alternative)."""

    def __init__(self, means):
        super().__init__()
        self.means = torch.tensor(means)

    def forward(self, x):
        return x - self.means.to(x).view(1, -1, 1, 1)


class DataParallelLike(nn.Module):
    """What torch.nn.DataParallel adds to a state dict: the wrapped network under `module.`."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class RefBasicBlock(nn.Module):
    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + residual)


class RefBottleneck(nn.Module):
    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + residual)


def make_layer(block, expansion, cin, planes, blocks, stride):
    downsample = None
    if stride != 1 or cin != planes * expansion:
        downsample = nn.Sequential(nn.Conv2d(cin, planes * expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * expansion))
    layers = [block(cin, planes, stride, downsample)] + [block(planes * expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class RefCifarResNet(nn.Module):
    """bearpaw's CIFAR ResNet (locuslab/smoothing code/archs/cifar_resnet.py; MACER's model.py ResNet_Cifar has
    the same names): conv1, bn1, layer1..3 of BasicBlocks with downsample, AvgPool2d(8), fc."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True)
        self.layer1 = make_layer(RefBasicBlock, 1, 16, 16, n, 1)
        self.layer2 = make_layer(RefBasicBlock, 1, 16, 32, n, 2)
        self.layer3 = make_layer(RefBasicBlock, 1, 32, 64, n, 2)
        self.avgpool, self.fc = nn.AvgPool2d(8), nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


class RefResNet50(nn.Module):
    """torchvision's resnet50: 7x7 stem with max pooling, Bottlenecks [3, 4, 6, 3] (stride on conv2), fc."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = make_layer(RefBottleneck, 4, 64, 64, 3, 1)
        self.layer2 = make_layer(RefBottleneck, 4, 256, 128, 4, 2)
        self.layer3 = make_layer(RefBottleneck, 4, 512, 256, 6, 2)
        self.layer4 = make_layer(RefBottleneck, 4, 1024, 512, 3, 2)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics, scaled so that a deep network's logits stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


# ---- published files ------------------------------------------------------------------------------------
ARCH_NETS = {"cifar_resnet20": lambda: RefCifarResNet(20), "cifar_resnet110": lambda: RefCifarResNet(110),
             "resnet50": lambda: DataParallelLike(RefResNet50())}  # get_architecture wraps resnet50 in DataParallel
NORMALIZERS = {("cifar10", "standardize"): lambda: NormalizeLayer(CIFAR_MEAN, CIFAR_STD),
               ("cifar10", "center"): lambda: InputCenterLayer(CIFAR_MEAN),
               ("imagenet", "standardize"): lambda: NormalizeLayer(IMAGENET_MEAN, IMAGENET_STD),
               ("imagenet", "center"): lambda: InputCenterLayer(IMAGENET_MEAN)}


def published(fmt: str, arch: str, normalization: str = "standardize", seed: int = 0):
    """(reference model: [0,1] images -> logits, the checkpoint dict its codebase saves)."""
    if fmt == "macer":  # main.py: {'net': base_model.state_dict(), 'epoch'}; no normalisation, no wrapper
        net = randomize(RefCifarResNet(110), seed)
        return net, {"net": net.state_dict(), "epoch": 440}
    dataset = "imagenet" if arch == "resnet50" else "cifar10"
    model = nn.Sequential(NORMALIZERS[(dataset, normalization)](), randomize(ARCH_NETS[arch](), seed)).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, {"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}


def save(ckpt: dict, path: Path, legacy: bool = False) -> Path:
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)  # legacy: the format of PyTorch < 1.6
    return path


def import_file(src: Path, out: Path, fmt: str, sigma: float = 0.25, data: str = "cifar10", *extra: str) -> dict:
    cfg = compose_config(f"ckpt_path={src}", f"source.format={fmt}", f"source.sigma={sigma}", f"data={data}",
                         f"out_path={out}", *extra, config_name="import", output_dir=out.parent)
    return import_run(cfg)


def same_logits(reference: nn.Module, network: nn.Module, x: torch.Tensor) -> float:
    """max |difference| / max |logit| of the two networks in float64 on x."""
    with torch.no_grad():
        want = reference.double()(x.double())
        got = network.double()(x.double())
    assert got.shape == want.shape
    return float((got - want).abs().max() / want.abs().max())


CASES = [  # (format, arch, normalisation of the original, source.normalization passed)
    ("cohen", "cifar_resnet110", "standardize", None),
    ("smoothadv", "cifar_resnet20", "center", "center"),          # README: most cifar10/ models
    ("smoothadv", "cifar_resnet110", "standardize", "standardize"),  # README: finetune / self_training
    ("consistency", "cifar_resnet20", "standardize", None),        # the same code path as cohen's: ResNet-20 is
    ("smoothmix", "cifar_resnet20", "standardize", None),          # enough (their ResNet-110: cohen's test)
    ("macer", "cifar_resnet110", "none", None),
]


@pytest.mark.parametrize("fmt,arch,norm,given", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_the_imported_network_gives_the_original_logits(fmt, arch, norm, given, tmp_path):
    reference, ckpt = published(fmt, arch, norm, seed=len(fmt))
    src = save(ckpt, tmp_path / "checkpoint.pth.tar", legacy=fmt == "cohen")
    summary = import_file(src, tmp_path / "imported.ckpt", fmt, 0.25, "cifar10",
                          *([f"source.normalization={given}"] if given else []))
    loaded = load_checkpoint(tmp_path / "imported.ckpt")  # the reader of vrs-certify, vrs-attack, base_ckpt
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert same_logits(reference, loaded.network, x) <= TOLERANCE
    assert loaded.train_sigma == 0.25 and loaded.data["name"] == "cifar10" and loaded.num_classes == 10
    info = loaded.meta["imported"]
    assert info["format"] == fmt and info["normalization"] == norm and info["source_sha256"] == summary["source_sha256"]
    assert info["arch"] == (arch if fmt != "macer" else "resnet110")
    assert info["filled_counters"] == 0 and info["nesting_removed"] == ("" if fmt == "macer" else "1.")


def test_an_imagenet_resnet50_in_dataparallel_imports_with_its_constants(tmp_path):
    reference, ckpt = published("cohen", "resnet50", "standardize", seed=3)
    src = save(ckpt, tmp_path / "checkpoint.pth.tar")
    import_file(src, tmp_path / "imported.ckpt", "cohen", 0.5, "imagenet")
    loaded = load_checkpoint(tmp_path / "imported.ckpt")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # small inputs keep it fast
    assert same_logits(reference, loaded.network, x) <= TOLERANCE
    assert loaded.data == {"name": "imagenet", "channels": 3, "size": 224, "num_classes": 1000,
                           "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert loaded.meta["imported"]["nesting_removed"] == "1.module."


def test_counters_of_old_pytorch_and_an_outer_dataparallel_are_tolerated(tmp_path):
    """Files of PyTorch < 0.4.1 lack num_batches_tracked (set to 0: evaluation never reads it); a model saved
    inside one more DataParallel has `module.` before every key. Both import, and both are recorded."""
    reference, ckpt = published("consistency", "cifar_resnet20", seed=5)
    ckpt["state_dict"] = {f"module.{k}": v for k, v in ckpt["state_dict"].items() if "num_batches_tracked" not in k}
    import_file(save(ckpt, tmp_path / "c.pth.tar"), tmp_path / "imported.ckpt", "consistency")
    loaded = load_checkpoint(tmp_path / "imported.ckpt")
    assert same_logits(reference, loaded.network, torch.rand(2, 3, 32, 32)) <= TOLERANCE
    assert loaded.meta["imported"]["filled_counters"] == 9 * 2 + 2 + 1  # ResNet-20: 9 blocks of two BNs, two shortcuts, the stem
    assert loaded.meta["imported"]["nesting_removed"] == "module.1."


def test_every_app_accepts_an_imported_checkpoint(tmp_path):
    """The anchors' CIFAR-10 constants differ from data=cifar10's (0.2023 is not CIFAR-10's std): the network
    carries its own, so vrs-certify / vrs-attack's data check and VRS's base_ckpt accept it with data=cifar10;
    a certification runs on it."""
    _, ckpt = published("cohen", "cifar_resnet20", seed=7)
    out = tmp_path / "imported.ckpt"
    import_file(save(ckpt, tmp_path / "checkpoint.pth.tar"), out, "cohen", 0.5)
    for app, extra in (("certify", []), ("attack", ["attack=fgsm"])):
        cfg = compose_config(f"ckpt_path={out}", "data=cifar10", *extra, config_name=app, output_dir=tmp_path / app)
        validate_config(cfg, app)  # values, the checkpoint against the data config, output folders
    loaded = load_checkpoint(out)
    cifar = data_spec(compose_config("data=cifar10", config_name="certify").data)
    assert cifar["std"] != CIFAR_STD and loaded.data["std"] == CIFAR_STD
    check_data_matches(loaded, cifar)
    network, spec = load_base_classifier(out, expect_data=cifar)  # VRS's module.base_ckpt
    assert spec["noise"]["sigma"] == 0.5 and isinstance(network, nn.Module)
    from vrs.apps.certify import certify  # deferred: only this test runs a certification

    summary = certify(compose_config(f"ckpt_path={out}", "data=synthetic", "data.channels=3", "data.size=32",
                                     "data.num_classes=10", "certify.allow_other_dataset=true", "certify.n0=10",
                                     "certify.n=64", "certify.max=2", "certify.progress=false", "logger=none",
                                     "print_config=false", config_name="certify", output_dir=tmp_path / "cert"))
    assert summary["num_images"] == 2 and summary["sigma"] == 0.5


# ---- bad files: each one clear error ----------------------------------------------------------------------
def edited(fmt: str, arch: str, edit) -> dict:
    _, ckpt = published(fmt, arch)
    edit(ckpt)
    return ckpt


def _drop(key):
    return lambda c: c["state_dict"].pop(key)


def _put(key, value):
    return lambda c: c["state_dict"].__setitem__(key, value)


BAD_FILES = {
    "unknown arch": ("cohen", edited("cohen", "cifar_resnet20", lambda c: c.__setitem__("arch", "cifar_densenet40")),
                     "arch 'cifar_densenet40' is not one this project can import; known: cifar_resnet20, "
                     "cifar_resnet110, resnet50"),
    "imagenet32": ("smoothadv", edited("smoothadv", "cifar_resnet20", lambda c: c.__setitem__("arch", "imagenet32_resnet110")),
                   "arch 'imagenet32_resnet110' is not one this project can import"),
    "missing key": ("cohen", edited("cohen", "cifar_resnet20", _drop("1.layer3.2.bn2.running_var")),
                    "1 weight(s) of this project's resnet20 (conf/model/resnet20.yaml) are not in the file: "
                    "'layers.8.bn2.running_var'"),
    "extra key": ("cohen", edited("cohen", "cifar_resnet20", _put("1.layer4.0.conv1.weight", torch.zeros(1))),
                  "1 key(s) map onto no weight of this project's resnet20 (conf/model/resnet20.yaml): "
                  "'1.layer4.0.conv1.weight'"),
    "block past the stage": ("cohen", edited("cohen", "cifar_resnet20", _put("1.layer1.3.conv1.weight", torch.zeros(1))),
                             "map onto no weight of this project's resnet20"),
    "wrong shape": ("smoothmix", edited("smoothmix", "cifar_resnet20", _put("1.fc.weight", torch.zeros(100, 64))),
                    "1 weight(s) differ in shape from this project's resnet20 (conf/model/resnet20.yaml): "
                    "1.fc.weight (100, 64) there, head.2.weight (10, 64) here"),
    "depth 110 named 20": ("cohen", edited("cohen", "cifar_resnet110", lambda c: c.__setitem__("arch", "cifar_resnet20")),
                           "key(s) map onto no weight of this project's resnet20"),
    "no Sequential": ("cohen", edited("cohen", "cifar_resnet20", lambda c: c.__setitem__(
        "state_dict", {k[2:]: v for k, v in c["state_dict"].items()})),
        "key 'conv1.weight' is not nested as locuslab/smoothing nests its weights, under '1.'"),
    "mixed nesting": ("cohen", edited("cohen", "cifar_resnet20", lambda c: c["state_dict"].__setitem__(
        "module.1.fc.bias", c["state_dict"].pop("1.fc.bias"))), "its keys are nested in 2 different ways"),
    "normalisation buffers": ("consistency", edited("consistency", "cifar_resnet20",
                                                    _put("0.means", torch.tensor(CIFAR_MEAN))),
                              "key '0.means' is not nested as jh-jeong/smoothing-consistency nests its weights"),
    "non-tensor": ("cohen", edited("cohen", "cifar_resnet20", _put("1.extra", 3)), "holds non-tensor values ('1.extra')"),
    "NaN": ("cohen", edited("cohen", "cifar_resnet20", lambda c: c["state_dict"]["1.fc.bias"].fill_(float("nan"))),
            "holds non-finite weights: fc.bias has 10 NaN value(s)"),
    "MACER file as cohen": ("cohen", published("macer", "cifar_resnet110")[1],
                            "no 'state_dict' entry with the weights; locuslab/smoothing writes {'epoch', 'arch', "
                            "'state_dict', 'optimizer'} (code/train.py), this file holds ['epoch', 'net']"),
    "cohen file as MACER": ("macer", published("cohen", "cifar_resnet20")[1], "no 'net' entry with the weights"),
    "not a dict": ("cohen", [1, 2, 3], "not a checkpoint dict but a list"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_published_file_is_refused_with_one_clear_error(name, tmp_path):
    fmt, ckpt, expect = BAD_FILES[name]
    src = save(ckpt, tmp_path / "checkpoint.pth.tar")
    with pytest.raises(VRSError) as err:
        import_file(src, tmp_path / "imported.ckpt", fmt)
    assert expect in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "imported.ckpt").exists()


# ---- the app: bad settings and files from the command line (tests/test_fuzz.py's way) --------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("import")
    adv = root / "pretrained_models/cifar10/PGD_2steps/noise_0.25/checkpoint.pth.tar"  # SmoothAdv's release tree
    adv.parent.mkdir(parents=True)
    paths = {"root": root, "cohen": save(published("cohen", "cifar_resnet20")[1], root / "cohen.pth.tar"),
             # the arch alone decides the data set, checked before any weight is read
             "r50": save(edited("cohen", "cifar_resnet20", lambda c: c.__setitem__("arch", "resnet50")),
                         root / "r50.pth.tar"),
             "adv": save(published("smoothadv", "cifar_resnet20", "center")[1], adv),
             "garbage": root / "garbage.pth.tar", "existing": root / "existing.ckpt"}
    paths["garbage"].write_bytes(b"\x00not a checkpoint" * 32)
    paths["existing"].write_bytes(b"an earlier file\n")
    return paths


FUZZ = [  # (arguments, in the one error line)
    ("source.format=cohen", "source.sigma=None is not allowed: a number > 0"),
    ("source.format=cohn source.sigma=0.25", "source.format='cohn' is not allowed: one of cohen, smoothadv, macer, "
                                             "consistency, smoothmix"),
    ("source.format=cohen source.sigma=-1", "source.sigma=-1 is not allowed: a number > 0"),
    ("source.format=cohen source.sigma=0.25 source.normalization=zscore", "source.normalization='zscore' is not allowed"),
    ("source.format=cohen source.sigma=0.25 +source.arch=x", "source.arch='x' is not allowed"),
    ("source.format=cohen source.sigma=0.25 ckpt_path=null", "ckpt_path=None is not allowed: the path of a published"),
    ("source.format=cohen source.sigma=0.25 data=nope", "data='nope' is not allowed: one of cifar10"),
    ("source.format=cohen source.sigma=0.25 out_path={existing}", "out_path='{existing}' is not allowed: a path where "
                                                                 "nothing exists yet"),
    ("source.format=cohen source.sigma=0.25 ckpt_path={root}/missing.pth", "checkpoint not found: {root}/missing.pth"),
    ("source.format=cohen source.sigma=0.25 ckpt_path={garbage}", "cannot read checkpoint {garbage}: it is corrupt"),
    ("source.format=cohen source.sigma=0.25 ckpt_path={r50}", "arch 'resnet50' of locuslab/smoothing is a network for "
                                                             "data=imagenet, not data=cifar10: pass data=imagenet"),
    ("source.format=smoothadv source.sigma=0.25 ckpt_path={adv}", "does not record which: pass "
     "source.normalization=standardize ((x - mean) / std) or center (x - mean); its README maps folders like this one "
     "('cifar10/' in the path) to center"),
    ("source.format=cohen source.sigma=0.25 source.normalization=center",
     "source.normalization='center' contradicts locuslab/smoothing, whose code applies 'standardize'"),
]


@pytest.mark.parametrize("args,expect", FUZZ, ids=[a for a, _ in FUZZ])
def test_bad_settings_give_one_error_line_and_write_nothing(args, expect, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    fmt = {k: str(v) for k, v in files.items()}
    out = tmp_path / "out.ckpt"
    argv = [f"ckpt_path={files['cohen']}", f"out_path={out}", "data=cifar10", f"hydra.run.dir={tmp_path / 'run'}",
            *[a.format(**fmt) for a in args.split()]]
    before = files["existing"].read_bytes()
    line = one_error_line(*call_main("importer", argv, capsys))
    assert expect.format(**fmt) in line, line
    assert not out.exists() and files["existing"].read_bytes() == before


def test_the_app_writes_the_checkpoint_and_says_how_to_certify_it(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VRS_ROOT", str(tmp_path))
    out = tmp_path / "models" / "cohen_0.25.ckpt"
    code, err = call_main("importer", [f"ckpt_path={files['cohen']}", "source.format=cohen", "source.sigma=0.25",
                                       f"out_path={out}", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err[-3000:]
    summary = import_file(files["cohen"], tmp_path / "again.ckpt", "cohen")
    print_results(summary, None)
    stdout = capsys.readouterr().out
    assert f"vrs-certify ckpt_path={tmp_path / 'again.ckpt'} data=cifar10" in stdout
    assert "normalisation standardize" in stdout
    assert load_checkpoint(out).meta["imported"]["mean"] == list(ANCHOR_CONSTANTS["cifar10"][0])
    assert not list(out.parent.glob(".*"))  # no temporary file left beside it


def test_published_numbers_reads_cohens_certify_log(tmp_path):
    """scripts/published_numbers.py (docs/importing.md's table) on a log in the format of Cohen's certify.py:
    4 images, one abstention; certified accuracy and ACR by hand."""
    import runpy

    log = tmp_path / "sigma_0.25"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.6\t1\t0:00:14.1\n20\t7\t-1\t0.0\t0\t0:00:15.6\n"
                   "40\t4\t4\t0.3\t1\t0:00:15.7\n60\t7\t2\t0.9\t0\t0:00:15.8\n")
    row = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "published_numbers.py"))["row"]
    # r = 0: 2 of 4; r = 0.25: 2 (0.6, 0.3); r = 0.5: 1 (0.6); beyond: 0. ACR = (0.6 + 0.3) / 4; s.e. sqrt(.25/4)
    assert row(str(log)) == f"| {log} | 4 | 0.500 | 0.500 | 0.250 | 0.000 | 0.000 | 0.000 | 0.000 | 0.225 | 0.250 |"


def test_a_sigma_other_than_the_folder_says_is_a_warning(files, tmp_path, caplog):
    """The anchors' folders name the training sigma (noise_0.25): another source.sigma is allowed (it is the user's
    statement) but warned about."""
    with caplog.at_level("WARNING", logger="vrs.apps.importer"):
        import_file(files["adv"], tmp_path / "imported.ckpt", "smoothadv", 0.5, "cifar10", "source.normalization=center")
    assert "source.sigma=0.5, but the path says noise_0.25" in caplog.text
    assert load_checkpoint(tmp_path / "imported.ckpt").train_sigma == 0.5
