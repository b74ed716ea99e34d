"""Reading checkpoints for certification (and later apps): one clear VRSError for every way a file can be
unusable, and a registry of checkpoint kinds.

Every checkpoint written by this project carries `checkpoint["vrs"] = {"format", "kind", "data", ...}`.
Kind "classifier" is a `vrs-train` base classifier (vrs.modules.classifier.NoisyClassifierModule): its
hyper-parameters hold the network config (`net`), the training noise (`noise`) and the data spec (`data`,
with the normalisation constants), and the weights sit under `net.` in the state dict, normalisation
buffers included. A new kind (e.g. the VRS selector) registers a loader in `LOADERS`.

Files are read with torch.load(weights_only=True): no code from a checkpoint is ever executed.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vrs.errors import VRSError

SHAPE_KEYS = ("channels", "size", "num_classes")
SPEC_KEYS = ("name", *SHAPE_KEYS, "mean", "std")  # a DataSpec: what a checkpoint records of its data


def data_differences(there: dict, here: dict, keys: tuple[str, ...] = SPEC_KEYS) -> list[str]:
    """`<key> <there> there, <here> here` for each key on which a checkpoint's data spec (there) and the
    data config (here) differ: the one comparison behind every checkpoint-versus-data check."""
    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # normalisation constants
            return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b))
        return a == b

    return [f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in keys if not same(there.get(k), here.get(k))]


@dataclass
class LoadedCheckpoint:
    """A usable checkpoint: the network ([0,1] images -> logits, normalisation inside, eval mode) and
    what it was trained on."""

    kind: str
    path: Path
    sha256: str
    network: nn.Module
    data: dict                       # DataSpec dict: name, channels, size, num_classes, mean, std
    noise: dict | None = None        # the training noise config
    hparams: dict = field(default_factory=dict, repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return int(self.data["channels"]), int(self.data["size"]), int(self.data["size"])

    @property
    def train_sigma(self) -> float | None:
        """The one sigma the network was trained with, or None (multi-sigma / unknown training noise)."""
        noise = self.noise or {}
        if str(noise.get("_target_", "")).endswith("FixedSigma") and noise.get("sigma") is not None:
            return float(noise["sigma"])
        return None

    def describe_training_noise(self) -> str:
        noise = self.noise or {}
        if self.train_sigma is not None:
            return f"sigma={self.train_sigma:g}"
        if "sigma_min" in noise:
            return f"sigma drawn per sample in [{noise['sigma_min']}, {noise['sigma_max']}]"
        return f"unknown training noise ({noise.get('_target_', 'none recorded')})"


def read_checkpoint(path: str | Path) -> tuple[dict, str]:
    """(checkpoint dict, sha256 of the file) via torch.load(weights_only=True); VRSError when the file is
    missing, empty, truncated, corrupt or not a checkpoint of this project."""
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VRSError(f"checkpoint {path} is corrupt or truncated (torch.load failed: {first[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise VRSError(f"{path} is not a PyTorch Lightning checkpoint (no state_dict)")
    meta = ckpt.get("vrs")
    if not isinstance(meta, dict) or "kind" not in meta:
        raise VRSError(f"{path} was not written by vrs-train (no checkpoint['vrs'] entry)")
    return ckpt, digest


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


def _load_classifier(ckpt: dict, path: Path, digest: str) -> LoadedCheckpoint:
    from vrs.modules.classifier import build_network

    hp = ckpt.get("hyper_parameters") or {}
    meta = ckpt["vrs"]
    if not isinstance(hp.get("net"), dict) or "_target_" not in hp["net"]:
        raise VRSError(f"{path}: hyper_parameters lack the network config (net._target_)")
    data = _check_data_spec(meta.get("data") or hp.get("data"), path)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if "0.mean" not in state or "0.std" not in state:
        raise VRSError(f"{path}: the weights lack the normalisation layer (net.0.mean / net.0.std)")
    try:
        network = build_network(hp["net"], data)
    except VRSError:
        raise
    except Exception as err:  # noqa: BLE001 - a config that no longer builds is a user-facing problem
        raise VRSError(f"{path}: cannot rebuild the network {hp['net'].get('_target_')}: {err}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise VRSError(f"{path}: the stored weights do not fit the stored network config ({first[:300]})") from None
    return LoadedCheckpoint("classifier", path, digest, network.eval(), dict(data), hp.get("noise"), hp, meta)


def _load_vrs(ckpt: dict, path: Path, digest: str) -> LoadedCheckpoint:
    """Kind 'vrs' (a VRS selector checkpoint): its network is the stored base classifier."""
    from vrs.selection.model import loaded_checkpoint

    return loaded_checkpoint(ckpt, path, digest)


# kind -> loader(checkpoint dict, path, sha256).
LOADERS: dict[str, Callable[[dict, Path, str], LoadedCheckpoint]] = {"classifier": _load_classifier,
                                                                     "vrs": _load_vrs}
FORMATS = {"classifier": 1, "vrs": 1}


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] = ("classifier",)) -> LoadedCheckpoint:
    """Load a checkpoint of one of `kinds`; VRSError when it cannot be used."""
    path = Path(path)
    ckpt, digest = read_checkpoint(path)
    meta = ckpt["vrs"]
    kind = meta.get("kind")
    if kind not in kinds or kind not in LOADERS:
        raise VRSError(f"{path} is a {kind!r} checkpoint; this command needs one of: {', '.join(kinds)}")
    if meta.get("format") != FORMATS.get(kind):
        raise VRSError(f"{path}: checkpoint format {meta.get('format')!r} of kind {kind!r} is not supported "
                       f"(this code reads format {FORMATS.get(kind)})")
    return LOADERS[kind](ckpt, path, digest)


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
    want = {k: loaded.data[k] for k in SHAPE_KEYS}
    got = {k: data.get(k) for k in SHAPE_KEYS}
    trained = f"{loaded.data['name']} ({want['channels']}x{want['size']}x{want['size']}, {want['num_classes']} classes)"
    given = f"{data.get('name')} ({got['channels']}x{got['size']}x{got['size']}, {got['num_classes']} classes)"
    if want != got:
        raise VRSError(f"checkpoint {loaded.path} was trained on {trained}, but data={data.get('name')} gives "
                       f"{given}: pass data={loaded.data['name']} (with the same data.* settings as in training)")
    if data.get("name") != loaded.data["name"] and not allow_other_dataset:
        raise VRSError(f"checkpoint {loaded.path} was trained on {loaded.data['name']}, not {data.get('name')}: "
                       f"pass data={loaded.data['name']}, or certify.allow_other_dataset=true if this is intended")
    # The network normalises with its own stored constants; other data.mean / data.std mean this data config
    # is not the one the network was trained with.
    diffs = data_differences(loaded.data, data, ("mean", "std")) if not allow_other_dataset else []
    if diffs:
        raise VRSError(f"checkpoint {loaded.path} was trained with other normalisation constants ({'; '.join(diffs)}): "
                       "pass the data.* settings of its training run")
