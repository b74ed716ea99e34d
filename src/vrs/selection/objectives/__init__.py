"""Training objectives of the noise-level selector (the Hydra group `objective`, conf/objective/*.yaml).

One objective is one small file here with its formula in its docstring, registered by one config with a
`_target_`. The selector module (vrs.modules.selector) computes what every objective needs, once per batch
(`selector_step`), and hands it over as an `ObjectiveInput`; the objective returns an `ObjectiveOutput`:

    objective(inp: ObjectiveInput) -> ObjectiveOutput(loss (B,), terms {name: (B,)})      # training
    objective.evaluate(inp) -> ObjectiveOutput                                              # validation

* `paper` (`PaperObjective`): (1 - lambda) CE + lambda KL(p || prior), the VRS paper's (docs/method.md section 4).
* `radius` (`RadiusObjective`): (1 - lambda) CE - lambda * weight * capped soft certified radius (MACER,
  data-dependent smoothing).
* `adversarial` (`AdversarialObjective`): (1 - lambda) CE at x + lambda CE at x + delta, delta from a few L2
  PGD steps through the selector and the soft smoothing (SmoothAdv with the selector in the loop).
* `oracle_labels` (`OracleLabelsObjective`): CE of the selector's distribution over the sigma grid against soft
  labels from each training image's votes at every grid sigma (Dual RS), computed once per base classifier.

An objective that needs the whole training split before the first step (per-image labels) sets
`needs_index = True` and implements `prepare(TrainingSplit)`; the module then feeds it the batch's indices
into that split (`ObjectiveInput.idx`).

lambda stays a per-sample input of the selector for every objective, so one trained selector covers the
trade-off and lambda is chosen at test time. A module built without an objective (an old checkpoint, a config
that names none) uses `DEFAULT_OBJECTIVE`, the paper's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vrs.errors import ConfigError
from vrs.utils.config import instantiate_component
from vrs.selection.networks import NoiseSelector, SelectorOutput
from vrs.selection.soft import soft_smooth_log
from vrs.smoothing.noise import add_noise

DEFAULT_OBJECTIVE = {"_target_": "vrs.selection.objectives.paper.PaperObjective"}


@dataclass
class ObjectiveInput:
    """What an objective receives for a batch of B images with K classes.

    x: (B, C, H, W) clean images in [0, 1]; y: (B,) labels; lam: (B,) the trade-off knob per sample;
    out: the selector's output (`SelectorOutput`: sigma, mu, s, log_sigma), from h(x + eta, lam);
    sigma: (B,) the noise level the soft smoothing used (out.sigma in training; the deployed, median-smoothed
        and snapped sigma in validation);
    log_probs: (B, K) log g_s(x) of the soft-smoothed base classifier at `sigma` (docs/method.md section 3);
    prior: the noise prior (vrs.selection.priors; `prior.kl(out)` is the per-sample KL);
    smooth: log g_s at other inputs or noise levels, `smooth(x, sigma) -> (B, K)` (same n_trf, tau, base
        classifier), for objectives that need more than one smoothing pass (None where not available);
    select: the selector at other inputs, `select(x, lam) -> SelectorOutput` (with its own input noise eta, as
        for `out`), for objectives that move the input (None where not available);
    idx: (B,) the images' positions in the training split, for objectives with `needs_index` (None in
        validation and wherever the batch does not carry them).
    """

    x: torch.Tensor
    y: torch.Tensor
    lam: torch.Tensor
    out: SelectorOutput
    sigma: torch.Tensor
    log_probs: torch.Tensor
    prior: Any
    smooth: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    select: Callable[[torch.Tensor, torch.Tensor], SelectorOutput] | None = None
    idx: torch.Tensor | None = None


@dataclass
class TrainingSplit:
    """What `Objective.prepare` gets before training: the frozen base classifier (`base`, whose weights key caches)
    and its forward f (logits of [0, 1] images), the training images x (N, C, H, W, uint8 or [0, 1]) and labels y
    (N,) in split order (`ObjectiveInput.idx` indexes them), the deployed sigma grid, the device f runs on, and a
    folder for caches (None: do not cache)."""

    base: torch.nn.Module
    f: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    grid: tuple[float, ...] | None
    device: torch.device
    cache_dir: str | None


@dataclass
class ObjectiveOutput:
    """loss: (B,) per-sample loss (the module averages it); terms: named (B,) per-sample values to log
    (as train/<name>, val/<name>_lam<l>), detached or not."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(ABC):
    """Base class: `__call__(inp) -> ObjectiveOutput`; `name` is how logs and reports call it."""

    name = "objective"
    needs_index = False  # True: training batches must carry their indices (ObjectiveInput.idx); see prepare

    def prepare(self, split: TrainingSplit) -> None:  # noqa: B027 - optional hook, most objectives need nothing
        """Called once before training with the whole training split (objectives with per-image labels)."""

    @abstractmethod
    def __call__(self, inp: ObjectiveInput) -> ObjectiveOutput:
        """The per-sample training loss and its named terms."""

    def evaluate(self, inp: ObjectiveInput) -> ObjectiveOutput:
        """The objective in validation (no gradients, `inp.sigma` the deployed sigma, no `smooth` / `select`):
        by default the training formula."""
        return self(inp)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def objective_config(cfg: dict | None) -> dict:
    """The objective's config as a plain dict; None (old checkpoints, configs without one) is the paper's."""
    if cfg is None:
        return dict(DEFAULT_OBJECTIVE)
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ConfigError("module.objective", cfg, "an objective config with a _target_: choose one with "
                                                     "objective=paper|radius|adversarial|oracle_labels")
    return dict(cfg)


def build_objective(cfg: dict | None) -> Objective:
    """The objective of a `objective` group config (its `_target_` and hyper-parameters)."""
    return instantiate_component(objective_config(cfg), "module.objective._target_", Objective,
                                 "an objective class")


def selector_step(selector: NoiseSelector, f: Callable[[torch.Tensor], torch.Tensor], objective: Objective, prior,
                  x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, *, sigma_h: float, n_trf: int, tau: float,
                  sample: bool, idx: torch.Tensor | None = None) -> tuple[ObjectiveOutput, ObjectiveInput]:
    """One training evaluation of the selector's objective: h sees x + eta (eta ~ N(0, sigma_h^2 I), as under
    median smoothing at test time), picks sigma per sample, the soft smoothing of f at the clean x with that
    sigma gives log g_s(x), and the objective turns them into a per-sample loss."""
    def select(x_: torch.Tensor, lam_: torch.Tensor) -> SelectorOutput:
        return selector(add_noise(x_, sigma_h), lam_, sample=sample)

    def smooth(x_: torch.Tensor, sigma_: torch.Tensor) -> torch.Tensor:
        return soft_smooth_log(f, x_, sigma_, n_trf, tau)

    out = select(x, lam)
    inp = ObjectiveInput(x, y, lam, out, out.sigma, smooth(x, out.sigma), prior, smooth=smooth, select=select,
                         idx=idx)
    return objective(inp), inp
