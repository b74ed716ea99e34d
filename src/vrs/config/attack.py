"""vrs-attack's own nodes (conf/attack.yaml: defense, predict), typed. The attack node itself (which images, and
the attack group's name, norm, eps, steps, ...) is checked by vrs.attacks.factory.check_attack_config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import LAMBDA, Checked, Rule, integer, key, number, one_of, optional


@dataclass
class DefenseConfig(Checked):
    """The differentiable pipeline the attack differentiates (vrs.attacks.DefendedModel)."""

    NODE = "defense"

    sigma: float | None = key(optional(number(gt=0), " (the training sigma, or the VRS selector)"))
    lam: float = key(LAMBDA)
    m: int = key(integer(1))
    noise: str = key(one_of("fresh", "fixed"))
    tau: float = key(number(gt=0))
    selector_grad: str = key(one_of("straight_through", "mean", "median"))
    selector_smoothing: str = key(one_of("median", "vote"))
    # keys of the sigma_search node, checked by building the search with them (vrs.config_schema.cross_checks)
    search_surrogate: Any = key(optional(Rule(lambda v: isinstance(v, dict), "a mapping of sigma_search keys"),
                                         " (the deployed search in every forward pass)"))
    n_h: int = key(integer(0))
    deployed_n_h: int | None = key(optional(integer(1), " (the checkpoint's)"))
    max_batch: int | None = key(optional(integer(1), " (all at once)"))
    precision: str = key(one_of("fp32", "bf16", "fp16"))


@dataclass
class PredictConfig(Checked):
    """PREDICT on the clean and the adversarial input."""

    NODE = "predict"

    # n >= 1, alpha in (0, 1), batch_size >= 1: vrs.smoothing.smoothed.check_sampling, in __post_init__
    n: int = key(None)
    alpha: float = key(None)
    batch_size: int = key(None)
    precision: str = key(one_of("fp32", "tf32", "bf16", "fp16"))

    def __post_init__(self) -> None:
        super().__post_init__()
        from vrs.smoothing.smoothed import check_sampling  # deferred: torch, off the apps' start-up path

        check_sampling(self.n, self.alpha, self.batch_size, prefix="predict.")
