"""Attacks from config (the `attack` group, conf/attack/*.yaml), all against a `DefendedModel`.

| name              | where from                               | norm       | EOT draws        | restarts     |
|-------------------|------------------------------------------|------------|------------------|--------------|
| `pgd_linf`        | torchattacks.PGD                         | linf       | via m only       | wrapper      |
| `pgd_l2`          | torchattacks.PGDL2                       | l2         | via m only       | wrapper      |
| `eot_pgd`         | torchattacks.EOTPGD (linf); here (l2)    | linf, l2   | `eot`            | wrapper      |
| `apgd_eot`        | torchattacks.APGD(eot_iter=eot)          | linf, l2   | `eot`            | APGD's own   |
| `autoattack_rand` | torchattacks.AutoAttack(version="rand")  | linf, l2   | `eot` (20)       | -            |
| `cw_l2`           | torchattacks.CW (margin fixed), projected | l2        | via m only       | wrapper      |
| `fgsm`            | torchattacks.FGSM                        | linf       | via m only       | wrapper      |
| `sigma_down`      | here (`AdaptivePGD`): CE - beta log sigma | linf, l2  | `eot`            | wrapper      |
| `none`            | the clean input                          | -          | -                | -            |

"via m only": the attack itself takes one gradient per step; the soft smoothing inside the model
already averages m noise draws. eps is in [0,1] pixel units for both norms (L2 over the whole image;
L-inf values such as 8/255 are written as floats, 0.0313725...). CW minimises the L2 norm without a
bound; its result is projected onto the eps-ball so every attack answers the same question.

The wrapper for restarts runs the attack again on the inputs the soft classifier still gets right and
keeps, per input, the first adversarial example that fools it (the last try otherwise). Every result is
projected onto the eps-ball and into [0,1] (a no-op for a correct attack; a guard against rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torchattacks

from vrs.attacks.adaptive import NORMS, SIGMA_TARGETS, AdaptivePGD, project
from vrs.errors import ConfigError, check, check_choice

ATTACKS = ("pgd_linf", "pgd_l2", "eot_pgd", "apgd_eot", "autoattack_rand", "cw_l2", "fgsm", "sigma_down", "none")
ATTACK_NORMS = {"pgd_linf": ("linf",), "pgd_l2": ("l2",), "eot_pgd": NORMS, "apgd_eot": NORMS,
                "autoattack_rand": NORMS, "cw_l2": ("l2",), "fgsm": ("linf",), "sigma_down": NORMS, "none": NORMS}
NATIVE_RESTARTS = ("apgd_eot",)
NO_RESTARTS = ("autoattack_rand", "none")
USES_EOT = ("eot_pgd", "apgd_eot", "autoattack_rand", "sigma_down")
_TA_NORM = {"linf": "Linf", "l2": "L2"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def eps_list(cfg: Mapping) -> list[float]:
    """attack.eps as a list of floats (a single number or a list; `none` defaults to [0])."""
    eps = cfg.get("eps", 0.0)
    values = list(eps) if isinstance(eps, Sequence) and not isinstance(eps, str) else [eps]
    check(len(values) > 0, "attack.eps", eps, "a number >= 0 or a non-empty list of them")
    for v in values:
        check(_is_num(v) and v >= 0 and v == v and v != float("inf"), "attack.eps", eps,
              "a number >= 0 or a list of them (pixel units; write L-inf 8/255 as 0.0313725)")
    if cfg.get("norm") == "linf":
        for v in values:
            check(v <= 1.0, "attack.eps", eps, "at most 1 for the L-inf norm (pixels are in [0,1])")
    return [float(v) for v in values]


def check_attack_config(cfg: Mapping) -> None:
    """Raise ConfigError for anything wrong in the `attack` node, before any work starts."""
    name = cfg.get("name")
    check_choice("attack.name", name, ATTACKS)
    norm = cfg.get("norm", "l2")
    check_choice(f"attack.norm (for {name})", norm, ATTACK_NORMS[name])
    eps_list(cfg)
    if name == "none":
        return
    steps = cfg.get("steps", 1)
    check(_is_int(steps) and steps >= 1, "attack.steps", steps, "an integer >= 1")
    step = cfg.get("step_size")
    check(step is None or (_is_num(step) and step > 0), "attack.step_size", step, "null (2.5 * eps / steps) or > 0")
    restarts = cfg.get("restarts", 1)
    check(_is_int(restarts) and restarts >= 1, "attack.restarts", restarts, "an integer >= 1")
    if name in NO_RESTARTS:
        check(restarts == 1, "attack.restarts", restarts, f"1 for {name}")
    eot = cfg.get("eot", 1)
    check(_is_int(eot) and eot >= 1, "attack.eot", eot, "an integer >= 1")
    if name not in USES_EOT:
        check(eot == 1, "attack.eot", eot, f"1 for {name}: it takes one gradient per step (the model's m "
              f"noise draws are its averaging); use eot_pgd, apgd_eot, autoattack_rand or sigma_down for EOT")
    if name == "apgd_eot":
        check_choice("attack.loss", cfg.get("loss", "ce"), ("ce", "dlr"))
        rho = cfg.get("rho", 0.75)
        check(_is_num(rho) and 0 < rho < 1, "attack.rho", rho, "a number in (0, 1)")
    if name == "cw_l2":
        c, kappa, lr = cfg.get("c", 1.0), cfg.get("kappa", 0.0), cfg.get("lr", 0.01)
        check(_is_num(c) and c > 0, "attack.c", c, "a number > 0")
        check(_is_num(kappa) and kappa >= 0, "attack.kappa", kappa, "a number >= 0")
        check(_is_num(lr) and lr > 0, "attack.lr", lr, "a number > 0")
    if name == "sigma_down":
        check_choice("attack.sigma_target", cfg.get("sigma_target", "down"), SIGMA_TARGETS[1:])
        beta = cfg.get("beta", 1.0)
        check(_is_num(beta) and beta >= 0, "attack.beta", beta, "a number >= 0")


def step_size(cfg: Mapping, eps: float) -> float:
    """attack.step_size, or 2.5 * eps / steps (Madry et al.'s rule) when it is null."""
    s = cfg.get("step_size")
    return float(s) if s is not None else 2.5 * eps / int(cfg.get("steps", 1))


class CW(torchattacks.CW):
    """torchattacks.CW with its margin computed correctly for any logits.

    torchattacks 3.5.1 takes the best other class as max((1 - onehot) * logits): the label's slot becomes
    0, so when every other logit is negative (always, for the log-probabilities a DefendedModel returns)
    the margin is the constant 0 and CW never moves. Here the label's slot is masked with -inf instead.
    """

    def f(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(labels, outputs.shape[1]).bool()
        other = outputs.masked_fill(one_hot, float("-inf")).amax(dim=1)
        real = outputs.gather(1, labels.view(-1, 1)).squeeze(1)
        margin = other - real if self.targeted else real - other
        return torch.clamp(margin, min=-self.kappa)


def _inner(cfg: Mapping, model: torch.nn.Module, eps: float, num_classes: int, seed: int) -> Callable:
    name, norm = cfg["name"], cfg.get("norm", "l2")
    steps, eot = int(cfg.get("steps", 1)), int(cfg.get("eot", 1))
    alpha, rs = step_size(cfg, eps), bool(cfg.get("random_start", True))
    if name == "pgd_linf":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=rs)
    if name == "pgd_l2":
        return torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=rs)
    if name == "eot_pgd" and norm == "linf":
        return torchattacks.EOTPGD(model, eps=eps, alpha=alpha, steps=steps, eot_iter=eot, random_start=rs)
    if name == "eot_pgd":  # torchattacks has no L2 EOT-PGD
        return AdaptivePGD(model, eps=eps, alpha=alpha, steps=steps, norm="l2", eot_iter=eot, random_start=rs)
    if name == "apgd_eot":
        return torchattacks.APGD(model, norm=_TA_NORM[norm], eps=eps, steps=steps,
                                 n_restarts=int(cfg.get("restarts", 1)), seed=seed, loss=cfg.get("loss", "ce"),
                                 eot_iter=eot, rho=float(cfg.get("rho", 0.75)))
    if name == "autoattack_rand":
        atk = torchattacks.AutoAttack(model, norm=_TA_NORM[norm], eps=eps, version="rand", n_classes=num_classes,
                                      seed=seed)
        for sub in atk._autoattack.attacks:  # APGD-CE and APGD-DLR; torchattacks fixes 20 draws, 10 steps
            sub.eot_iter, sub.steps = eot, steps
        return atk
    if name == "cw_l2":
        return CW(model, c=float(cfg.get("c", 1.0)), kappa=float(cfg.get("kappa", 0.0)), steps=steps,
                               lr=float(cfg.get("lr", 0.01)))
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "sigma_down":
        return AdaptivePGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, eot_iter=eot,
                           beta=float(cfg.get("beta", 1.0)), sigma_target=cfg.get("sigma_target", "down"),
                           random_start=rs)
    raise ConfigError("attack.name", name, "one of " + ", ".join(ATTACKS))


