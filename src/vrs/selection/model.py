"""Loading base classifiers and VRS checkpoints; the assembled defended model.

A VRS checkpoint (written by `vrs.modules.selector.SelectorModule`) holds everything certify and attack
need, without the stage-1 file: the base classifier's weights and config, the data spec, the selector's
config and weights, the sigma range and the median-smoothing settings, under

    checkpoint["vrs"] = {"format": 1, "kind": "vrs", "data": ..., "base": {"net", "noise", "data",
                         "source"}, "selector": ..., "sigma_min", "sigma_max", "median": ..., "prior", "lam"}

with the weights in checkpoint["state_dict"] under "base." and "selector.". Checkpoints are read with
torch.load(weights_only=True).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from vrs.errors import VRSError
from vrs.modules.classifier import build_network
from vrs.selection.median import MedianSmoothing, deployed_sigma
from vrs.selection.networks import NoiseSelector, build_selector

VRS_FORMAT = 1
DATA_KEYS = ("name", "channels", "size", "num_classes")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load(weights_only=True) with one clear VRSError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise VRSError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle / zip / torch errors all mean "not a usable checkpoint"
        raise VRSError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise VRSError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def check_same_data(ours: dict, theirs: dict, what: str) -> None:
    """VRSError unless two data specs describe the same data set (name, shape, classes)."""
    from vrs.checkpoint import data_differences

    diffs = data_differences(theirs, ours, DATA_KEYS)
    if diffs:
        raise VRSError(f"{what} was trained on a different data set ({'; '.join(diffs)})")


def load_base_classifier(path: str | Path, expect_data: dict | None = None) -> tuple[nn.Module, dict]:
    """A base classifier checkpoint (`vrs-train`, kind 'classifier') -> (network in eval mode, its spec
    {"net", "noise", "data", "source"}). With expect_data, a different data set is a VRSError."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get("vrs") or {}
    kind = meta.get("kind")
    if kind == "vrs":
        net, spec = _base_from_vrs(ckpt, path)
    else:
        if kind != "classifier":
            raise VRSError(f"{path} is not a vrs base-classifier checkpoint (checkpoint['vrs']['kind']={kind!r})")
        hp = ckpt.get("hyper_parameters") or {}
        if not all(k in hp for k in ("net", "data")):
            raise VRSError(f"{path}: hyper_parameters lack the network or data spec")
        spec = {"net": hp["net"], "noise": hp.get("noise"), "data": hp["data"], "source": str(path)}
        net = _build(spec, {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}, path)
    if expect_data is not None:
        check_same_data(expect_data, spec["data"], f"base classifier {path}")
    return net, spec


def _build(spec: dict, state: dict, path) -> nn.Module:
    try:
        net = build_network(spec["net"], spec["data"])
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise VRSError(f"{path}: the stored weights do not fit the stored network config: {err}") from None
    return net.eval()


def _base_from_vrs(ckpt: dict, path) -> tuple[nn.Module, dict]:
    spec = ckpt["vrs"]["base"]
    state = {k[len("base."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("base.")}
    return _build(spec, state, path), spec


class VRSModel(nn.Module):
    """The defended pipeline's parts: base classifier f, selector h, median-smoothing settings.

    `sigma(x, lam)` is the deployed noise level: snap(clip(median_j h(x + eta_j, lam))) over n_h draws.
    """

    def __init__(self, base: nn.Module, selector: NoiseSelector, median: MedianSmoothing, data: dict,
                 meta: dict | None = None):
        super().__init__()
        self.base, self.selector, self.median, self.data = base.eval(), selector.eval(), median, data
        self.meta = meta or {}

    @property
    def sigma_min(self) -> float:
        return self.selector.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.selector.sigma_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base classifier logits (the noise is added by the caller)."""
        return self.base(x)

    @torch.no_grad()
    def sigma(self, x: torch.Tensor, lam, n_h: int | None = None, generator=None,
              snap_to_grid: bool = True) -> torch.Tensor:
        """The deployed sigma (B,) (`deployed_sigma`) with this model's median-smoothing settings; n_h
        copies (default median.n_h), from `generator` (one, one per image, or None: torch's global RNG)."""
        median = self.median if snap_to_grid else replace(self.median, grid=None)
        return deployed_sigma(self.selector, x, lam, median, n_h or self.median.n_h, generator)


def load_vrs(path: str | Path, base_ckpt: str | Path | None = None, device: str | torch.device = "cpu") -> VRSModel:
    """A VRS checkpoint -> VRSModel on `device`. base_ckpt swaps in another base classifier, which must
    be of the same data set (else VRSError)."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get("vrs") or {}
    if meta.get("kind") != "vrs":
        raise VRSError(f"{path} is not a VRS selector checkpoint (checkpoint['vrs']['kind']={meta.get('kind')!r}; "
                       "train one with `vrs-train experiment=vrs_<dataset>`)")
    if meta.get("format") != VRS_FORMAT:
        raise VRSError(f"{path}: VRS checkpoint format {meta.get('format')!r}, this code reads {VRS_FORMAT}")
    for key in ("data", "base", "selector", "median"):
        if key not in meta:
            raise VRSError(f"{path}: checkpoint['vrs'] lacks {key!r}")
    data = meta["data"]
    if base_ckpt is not None:
        base, _ = load_base_classifier(base_ckpt, expect_data=data)
    else:
        base, _ = _base_from_vrs(ckpt, path)
    try:
        selector = build_selector(meta["selector"], data)
        selector.load_state_dict({k[len("selector."):]: v for k, v in ckpt["state_dict"].items()
                                  if k.startswith("selector.")})
    except (RuntimeError, KeyError, TypeError) as err:
        raise VRSError(f"{path}: the stored selector weights do not fit its config: {err}") from None
    median = MedianSmoothing(**meta["median"])
    return VRSModel(base, selector, median, data, meta).to(device)


def loaded_checkpoint(ckpt: dict, path, digest: str):
    """vrs.checkpoint's loader for kind 'vrs': a LoadedCheckpoint whose network is the stored base
    classifier (certify / attack build the selector with `load_vrs`)."""
    from vrs.checkpoint import LoadedCheckpoint, _check_data_spec

    meta = ckpt["vrs"]
    for key in ("data", "base", "selector", "median"):
        if key not in meta:
            raise VRSError(f"{path}: checkpoint['vrs'] lacks {key!r}")
    data = _check_data_spec(meta["data"], Path(path))
    network, spec = _base_from_vrs(ckpt, path)
    return LoadedCheckpoint("vrs", Path(path), digest, network, dict(data), spec.get("noise"),
                            ckpt.get("hyper_parameters") or {}, meta)
