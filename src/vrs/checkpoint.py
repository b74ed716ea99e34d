"""The one reader of the checkpoints this project writes: read once, hash, refuse what cannot be used with one
clear VRSError, rebuild the network, compare the data spec. Every app and module that reads a checkpoint comes
here (certify, attack, the selector's stage-1 base classifier, the config check before a run, resume).

Every checkpoint written by this project carries `checkpoint["vrs"] = {"format", "kind", "data", ...}`:
- kind "classifier": a `vrs-train` base classifier (vrs.modules.classifier.NoisyClassifierModule). Its
  hyper-parameters hold the network config (`net`), the training noise (`noise`), the training method (`training`,
  vrs.modules.training; absent in files written before it existed: Gaussian augmentation) and the data spec
  (`data`, with the normalisation constants); the weights sit under `net.` in the state dict, normalisation
  buffers included.
- kind "vrs": a VRS selector (vrs.modules.selector.SelectorModule). It holds everything certify and attack
  need without the stage-1 file:
      checkpoint["vrs"] = {"format": 1, "kind": "vrs", "data": ..., "base": {"net", "noise", "data", "source",
                                                                              "training"},
                           "selector": ..., "sigma_min", "sigma_max", "median": ..., "prior", "lam", ...}
  with the weights under "base." and "selector.".
A base classifier brought in from another codebase by vrs-import (vrs.importers) is of kind "classifier" too,
with checkpoint["vrs"]["imported"] = its provenance (codebase, commit, source file and hash, normalisation and
where it comes from); its data spec's mean/std are the constants of the original code, inside the network.
A new kind registers a loader in `LOADERS` and its format in `FORMATS`.

Files are read with torch.load(weights_only=True): no code from a checkpoint is ever executed. A process reads
a file once: the config check before a run (vrs.config_schema, from Hydra's callback), the app and its shards in
that process all get the same read (`_remembered_read`); a rewritten file is read again.
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vrs.errors import VRSError, first_line
from vrs.models import build_network
from vrs.selection.median import MedianSmoothing
from vrs.selection.model import VRSModel
from vrs.selection.networks import NoiseSelector, build_selector

SHAPE_KEYS = ("channels", "size", "num_classes")
SPEC_KEYS = ("name", *SHAPE_KEYS, "mean", "std")  # a DataSpec: what a checkpoint records of its data
# The format each kind is written in (vrs.modules) and read in (here).
FORMATS = {"classifier": 1, "vrs": 1}
KIND_NAMES = {"classifier": "base classifier checkpoint (vrs-train)",
              "vrs": "VRS selector checkpoint (vrs-train experiment=vrs_<dataset>)"}
VRS_KEYS = ("data", "base", "selector", "median")  # what checkpoint["vrs"] of kind "vrs" must hold


def data_differences(there: dict, here: dict, keys: tuple[str, ...] = SPEC_KEYS) -> list[str]:
    """`<key> <there> there, <here> here` for each key on which a checkpoint's data spec (there) and the
    data config (here) differ: the one comparison behind every checkpoint-versus-data check."""
    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # normalisation constants
            return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b))
        return a == b

    return [f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in keys if not same(there.get(k), here.get(k))]


def check_same_data(ours: dict, theirs: dict, what: str) -> None:
    """VRSError unless two data specs describe the same data set (name, shape, classes); `what` names the
    checkpoint that holds `theirs`."""
    diffs = data_differences(theirs, ours, ("name", *SHAPE_KEYS))
    if diffs:
        raise VRSError(f"{what} was trained on a different data set ({'; '.join(diffs)})")


@dataclass
class LoadedCheckpoint:
    """A usable checkpoint: the network ([0,1] images -> logits, normalisation inside, eval mode) and what it
    was trained on; a VRS checkpoint also carries its selector and median-smoothing settings (`vrs_model`)."""

    kind: str
    path: Path
    sha256: str
    network: nn.Module               # the base classifier (kind "vrs": the one stored in the checkpoint)
    data: dict                       # DataSpec dict: name, channels, size, num_classes, mean, std
    noise: dict | None = None        # the base classifier's training noise config
    hparams: dict = field(default_factory=dict, repr=False)
    meta: dict = field(default_factory=dict, repr=False)                  # checkpoint["vrs"]
    base_spec: dict = field(default_factory=dict, repr=False)   # {"net", "noise", "data", "source", "training"}
    selector: NoiseSelector | None = field(default=None, repr=False)      # kind "vrs" only
    median: MedianSmoothing | None = field(default=None, repr=False)      # kind "vrs" only

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    @property
    def train_sigma(self) -> float | None:
        """The one sigma the network was trained with, or None (multi-sigma / unknown training noise)."""
        noise = self.noise or {}
        if str(noise.get("_target_", "")).endswith("FixedSigma") and noise.get("sigma") is not None:
            return float(noise["sigma"])
        return None

    def smoothing_sigma(self, sigma: float | None, key: str) -> float:
        """`sigma`, or for None the one sigma the network was trained with; VRSError naming the config `key`
        when it was trained with several (or unknown) noise levels."""
        if sigma is not None:
            return float(sigma)
        if self.train_sigma is None:
            noise = self.noise or {}
            trained = (f"sigma drawn per sample in [{noise['sigma_min']}, {noise['sigma_max']}]" if "sigma_min" in noise
                       else f"unknown training noise ({noise.get('_target_', 'none recorded')})")
            raise VRSError(f"{key}=null means the checkpoint's training sigma, but {self.path.name} was trained with "
                           f"{trained}: pass {key}=<value>")
        return self.train_sigma

    def vrs_model(self, device: str | torch.device = "cpu", base: nn.Module | None = None) -> VRSModel:
        """The defended model of a VRS checkpoint on `device`, from this read (the file is not read again); base
        swaps in another base classifier (load_vrs checks its data set). It shares this checkpoint's modules."""
        if self.selector is None or self.median is None:
            raise VRSError(_wrong_kind(self.path, self.kind, ("vrs",)))
        return VRSModel(self.network if base is None else base, self.selector, self.median, self.data,
                        self.meta).to(device)


