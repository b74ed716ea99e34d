"""`objective=paper`: the VRS paper's variational objective (Hase et al. 2024; docs/method.md section 4).

    L(x, y, lambda) = (1 - lambda) * CE + lambda * KL(p || q),    CE = -log g_s(x)_y

g_s the soft-smoothed base classifier at the selector's sigma (docs/method.md section 3), p the noise the selector
chose, q the noise prior (the `prior` group: gaussian, lognormal, uniform; `prior.kl` is per sample and, for the
Gaussian prior, per dimension). Terms logged: `ce`, `kl`.
"""

from __future__ import annotations

from vrs.selection.objectives import Objective, ObjectiveInput, ObjectiveOutput
from vrs.selection.soft import soft_smooth_nll_log


class PaperObjective(Objective):
    name = "paper"

    def __call__(self, inp: ObjectiveInput) -> ObjectiveOutput:
        ce = soft_smooth_nll_log(inp.log_probs, inp.y)
        kl = inp.prior.kl(inp.out)
        return ObjectiveOutput((1 - inp.lam) * ce + inp.lam * kl, {"ce": ce, "kl": kl})
