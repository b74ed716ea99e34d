"""Attacks torchattacks does not have, written as torchattacks `Attack`s (same mode handling and call
convention): PGD with EOT gradient averaging under the L2 norm as well as L-inf, and the adaptive
`sigma_down` attack on the noise-level selector.

`AdaptivePGD` maximises, by projected gradient ascent with `eot_iter` gradient draws per step,

    loss(x') = CE(logits(x'), y) + beta * S(sigma(x'))

where logits and sigma come from one forward pass of a `DefendedModel` and S is
- ``"none"``: 0 (plain EOT-PGD);
- ``"down"``: -log sigma(x'): drive the selector's noise level down (less noise = a smaller certified
  radius and a base classifier that is easier to fool), while keeping the label loss;
- ``"away"``: (log sigma(x') - log sigma(x))^2: push the noise level away from its clean value, in
  whichever direction hurts.
Against fixed-sigma smoothing S is constant and the attack is EOT-PGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from vrs.errors import check, check_choice

NORMS = ("linf", "l2")
SIGMA_TARGETS = ("none", "down", "away")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """x_adv pulled back into the eps-ball around x (L-inf or L2) and into [0,1].

    Clamping to [0,1] moves every coordinate towards x (which is in [0,1]), so it never leaves the ball;
    the L2 branch rescales once more, by a hair, when float rounding lands a norm just above eps."""
    view = (-1, *([1] * (x.dim() - 1)))
    if norm == "linf":
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    delta = x_adv - x
    n = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    out = (x + delta * (eps / n).clamp(max=1.0).view(view)).clamp(0.0, 1.0)
    d = out - x
    n = d.flatten(1).norm(p=2, dim=1)
    over = n > eps
    if bool(over.any()):
        scale = torch.where(over, eps / n.clamp_min(1e-12) * (1 - 1e-6), torch.ones_like(n))
        out = (x + d * scale.view(view)).clamp(0.0, 1.0)
    return out


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (L-inf: uniform cube; L2: uniform direction,
    radius uniform on [0, eps], as torchattacks' PGDL2), clipped to [0,1]."""
    if norm == "linf":
        return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    d = torch.randn_like(x)
    n = d.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))
    r = torch.rand_like(n)
    return project(x + d / n * r * eps, x, eps, "l2")


class AdaptivePGD(Attack):
    """PGD with EOT (and, optionally, a term on the selector's sigma) against a `DefendedModel`.

    Args:
        model: a DefendedModel (anything with `forward_with_sigma(x) -> (logits, sigma)`).
        eps, alpha, steps: radius, step size and number of steps (pixel units).
        norm: "linf" (signed-gradient steps) or "l2" (normalised-gradient steps).
        eot_iter: gradient draws averaged per step (fresh noise each, when the model's noise is fresh).
        beta: weight of the sigma term; sigma_target: "none", "down" or "away" (module docstring).
        random_start: start from a random point of the ball.
    """

    def __init__(self, model, eps: float, alpha: float, steps: int = 20, norm: str = "l2", eot_iter: int = 1,
                 beta: float = 0.0, sigma_target: str = "none", random_start: bool = True):
        super().__init__("AdaptivePGD", model)
        check_choice("attack.norm", norm, NORMS)
        check_choice("attack.sigma_target", sigma_target, SIGMA_TARGETS)
        check(isinstance(steps, int) and steps >= 1, "attack.steps", steps, "an integer >= 1")
        check(isinstance(eot_iter, int) and eot_iter >= 1, "attack.eot", eot_iter, "an integer >= 1")
        self.eps, self.alpha, self.steps, self.norm = float(eps), float(alpha), steps, norm
        self.eot_iter, self.beta, self.sigma_target = eot_iter, float(beta), sigma_target
        self.random_start = random_start
        self.supported_mode = ["default", "targeted"]

    def objective(self, x_adv: torch.Tensor, labels: torch.Tensor, log_sigma0: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss (B,) to maximise."""
        if hasattr(self.model, "forward_with_sigma"):
            logits, sigma = self.model.forward_with_sigma(x_adv)
        elif self.sigma_target == "none":  # a plain [0,1] -> logits model
            logits, sigma = self.get_logits(x_adv), None
        else:
            raise TypeError(f"sigma_target={self.sigma_target!r} needs a DefendedModel (forward_with_sigma)")
        ce = F.cross_entropy(logits, labels, reduction="none")
        loss = -ce if self.targeted else ce
        if self.sigma_target == "down":
            loss = loss - self.beta * torch.log(sigma)
        elif self.sigma_target == "away":
            loss = loss + self.beta * (torch.log(sigma) - log_sigma0) ** 2
        return loss

    def gradient(self, x_adv: torch.Tensor, labels: torch.Tensor,
                 log_sigma0: torch.Tensor | None = None) -> torch.Tensor:
        """The EOT gradient: the mean over `eot_iter` forward passes (fresh noise each, in `fresh` mode)
        of d objective / d x_adv."""
        x_adv = x_adv.detach().requires_grad_(True)
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):
            loss = self.objective(x_adv, labels, log_sigma0).sum()
            grad += torch.autograd.grad(loss, x_adv)[0]
        return grad / self.eot_iter

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        if self.targeted:
            labels = self.get_target_label(images, labels)
        log_sigma0 = None
        if self.sigma_target == "away":
            with torch.no_grad():
                log_sigma0 = torch.log(self.model.sigma_of(images))
        adv = random_start(images, self.eps, self.norm) if self.random_start else images.clone()
        for _ in range(self.steps):
            grad = self.gradient(adv, labels, log_sigma0)
            with torch.no_grad():
                if self.norm == "linf":
                    step = grad.sign()
                else:
                    n = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
                    step = grad / n.view(-1, *([1] * (grad.dim() - 1)))
                adv = project(adv.detach() + self.alpha * step, images, self.eps, self.norm)
        return adv.detach()