def _wrong_kind(path: Path, kind, kinds: tuple[str, ...]) -> str:
    """The message for a checkpoint of another kind than the command reads."""
    return f"{path} is a {kind!r} checkpoint, not a " + " or a ".join(KIND_NAMES.get(k, repr(k)) for k in kinds)


def read_checkpoint(path: str | Path) -> tuple[dict, str]:
    """(checkpoint dict, sha256 of the file) via torch.load(weights_only=True), read now (optimizer and loop
    state included); VRSError when the file is missing, empty, truncated, corrupt or not a checkpoint of this
    project."""
    path = Path(path)
    if not path.is_file():
        raise VRSError(f"checkpoint not found: {path}" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise VRSError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not raw:
        raise VRSError(f"checkpoint {path} is empty")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle and torch errors all mean "unusable file"
        raise VRSError(f"cannot read checkpoint {path}: it is corrupt or truncated "
                       f"(torch.load failed: {first_line(err, 200)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise VRSError(f"{path} is not a PyTorch Lightning checkpoint (no state_dict)")
    meta = ckpt.get("vrs")
    if not isinstance(meta, dict) or "kind" not in meta:
        raise VRSError(f"{path} was not written by vrs-train (no checkpoint['vrs'] entry)")
    check_finite_weights(ckpt["state_dict"], path)
    return ckpt, digest


def check_finite_weights(state_dict: dict, path: str | Path) -> None:
    """VRSError naming the checkpoint and its first tensor with a NaN or Inf: a network with such weights
    answers "class 0" (argmax of NaN logits) for every input, which certify and attack would otherwise report
    as results. One pass over the weights, once per read of the file."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            kinds = "/".join(k for k, n in (("NaN", int(torch.isnan(value).sum())),
                                             ("Inf", int(torch.isinf(value).sum()))) if n)
            raise VRSError(f"checkpoint {path} holds non-finite weights: {name} has {bad} {kinds} value(s) of "
                           f"{value.numel()} (the training run diverged); use an earlier checkpoint of the run")


# (resolved path, device, inode, size, mtime, ctime) -> (the parts loaders use, sha256), for the last few files.
_READS: dict[tuple, tuple[dict, str]] = {}
_REMEMBERED = 2  # a VRS checkpoint and the base classifier swapped into it (load_vrs base_ckpt=...)


def _remembered_read(path: Path) -> tuple[dict, str]:
    """read_checkpoint, once per process for a file as it is now: the weights, hyper-parameters and
    checkpoint["vrs"] of the last few files read are kept, not the optimizer state. Every call gets its own
    copy of the (small) config dicts, so a caller that edits them changes no later load; the weights are
    shared, as loaders only copy them into new networks."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        return read_checkpoint(path)  # raises the one clear error (not found, not readable)
    if key not in _READS:
        ckpt, digest = read_checkpoint(path)
        while _READS and len(_READS) >= _REMEMBERED:
            del _READS[next(iter(_READS))]
        _READS[key] = ({k: ckpt[k] for k in ("state_dict", "hyper_parameters", "vrs") if k in ckpt}, digest)
    kept, digest = _READS[key]
    return {k: v if k == "state_dict" else copy.deepcopy(v) for k, v in kept.items()}, digest


def _check_data_spec(data, path: Path) -> dict:
    if not isinstance(data, dict):
        raise VRSError(f"{path}: the checkpoint holds no data spec")
    missing = [k for k in ("name", *SHAPE_KEYS) if k not in data]
    if missing:
        raise VRSError(f"{path}: the checkpoint's data spec lacks {missing}")
    mean, std = data.get("mean"), data.get("std")
    if not mean or not std or len(mean) != data["channels"] or len(std) != data["channels"]:
        raise VRSError(f"{path}: the checkpoint has no normalisation constants (data mean/std, one per channel); "
                       "without them the network would see wrongly scaled inputs")
    return data


def _weights(state_dict: dict, prefix: str) -> dict:
    """The weights under `prefix`, without it (and without torch.compile's `_orig_mod.`)."""
    return {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state_dict.items() if k.startswith(prefix)}


def _network(net: dict, data: dict, state_dict: dict, prefix: str, path: Path) -> nn.Module:
    """The base classifier of config `net` on data spec `data`, with the weights under `prefix`, in eval mode."""
    if not isinstance(net, dict) or "_target_" not in net:
        raise VRSError(f"{path}: the checkpoint lacks the network config ({prefix}_target_)")
    state = _weights(state_dict, prefix)
    if "0.mean" not in state or "0.std" not in state:
        raise VRSError(f"{path}: the weights lack the normalisation layer ({prefix}0.mean / {prefix}0.std)")
    try:
        network = build_network(net, data)
    except VRSError:
        raise
    except Exception as err:  # noqa: BLE001 - a config that no longer builds is a user-facing problem
        raise VRSError(f"{path}: cannot rebuild the network {net.get('_target_')}: {err}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise VRSError(f"{path}: the stored weights do not fit the stored network config "
                       f"({first_line(err, 300)})") from None
    return network.eval()


def _load_classifier(ckpt: dict, path: Path, digest: str) -> LoadedCheckpoint:
    """Kind 'classifier': a vrs-train base classifier."""
    hp = ckpt.get("hyper_parameters") or {}
    meta = ckpt["vrs"]
    data = dict(_check_data_spec(meta.get("data") or hp.get("data"), path))
    network = _network(hp.get("net"), data, ckpt["state_dict"], "net.", path)
    spec = {"net": hp["net"], "noise": hp.get("noise"), "data": data, "source": str(path),
            "training": hp.get("training")}
    return LoadedCheckpoint("classifier", path, digest, network, data, hp.get("noise"), hp, meta, spec)


def _load_vrs(ckpt: dict, path: Path, digest: str) -> LoadedCheckpoint:
    """Kind 'vrs': the stored base classifier, the selector and the median-smoothing settings."""
    meta = ckpt["vrs"]
    missing = [k for k in VRS_KEYS if k not in meta]
    if missing:
        raise VRSError(f"{path}: checkpoint['vrs'] lacks {missing}")
    data = dict(_check_data_spec(meta["data"], path))
    base = meta["base"] if isinstance(meta["base"], dict) else {}
    network = _network(base.get("net"), _check_data_spec(base.get("data"), path), ckpt["state_dict"], "base.", path)
    try:
        selector = build_selector(meta["selector"], data, base=network)
        selector.load_state_dict(_weights(ckpt["state_dict"], "selector."))
    except (RuntimeError, KeyError, TypeError, VRSError) as err:
        raise VRSError(f"{path}: the stored selector weights do not fit its config ({first_line(err, 300)})") from None
    try:
        median = MedianSmoothing(**meta["median"])
    except (TypeError, VRSError) as err:
        raise VRSError(f"{path}: the stored median-smoothing settings are not usable ({err})") from None
    return LoadedCheckpoint("vrs", path, digest, network, data, base.get("noise"), ckpt.get("hyper_parameters") or {},
                            meta, base, selector.eval(), median)


# kind -> loader(checkpoint dict, path, sha256).
LOADERS: dict[str, Callable[[dict, Path, str], LoadedCheckpoint]] = {"classifier": _load_classifier,
                                                                     "vrs": _load_vrs}


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] = ("classifier",)) -> LoadedCheckpoint:
    """Load a checkpoint of one of `kinds` (read once per process); VRSError when it cannot be used."""
    path = Path(path)
    ckpt, digest = _remembered_read(path)
    meta = ckpt["vrs"]
    kind = meta.get("kind")
    if kind not in kinds or kind not in LOADERS:
        raise VRSError(_wrong_kind(path, kind, kinds))
    if meta.get("format") != FORMATS.get(kind):
        raise VRSError(f"{path}: checkpoint format {meta.get('format')!r} of kind {kind!r} is not supported "
                       f"(this code reads format {FORMATS.get(kind)})")
    return LOADERS[kind](ckpt, path, digest)


