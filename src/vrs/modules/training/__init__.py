"""Training methods of the base classifier (the Hydra group `training`, conf/training/*.yaml).

One method is one small file here with its paper's formula in its docstring, registered by one config with a
`_target_`. The classifier module (vrs.modules.classifier) draws each image's noise level sigma from the `noise`
group (one fixed sigma, or sigma per sample for VRS's multi-sigma base classifier) and hands the batch over as a
`TrainingBatch`; the method draws its own Gaussian noise at those sigmas and returns a `TrainingOutput`:

    method(batch: TrainingBatch) -> TrainingOutput(loss (), logits (B, K), terms {name: ()})

* `gaussian` (`GaussianAugmentation`): Cohen, Rosenfeld, Kolter, ICML 2019: CE at one noisy copy (the default).
* `smoothadv` (`SmoothAdv`): Salman et al., NeurIPS 2019: CE at noisy copies of a PGD point of the soft smoothed
  classifier.
* `macer` (`MACER`): Zhai et al., ICLR 2020: soft smoothed CE plus a hinge on the soft certified radius.
* `consistency` (`Consistency`): Jeong & Shin, NeurIPS 2020: CE over m draws plus KL-to-the-mean and entropy.

A method is stateless between steps: what changes over training (SmoothAdv's eps warm-up, MACER's deferred
start) is a function of `TrainingBatch.epoch`, so a resumed run (Lightning restores the epoch) continues exactly.
A module built without a method (an old checkpoint, a config that names none) uses `DEFAULT_TRAINING`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch

from vrs.errors import ConfigError
from vrs.utils.config import instantiate_component

DEFAULT_TRAINING = {"_target_": "vrs.modules.training.gaussian.GaussianAugmentation"}
NAMES = "gaussian|smoothadv|macer|consistency"


@dataclass
class TrainingBatch:
    """One training batch of B images with K classes.

    x: (B, C, H, W) clean images in [0, 1]; y: (B,) labels; sigma: (B,) each image's noise level (from the `noise`
    group); f: the network's forward (logits of [0, 1] images); network: the nn.Module behind f (methods that
    switch its mode, e.g. SmoothAdv's attack in eval mode); epoch: the current epoch (0-based), for schedules.
    """

    x: torch.Tensor
    y: torch.Tensor
    sigma: torch.Tensor
    f: Callable[[torch.Tensor], torch.Tensor]
    network: torch.nn.Module
    epoch: int = 0


@dataclass
class TrainingOutput:
    """loss: the scalar the optimizer minimises; logits: (B, K) at one noisy copy of each image (train/acc);
    terms: named scalars to log as train/<name> (detached)."""

    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class TrainingMethod(ABC):
    """Base class: `__call__(batch) -> TrainingOutput`; `name` is how logs and reports call it."""

    name = "method"

    def graph_conflict(self) -> str | None:
        """Why this method's step cannot be captured in one CUDA graph (module.cuda_graph), or None when it can."""
        return None

    @abstractmethod
    def __call__(self, batch: TrainingBatch) -> TrainingOutput:
        """The training loss of one batch."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def training_config(cfg: dict | None) -> dict:
    """The method's config as a plain dict; None (old checkpoints, configs without one) is Gaussian augmentation."""
    if cfg is None:
        return dict(DEFAULT_TRAINING)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ConfigError("module.training", cfg, f"a training method config with a _target_: choose one with "
                                                  f"training={NAMES}")
    return dict(cfg)


def training_name(cfg: dict | None) -> str:
    """The method's name (its module's file name: gaussian, smoothadv, ...) from its config; None: gaussian."""
    parts = str(training_config(cfg)["_target_"]).split(".")
    return parts[-2] if len(parts) >= 2 else parts[-1]


def build_training(cfg: dict | None) -> TrainingMethod:
    """The method of a `training` group config (its `_target_` and hyper-parameters)."""
    return instantiate_component(training_config(cfg), "module.training._target_", TrainingMethod,
                                 "a training method class")


def cross_entropy_per_draw(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, m): CE(f(x + sigma z_j), y) of each draw j of each image, from logits (B, m, K) (float32 for half input)."""
    b, m, k = logits.shape
    return torch.nn.functional.cross_entropy(logits.float().reshape(b * m, k), y.repeat_interleave(m),
                                             reduction="none").view(b, m)
