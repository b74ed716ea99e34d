"""What each published randomized-smoothing codebase writes, as read in its source (commit named per codebase).

All five save a checkpoint with `torch.save`; the four that descend from locuslab/smoothing write

    {"epoch": int, "arch": str, "state_dict": model.state_dict(), "optimizer": ...}

of `model = torch.nn.Sequential(NormalizeLayer, network)` (code/architectures.py, get_architecture), so the
network's weights sit under `1.`: `1.conv1.weight` for the CIFAR ResNets (code/archs/cifar_resnet.py, after
bearpaw/pytorch-classification), `1.module.conv1.weight` for ImageNet's torchvision ResNet-50, which
get_architecture wraps in DataParallel. Their NormalizeLayer (code/datasets.py) keeps the constants in plain
tensor attributes, not buffers: the file holds no normalisation at all, so it must come from the code.
RuntianZ/macer writes {"net": network.state_dict(), "epoch": int} (main.py) of model.py's resnet110, with no
normalisation (main.py feeds ToTensor() images straight to it) and no arch name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The anchors' normalisation constants (every one of the codebases below: code/datasets.py, _CIFAR10_MEAN /
# _CIFAR10_STDDEV and _IMAGENET_MEAN / _IMAGENET_STDDEV). CIFAR-10's "std" is not CIFAR-10's per-channel
# standard deviation (0.247, 0.243, 0.261): the published models were trained with these numbers, so these are
# the ones that reproduce them.
ANCHOR_CONSTANTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# How an input in [0, 1] reaches the network: (x - mean) / std (NormalizeLayer), x - mean (SmoothAdv's
# InputCenterLayer), or x itself (MACER).
NORMALIZATIONS = ("standardize", "center", "none")


@dataclass(frozen=True)
class Arch:
    """One `arch` name of a codebase: this project's network (conf/model/<model>.yaml), the data set it is built
    for (conf/data/<dataset>.yaml), and where the network's weights sit in the state dict."""

    model: str
    dataset: str
    prefix: str  # "1." = second module of Sequential(NormalizeLayer, network); "module." = DataParallel


@dataclass(frozen=True)
class Codebase:
    name: str                   # the value of source.format
    repository: str             # GitHub owner/name
    commit: str                 # the commit whose code this table was read from
    weights_key: str            # the checkpoint entry that holds the state dict
    archs: dict[str, Arch]      # arch name -> Arch; a file's `arch` entry names one (MACER: the only one)
    normalization: str | None   # what its code applies to every model; None: it differs between its models
    where: str                  # the code that applies it (provenance and error messages)
    arch_key: str | None = "arch"  # the entry that names the architecture (None: MACER, one network only)
    hints: tuple[tuple[str, str], ...] = field(default=())  # (path fragment, normalisation) from its README

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repository}/tree/{self.commit}"


_COHEN_ARCHS = {
    "cifar_resnet20": Arch("resnet20", "cifar10", "1."),
    "cifar_resnet110": Arch("resnet110", "cifar10", "1."),
    "resnet50": Arch("resnet50", "imagenet", "1.module."),
}
_STANDARDIZE = "code/datasets.py get_normalize_layer: NormalizeLayer(dataset mean, std) before every network"

CODEBASES: dict[str, Codebase] = {c.name: c for c in (
    Codebase("cohen", "locuslab/smoothing", "78a4d949e4f627d000a78908e001f8ca66c92943", "state_dict",
             _COHEN_ARCHS, "standardize", _STANDARDIZE),
    # ARCHITECTURES adds imagenet32_resnet110 (ImageNet 32x32: no data set of this project). Its README: the
    # published models used NormalizeLayer or InputCenterLayer (x - mean) depending on the folder, and
    # architectures.py switches between them by commenting a line, so the file alone cannot tell.
    Codebase("smoothadv", "Hadisalman/smoothing-adversarial", "cff781d53ed5fa7df6ba567d3b51df202b6ec14e",
             "state_dict", _COHEN_ARCHS, None,
             "code/architectures.py: get_normalize_layer (standardize) or get_input_center_layer (center), by model",
             hints=(("imagenet32", "standardize"), ("finetune_cifar_from_imagenet", "standardize"),
                    ("self_training", "standardize"), ("imagenet/", "center"), ("cifar10/", "center"))),
    Codebase("macer", "RuntianZ/macer", "1b6837fd51cc814531a5385613c614bad85c7dab", "net",
             {"resnet110": Arch("resnet110", "cifar10", "")}, "none",
             "main.py: transforms.ToTensor() only, and model.py's resnet110 has no normalisation layer",
             arch_key=None),
    # lenet and cifar_densenet40 are in its ARCHITECTURES too: no network of this project has their layout.
    Codebase("consistency", "jh-jeong/smoothing-consistency", "a11954aa91adb9924eecf49aaca74051e79bbb86",
             "state_dict", _COHEN_ARCHS, "standardize", _STANDARDIZE),
    Codebase("smoothmix", "jh-jeong/smoothmix", "cb1fd33055a29d0c41bbc429a982fdec709e993c", "state_dict",
             _COHEN_ARCHS, "standardize", _STANDARDIZE),
)}


def constants(normalization: str, dataset: str) -> tuple[list[float], list[float]]:
    """(mean, std) of the Normalize layer that computes `normalization` with the anchors' constants of `dataset`."""
    mean, std = ANCHOR_CONSTANTS[dataset]
    if normalization == "standardize":
        return list(mean), list(std)
    if normalization == "center":
        return list(mean), [1.0] * len(mean)
    return [0.0] * len(mean), [1.0] * len(mean)
