"""vrs-attack's own nodes (conf/attack.yaml: attack, defense, predict), typed. The attack node's images keys are
conf/attack.yaml's; the attack group (conf/attack/<name>.yaml) adds the attack's own keys, each attack some of them
(name, norm, eps, steps, ...): vrs.attacks.factory.check_attack_config checks those, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrs.config.rules import (INDICES, LAMBDA, SPLIT, TEXT, Checked, Rule, integer, key, number, one_of,
                              optional)


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
    # keys of the sigma_search node, checked by building the search with them (vrs.config.certify.check_sigma_search)
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


@dataclass(kw_only=True)
class AttackConfig(Checked):
    """Which images (conf/attack.yaml), and the attack (the attack group). Not typed by Hydra: each attack's yaml
    holds only its own keys, so vrs.config_schema builds it with `AttackConfig.of(node)` (closed: a typo is
    refused)."""

    NODE = "attack"

    split: str = key(SPLIT)
    skip: int = key(integer(1))
    max: int | None = key(optional(integer(1), " (all images)"))
    indices: Any = key(optional(INDICES))
    batch_size: int = key(integer(1))
    world_size: int = key(integer(1))
    out_dir: str | None = key(optional(TEXT, " (the run directory)"))
    # the attack group's keys (absent: the attack does not take it, or its default)
    name: str = key(None, absent_ok=True)
    norm: str = key(None, absent_ok=True)
    eps: Any = key(None, absent_ok=True)
    steps: int = key(None, absent_ok=True)
    step_size: float | None = key(None, absent_ok=True)
    restarts: int = key(None, absent_ok=True)
    random_start: bool = key(None, absent_ok=True)
    eot: int = key(None, absent_ok=True)
    loss: str = key(None, absent_ok=True)
    rho: float = key(None, absent_ok=True)
    c: float = key(None, absent_ok=True)
    kappa: float = key(None, absent_ok=True)
    lr: float = key(None, absent_ok=True)
    beta: float = key(None, absent_ok=True)
    sigma_target: str = key(None, absent_ok=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        from vrs.attacks.factory import check_attack_config  # deferred: torch, off the apps' start-up path

        check_attack_config(self.given())