@dataclass
class BoundedAttack:
    """An attack at one eps: (x, y) -> x_adv inside the eps-ball around x and inside [0,1]."""

    name: str
    norm: str
    eps: float
    model: torch.nn.Module
    inner: Callable | None
    restarts: int = 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        if self.inner is None or self.eps == 0:
            return x.clone()
        with torch.enable_grad():  # gradient attacks, also when called under no_grad (e.g. in validation)
            return self._attack(x, y)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for r in range(self.restarts):
            if r > 0 and hasattr(self.model, "resample_noise"):
                self.model.resample_noise()
            adv = project(self.inner(x[todo], y[todo]).detach(), x[todo], self.eps, self.norm)
            out[todo] = adv
            if r + 1 == self.restarts:
                break
            with torch.no_grad():
                fooled = self.model(adv).argmax(dim=1) != y[todo]
            todo = todo[~fooled]
            if todo.numel() == 0:
                break
        return out


def build_attack(cfg: Mapping, model: torch.nn.Module, eps: float, num_classes: int, seed: int = 0) -> BoundedAttack:
    """The attack named by cfg.name at radius eps against `model` (a DefendedModel, or any [0,1] -> logits
    module for the attacks that need no sigma)."""
    check_attack_config(cfg)
    name = cfg["name"]
    norm = cfg.get("norm", "l2")
    check(_is_num(eps) and eps >= 0, "attack.eps", eps, "a number >= 0")
    if name == "sigma_down" and not hasattr(model, "forward_with_sigma"):
        raise ConfigError("attack.name", name, "an attack on a DefendedModel (it needs the noise level sigma(x))")
    inner = None if name == "none" else _inner(cfg, model, float(eps), num_classes, seed)
    restarts = 1 if name in NATIVE_RESTARTS + NO_RESTARTS else int(cfg.get("restarts", 1))
    return BoundedAttack(name, norm, float(eps), model, inner, restarts)
