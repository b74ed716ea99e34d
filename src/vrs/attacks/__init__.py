"""Empirical robustness: attacks on the whole defended pipeline (docs/method.md section 7).

- `DefendedModel`: the soft-smoothed classifier as a differentiable [0,1] -> logits module (fixed sigma
  or the VRS selector's sigma), the thing every attack differentiates;
- `SelectorSigma`: the median-smoothed selector with a gradient surrogate (straight-through / mean);
- `build_attack`: the `attack` config group (torchattacks' PGD, PGDL2, EOTPGD, APGD, AutoAttack-rand,
  CW, FGSM, and the adaptive `sigma_down` written here);
- `vrs.attacks.evaluate`: attack a batch and classify the result by PREDICT (abstain = wrong) and by the
  soft classifier.
"""

from vrs.attacks.adaptive import AdaptivePGD, project, random_start
from vrs.attacks.defended import DefendedModel, SelectorSigma
from vrs.attacks.factory import ATTACKS, BoundedAttack, build_attack, check_attack_config, eps_list

__all__ = ["ATTACKS", "AdaptivePGD", "BoundedAttack", "DefendedModel", "SelectorSigma", "build_attack",
           "check_attack_config", "eps_list", "project", "random_start"]
