"""A published checkpoint (vrs.importers.codebases) -> a checkpoint of this project, refusing what it cannot map.

    published = read_published(path, "cohen")            # the file, its arch, the network's weights
    norm = resolve_normalization(published, None)         # what its code applied before the network
    ckpt = imported_checkpoint(published, net_cfg, data, sigma, norm)   # torch.save(ckpt, out) -> vrs-certify

Nothing is guessed: a key that does not map, a weight missing or of another shape, an unknown `arch`, a
nesting other than the codebase's and a normalisation the codebase does not fix are each one VRSError. The only
entries allowed to be absent are BatchNorm's `num_batches_tracked` counters (PyTorch < 0.4.1 did not save them;
evaluation never reads them); they are set to 0 and counted in the provenance.

The weights map name by name: the ResNets of all five codebases (bearpaw's CIFAR ResNet, torchvision's
ResNet-50, MACER's ResNet_Cifar) name their parts conv1 / bn1 / layer<k>.<i> / downsample / fc, and this project's
CIFAR and ImageNet ResNets (vrs.models.resnet) stem / layers / shortcut / head, with the same blocks in the same
order; `stage_blocks` on the network tells where each stage starts in `layers`.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from vrs.checkpoint import FORMATS, check_finite_weights
from vrs.errors import VRSError, check_choice, first_line
from vrs.importers.codebases import CODEBASES, NORMALIZATIONS, Arch, Codebase, constants
from vrs.models import build_network

_MODULE = "module."  # what DataParallel / DistributedDataParallel put before every key
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_OPTIONAL = "num_batches_tracked"


@dataclass
class Published:
    """A published checkpoint as read: the network's weights without the codebase's nesting."""

    path: Path
    sha256: str
    codebase: Codebase
    arch_name: str
    arch: Arch
    weights: dict[str, torch.Tensor]   # keys as the original network names them (conv1.weight, layer1.0...)
    prefix: str                        # the nesting removed from every key
    epoch: int | None = None
    extra_keys: list[str] = field(default_factory=list)  # the file's other entries (optimizer, ...), not imported


def _show(keys, most: int = 4) -> str:
    keys = list(keys)
    return ", ".join(repr(k) for k in keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def read_published(path: str | Path, fmt: str) -> Published:
    """The checkpoint at `path`, written by the codebase `fmt` (vrs.importers.codebases.CODEBASES); VRSError when it
    is not such a file, names an arch this project has no network for, or nests its weights otherwise."""
    check_choice("source.format", fmt, CODEBASES)
    codebase = CODEBASES[fmt]
    path = Path(path)
    if not path.is_file():
        raise VRSError(f"checkpoint not found: {path}" if not path.exists() else f"checkpoint {path} is not a file")
    raw = path.read_bytes()
    if not raw:
        raise VRSError(f"checkpoint {path} is empty")
    try:  # weights_only: nothing in a downloaded file is executed
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle and torch errors all mean "unusable file"
        raise VRSError(f"cannot read checkpoint {path}: it is corrupt, truncated or holds more than tensors and "
                       f"plain values (torch.load(weights_only=True) failed: {first_line(err, 200)})") from None
    what = f"{path} (source.format={fmt}, {codebase.repository})"
    if not isinstance(ckpt, dict):
        raise VRSError(f"{what}: not a checkpoint dict but a {type(ckpt).__name__}")
    if isinstance(ckpt.get("vrs"), dict):
        raise VRSError(f"{what} was written by this project (checkpoint['vrs']): use it as it is, no import needed")
    weights = ckpt.get(codebase.weights_key)
    if not isinstance(weights, dict):
        layout = "{'net': state_dict, 'epoch'} (main.py)" if codebase.weights_key == "net" else \
            "{'epoch', 'arch', 'state_dict', 'optimizer'} (code/train.py)"
        raise VRSError(f"{what}: no {codebase.weights_key!r} entry with the weights; {codebase.repository} writes "
                       f"{layout}, this file holds {sorted(map(str, ckpt))[:6]}: is source.format right?")
    arch_name = next(iter(codebase.archs)) if codebase.arch_key is None else ckpt.get(codebase.arch_key)
    if arch_name not in codebase.archs:
        raise VRSError(f"{what}: arch {arch_name!r} is not one this project can import; known: "
                       f"{', '.join(codebase.archs)} (each maps onto conf/model/<network>.yaml)")
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise VRSError(f"{what}: the {codebase.weights_key!r} entry holds non-tensor values ({_show(map(str, bad))})")
    arch = codebase.archs[arch_name]
    stripped, prefix = _strip_nesting(weights, arch.prefix, codebase, what)
    epoch = ckpt.get("epoch")
    return Published(path, hashlib.sha256(raw).hexdigest(), codebase, arch_name, arch, stripped, prefix,
                     epoch if isinstance(epoch, int) else None,
                     sorted(str(k) for k in ckpt if k not in (codebase.weights_key, codebase.arch_key, "epoch")))


def _strip_nesting(weights: dict, expected: str, codebase: Codebase, what: str) -> tuple[dict, str]:
    """The weights without the codebase's nesting: `expected` (e.g. "1.module."), where each `module.` may be
    absent or doubled (a network saved with or without a DataParallel / DDP wrapper), and a `module.` around the
    whole model. Every key must carry the same nesting; anything else is refused."""
    wanted = [p for p in expected.split(".") if p and p != "module"]  # the structural part: "1" or nothing

    def nesting(key: str) -> tuple[str, str] | None:
        parts, i = key.split("."), 0
        for part in wanted:
            while i < len(parts) and parts[i] == "module":
                i += 1
            if i >= len(parts) or parts[i] != part:
                return None
            i += 1
        while i < len(parts) and parts[i] == "module":
            i += 1
        return ".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:])

    found: dict[str, list[str]] = {}
    out = {}
    for key, value in weights.items():
        split = nesting(key)
        if split is None:
            where = f"under {expected!r} (" + ("Sequential(NormalizeLayer, network) of code/architectures.py"
                                              if wanted else "the network's own names") + ")"
            raise VRSError(f"{what}: key {key!r} is not nested as {codebase.repository} nests its weights, {where}")
        found.setdefault(split[0], []).append(key)
        out[split[1]] = value
    if len(found) > 1:
        raise VRSError(f"{what}: its keys are nested in {len(found)} different ways ("
                       + "; ".join(f"{p or '(none)'!s}: {_show(k, 2)}" for p, k in found.items()) + ")")
    return out, next(iter(found), "")


def resolve_normalization(published: Published, given: str | None) -> tuple[str, str]:
    """(normalisation, where it comes from): the one the codebase's code applies, or `given` (source.normalization).
    VRSError when the codebase does not fix it and none is given, or when the given one contradicts the code."""
    codebase = published.codebase
    if given is not None:
        check_choice("source.normalization", given, NORMALIZATIONS)
    if codebase.normalization is None:
        if given is None:
            path = published.path.as_posix()
            hint = next((f"; its README maps folders like this one ({frag!r} in the path) to {norm}"
                         for frag, norm in codebase.hints if frag in path), "")
            raise VRSError(f"{published.path}: {codebase.repository} trained its published models with different "
                           f"normalisations ({codebase.where}) and the file does not record which: pass "
                           f"source.normalization=standardize ((x - mean) / std) or center (x - mean){hint}")
        return given, f"source.normalization={given} (given; {codebase.repository}: {codebase.where})"
    if given is not None and given != codebase.normalization:
        raise VRSError(f"source.normalization={given!r} contradicts {codebase.repository}, whose code applies "
                       f"{codebase.normalization!r} to every model ({codebase.where}): leave it null")
    return codebase.normalization, f"{codebase.repository} {codebase.where}"


def project_key(key: str, stage_blocks: tuple[int, ...]) -> str | None:
    """The name in this project's ResNet (vrs.models.resnet) of a published ResNet weight, or None: conv1 / bn1 ->
    stem.0 / stem.1, layer<k>.<i> -> layers.<blocks before stage k + i> (downsample -> shortcut), fc -> head.2."""
    for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1."), ("fc.", "head.2.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = _BLOCK.fullmatch(key)
    if m is None:
        return None
    stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= stage <= len(stage_blocks) or index >= stage_blocks[stage - 1]:
        return None
    if rest.startswith("downsample."):
        rest = "shortcut." + rest[len("downsample."):]
    return f"layers.{sum(stage_blocks[:stage - 1]) + index}.{rest}"


def map_weights(published: Published, backbone: nn.Module, network_name: str) -> tuple[dict, list[str]]:
    """(the backbone's state dict filled with the published weights, the counters set to 0). VRSError listing the
    keys that map nowhere, the weights missing, and those of another shape."""
    own = backbone.state_dict()
    stage_blocks = tuple(getattr(backbone, "stage_blocks", ()))
    what = f"{published.path} ({published.codebase.name}, arch {published.arch_name!r})"
    mapped, unmapped = {}, []
    for key, value in published.weights.items():
        new = project_key(key, stage_blocks)
        if new is None or new not in own or new in mapped:  # (a second name for one weight maps nowhere either)
            unmapped.append(published.prefix + key)
        else:
            mapped[new] = (key, value)
    if unmapped:
        raise VRSError(f"{what}: {len(unmapped)} key(s) map onto no weight of this project's {network_name}: "
                       f"{_show(unmapped)}; refusing to import a different network")
    missing = [k for k in own if k not in mapped and not k.endswith(_OPTIONAL)]
    if missing:
        raise VRSError(f"{what}: {len(missing)} weight(s) of this project's {network_name} are not in the file: "
                       f"{_show(missing)}; refusing to import an incomplete network")
    shapes = [f"{published.prefix}{old} {tuple(v.shape)} there, {new} {tuple(own[new].shape)} here"
              for new, (old, v) in mapped.items() if tuple(v.shape) != tuple(own[new].shape)]
    if shapes:
        raise VRSError(f"{what}: {len(shapes)} weight(s) differ in shape from this project's {network_name}: "
                       + "; ".join(shapes[:3]) + ("; ..." if len(shapes) > 3 else ""))
    wrong = [f"{published.prefix}{old} ({v.dtype})" for new, (old, v) in mapped.items()
             if v.is_floating_point() != own[new].is_floating_point()]
    if wrong:
        raise VRSError(f"{what}: weight(s) of the wrong kind: {_show(wrong)}")
    filled = [k for k in own if k not in mapped]
    state = {k: (mapped[k][1].to(own[k].dtype) if k in mapped else torch.zeros_like(own[k])) for k in own}
    return state, filled


def imported_checkpoint(published: Published, net: dict, data: dict, sigma: float,
                        normalization: tuple[str, str], network_name: str) -> dict:
    """The project checkpoint (kind "classifier", as vrs-train writes it) of a published model: the network
    config `net` on data spec `data` (name and shape), with Normalize set to what the codebase applied and the
    mapped weights; hyper-parameters {net, noise (FixedSigma(sigma)), data}; checkpoint["vrs"]["imported"] the
    provenance."""
    mode, source = normalization
    mean, std = constants(mode, published.arch.dataset)
    spec = {**{k: data[k] for k in ("name", "channels", "size", "num_classes")}, "mean": mean, "std": std}
    check_finite_weights(published.weights, published.path)
    network = build_network(net, spec)
    backbone = network[1]
    state, filled = map_weights(published, backbone, network_name)
    backbone.load_state_dict(state, strict=True)
    noise = {"_target_": "vrs.smoothing.noise.FixedSigma", "sigma": float(sigma)}
    provenance = {
        "format": published.codebase.name, "repository": published.codebase.repository,
        "code": published.codebase.url, "arch": published.arch_name, "source": str(published.path.resolve()),
        "source_sha256": published.sha256, "epoch": published.epoch, "nesting_removed": published.prefix,
        "normalization": mode, "normalization_from": source, "mean": mean, "std": std, "sigma": float(sigma),
        "filled_counters": len(filled), "not_imported": published.extra_keys,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {"state_dict": {f"net.{k}": v.detach().clone() for k, v in network.state_dict().items()},
            "hyper_parameters": {"net": net, "noise": noise, "data": spec},
            "vrs": {"format": FORMATS["classifier"], "kind": "classifier", "data": spec, "imported": provenance}}