def load_base_classifier(path: str | Path, expect_data: dict | None = None) -> tuple[nn.Module, dict]:
    """A base classifier -> (network in eval mode, its spec {"net", "noise", "data", "source", "training"}). A VRS
    checkpoint gives its stored base classifier. With expect_data, a different data set is a VRSError."""
    loaded = load_checkpoint(path, kinds=("classifier", "vrs"))
    if expect_data is not None:
        check_same_data(expect_data, loaded.base_spec["data"], f"base classifier {path}")
    return loaded.network, loaded.base_spec


def load_vrs(ckpt: str | Path | LoadedCheckpoint, base_ckpt: str | Path | None = None,
             device: str | torch.device = "cpu") -> VRSModel:
    """A VRS checkpoint (a path, or one already loaded: not read again) -> VRSModel on `device`. base_ckpt swaps
    in another base classifier, which must be of the same data set (else VRSError)."""
    loaded = ckpt if isinstance(ckpt, LoadedCheckpoint) else load_checkpoint(ckpt, kinds=("vrs",))
    base = load_base_classifier(base_ckpt, expect_data=loaded.data)[0] if base_ckpt is not None else None
    return loaded.vrs_model(device, base)


def check_resume_checkpoint(path: str | Path, module: nn.Module) -> None:
    """VRSError unless vrs-train can resume `module` from checkpoint `path`: a full training checkpoint of
    this project (not only weights), made on the same data (name, shape, classes, normalisation) with the
    same network (every weight present, of the same shape)."""
    path = Path(path)
    ckpt, _ = read_checkpoint(path)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise VRSError(f"ckpt_path={str(path)!r} holds no optimizer and loop state, so training cannot resume "
                       "from it; resume from <run dir>/checkpoints/last.ckpt")
    have = ckpt["vrs"].get("data") or (ckpt.get("hyper_parameters") or {}).get("data") or {}
    want = dict(getattr(module, "hparams", {}).get("data") or {})
    diffs = data_differences(have, want)
    if want and diffs:
        raise VRSError(f"ckpt_path={str(path)!r} was trained on other data ({'; '.join(diffs)}): resume with the "
                       "data settings it was trained with")
    stored, own = ckpt["state_dict"], module.state_dict()
    missing = [k for k in own if k not in stored]
    extra = [k for k in stored if k not in own]
    shapes = [f"{k} {tuple(stored[k].shape)} there, {tuple(own[k].shape)} here" for k in own
              if k in stored and tuple(stored[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        what = "; ".join(filter(None, [f"missing {missing[:3]}" if missing else "",
                                       f"unexpected {extra[:3]}" if extra else "", "; ".join(shapes[:3])]))
        hint = " (the normalisation layer)" if any(k.endswith(("0.mean", "0.std")) for k in missing) else ""
        raise VRSError(f"ckpt_path={str(path)!r} does not fit this run's network{hint}: {what}; resume with the "
                       "model settings it was trained with")


def check_data_matches(loaded: LoadedCheckpoint, data: dict, allow_other_dataset: bool = False) -> None:
    """VRSError unless the data config gives inputs the network was built for: same channels, size and
    class count, and (unless allow_other_dataset) the same data set."""
    def shape(spec: dict) -> str:
        return f"{spec.get('name')} ({spec.get('channels')}x{spec.get('size')}x{spec.get('size')}, " \
               f"{spec.get('num_classes')} classes)"

    if data_differences(loaded.data, data, SHAPE_KEYS):
        raise VRSError(f"checkpoint {loaded.path} was trained on {shape(loaded.data)}, but data={data.get('name')} "
                       f"gives {shape(data)}: pass data={loaded.data['name']} (with the same data.* settings as in "
                       "training)")
    if data_differences(loaded.data, data, ("name",)) and not allow_other_dataset:
        raise VRSError(f"checkpoint {loaded.path} was trained on {loaded.data['name']}, not {data.get('name')}: "
                       f"pass data={loaded.data['name']}, or certify.allow_other_dataset=true if this is intended")
    # The network normalises with its own stored constants; other data.mean / data.std mean this data config
    # is not the one the network was trained with. An imported network was trained by another codebase with its
    # own constants (recorded in its provenance), never with a data config of this project: nothing to compare.
    imported = isinstance(loaded.meta.get("imported"), dict)
    diffs = data_differences(loaded.data, data, ("mean", "std")) if not (allow_other_dataset or imported) else []
    if diffs:
        raise VRSError(f"checkpoint {loaded.path} was trained with other normalisation constants ({'; '.join(diffs)}): "
                       "pass the data.* settings of its training run")
