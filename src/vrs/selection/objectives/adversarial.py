"""`objective=adversarial`: the selector trained against the attack it must withstand.

    L(x, y, lambda) = (1 - lambda) * CE(x) + lambda * CE(x + delta)
    CE(u) = -log g_s(u)_y at sigma = h(u + eta, lambda)           (the selector re-selects at the moved input)
    delta ~ argmax_{||delta||_2 <= eps} CE(x + delta)             (`steps` L2 PGD steps, EOT over `eot` draws)

The attack differentiates the whole defended pipeline as the training sees it: the selector (on its own input
noise eta ~ N(0, sigma_h^2 I)), the noise at the selected sigma and the soft smoothing, with fresh noise every
pass (expectation over transformation). The loss then uses x + delta with delta fixed (no gradient through the
attack), so the selector learns the sigma under which the smoothed classifier survives the attack, and lambda
weighs robust against clean CE.

Sources: Salman, Li, Razenshteyn, Zhang, Zhang, Bubeck, Yang, "Provably Robust Deep Learning via Adversarially
Trained Smoothed Classifiers" (SmoothAdv), NeurIPS 2019: PGD on the soft smoothed classifier's CE with
Monte-Carlo noise; here with the selector inside the attacked function, as vrs.attacks does at test time.

[choice] L2 steps of size `step_size` (default 2 eps / steps) along the normalised gradient, projected onto the
eps-ball, a random start inside it (`random_start`); images are not clamped to [0, 1] (the smoothing noise
is not either). The attack passes run the selector in its current mode (in training its batch-norm statistics
also see the attacked batch). Cost: (steps * eot + 1) extra passes of the selector and the soft smoothing per
batch. Terms logged: `ce` (clean), `ce_adv`, `sigma_adv` (the sigma chosen at x + delta); validation (no
gradients there) logs the clean CE only.
"""

from __future__ import annotations

import torch

from vrs.errors import VRSError, check
from vrs.selection.objectives import Objective, ObjectiveInput, ObjectiveOutput
from vrs.selection.soft import soft_smooth_nll_log


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def _project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norm = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (eps / norm.clamp_min(eps))


class AdversarialObjective(Objective):
    name = "adversarial"

    def __init__(self, eps: float = 0.5, steps: int = 2, step_size: float | None = None, eot: int = 1,
                 random_start: bool = True):
        check(isinstance(eps, (int, float)) and eps > 0, "objective.eps", eps, "a number > 0 (L2, pixel units)")
        check(isinstance(steps, int) and steps >= 1, "objective.steps", steps, "an integer >= 1")
        check(step_size is None or (isinstance(step_size, (int, float)) and step_size > 0), "objective.step_size",
              step_size, "a number > 0, or null (2 eps / steps)")
        check(isinstance(eot, int) and eot >= 1, "objective.eot", eot, "an integer >= 1")
        self.eps, self.steps, self.eot, self.random_start = float(eps), steps, eot, bool(random_start)
        self.step_size = 2 * self.eps / steps if step_size is None else float(step_size)

    def _ce_at(self, inp: ObjectiveInput, u: torch.Tensor):
        out = inp.select(u, inp.lam)
        return soft_smooth_nll_log(inp.smooth(u, out.sigma), inp.y), out

    def attack(self, inp: ObjectiveInput) -> torch.Tensor:
        """delta (B, C, H, W), ||delta||_2 <= eps, detached."""
        x = inp.x.detach()
        delta = torch.zeros_like(x)
        if self.random_start:
            r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
            delta = _l2_normalise(torch.randn_like(x)) * r * self.eps
        for _ in range(self.steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = sum(self._ce_at(inp, x + delta)[0].sum() for _ in range(self.eot))
                (grad,) = torch.autograd.grad(loss, delta)
            delta = _project(delta.detach() + self.step_size * _l2_normalise(grad), self.eps)
        return delta.detach()

    def evaluate(self, inp: ObjectiveInput) -> ObjectiveOutput:
        """Validation runs without gradients (Lightning's inference mode), so no attack: the clean CE stands in
        for both terms (val/loss is the clean CE; vrs-attack measures the robustness)."""
        ce = soft_smooth_nll_log(inp.log_probs, inp.y)
        return ObjectiveOutput(ce, {"ce": ce})

    def __call__(self, inp: ObjectiveInput) -> ObjectiveOutput:
        if inp.select is None or inp.smooth is None:
            raise VRSError("the adversarial objective needs the selector and the soft smoothing (ObjectiveInput.select "
                           "and .smooth, as selector_step gives them)")
        ce = soft_smooth_nll_log(inp.log_probs, inp.y)
        ce_adv, out_adv = self._ce_at(inp, inp.x + self.attack(inp))
        loss = (1 - inp.lam) * ce + inp.lam * ce_adv
        return ObjectiveOutput(loss, {"ce": ce, "ce_adv": ce_adv.detach(), "sigma_adv": out_adv.sigma.detach()})
