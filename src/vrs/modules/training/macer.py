"""`training=macer`: MACER (Zhai, Dan, He, Zhang, Gong, Ravikumar, Hsieh, Wang, "MACER: Attack-free and Scalable
Robust Training via Maximizing Certified Radius", ICLR 2020).

    L(x, y) = -log g(x)_y  +  lambda * 1[argmax G(x) = y] * sigma/2 * max(0, gamma - xi(x)),
    xi(x) = Phi^-1(G(x)_y) - Phi^-1(max_{c != y} G(x)_c)
    g(x) = 1/k sum_j softmax(f(x + sigma z_j)),   G(x) = 1/k sum_j softmax(beta * f(x + sigma z_j)),   z_j ~ N(0, I)

averaged over the batch. sigma/2 * xi is the certified radius of the soft smoothed classifier G (Cohen's radius
with the soft probabilities in place of the Monte-Carlo bounds; sigma per image under noise=multi), so the hinge
pushes the radius of every correctly classified image up to sigma * gamma / 2 and is zero past that margin; the
inverse temperature beta sharpens G towards the hard vote that certification counts. Gradients flow into the
network through both terms, into the radius only for images whose top class under G is the label and whose xi is
finite and at most gamma (the others contribute nothing, as in the paper's code).

Hyper-parameters: `k` (noise draws per image, 16), `gamma` (hinge margin, 8), `beta` (16), `lam` (lambda: 12 at
sigma 0.25 and 0.5, 4 at 1.0 on CIFAR-10; 16, 16, 6 on MNIST in Jeong & Shin's reproduction), `deferred_epochs`
(lambda = 0 for the first epochs: Jeong & Shin's MNIST runs start the radius term after the first learning-rate drop;
0 = from the start, as the MACER paper). Deviations: log g is a log-mean-exp of log-softmaxes (exact, where the paper
adds 1e-10 inside the log); an image whose xi is infinite (G(x)_y rounds to 1 in float32) is past the margin, as in
the paper's code, which drops it.
"""

from __future__ import annotations

import torch

from vrs.errors import check
from vrs.modules.training import TrainingBatch, TrainingMethod, TrainingOutput
from vrs.selection.soft import log_mean_softmax, noisy_logits, soft_smooth_nll_log


def macer_hinge(logits: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, gamma: float, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge (B,), active (B,) bool): hinge = sigma/2 * (gamma - xi) on the active images (top class under G is y,
    xi finite and at most gamma), 0 on the others; xi = Phi^-1(top-1 of G) - Phi^-1(top-2 of G).
    logits: (B, k, K) of k noisy draws per image; sigma: (B,) or a scalar."""
    probs = torch.softmax(beta * logits.float(), dim=-1).mean(1)                  # G(x), (B, K)
    top = torch.topk(probs, 2, dim=1)
    p1, p2 = top.values[:, 0], top.values[:, 1]
    with torch.no_grad():
        xi = torch.special.ndtri(p1) - torch.special.ndtri(p2)
        active = (top.indices[:, 0] == y) & torch.isfinite(xi) & (xi <= gamma)
    # where() passes a zero gradient to the rows it does not take, and 0 * Phi^-1'(1) = 0 * inf = nan: the inactive
    # rows get harmless probabilities before Phi^-1, so no nan reaches the weights.
    p1 = torch.where(active, p1, torch.full_like(p1, 0.75))
    p2 = torch.where(active, p2, torch.full_like(p2, 0.25))
    margin = gamma - (torch.special.ndtri(p1) - torch.special.ndtri(p2))
    sigma = torch.as_tensor(sigma, dtype=margin.dtype, device=margin.device)
    return torch.where(active, sigma / 2 * margin, torch.zeros_like(margin)), active


def macer_loss(logits: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, lam: float, gamma: float, beta: float
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's loss (module docstring), a scalar, and its terms (ce, hinge, and `active`, the share of images
    inside the hinge: batch means), from logits (B, k, K) of k noisy draws per image, labels y (B,) and noise levels
    sigma (B,)."""
    ce = soft_smooth_nll_log(log_mean_softmax(logits), y).mean()
    hinge, active = macer_hinge(logits, y, sigma, gamma, beta)
    hinge = hinge.mean()
    return ce + lam * hinge, {"ce": ce, "hinge": hinge, "active": active.float().mean()}


class MACER(TrainingMethod):
    name = "macer"

    def __init__(self, k: int = 16, lam: float = 12.0, gamma: float = 8.0, beta: float = 16.0,
                 deferred_epochs: int = 0):
        check(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "training.k", k, "an integer >= 1")
        check(isinstance(lam, (int, float)) and lam >= 0, "training.lam", lam, "a number >= 0")
        check(isinstance(gamma, (int, float)) and gamma > 0, "training.gamma", gamma, "a number > 0")
        check(isinstance(beta, (int, float)) and beta > 0, "training.beta", beta, "a number > 0")
        check(isinstance(deferred_epochs, int) and not isinstance(deferred_epochs, bool) and deferred_epochs >= 0,
              "training.deferred_epochs", deferred_epochs, "an integer >= 0")
        self.k, self.lam, self.gamma, self.beta = k, float(lam), float(gamma), float(beta)
        self.deferred_epochs = deferred_epochs

    def graph_conflict(self) -> str | None:
        if self.deferred_epochs:  # a captured step would keep the lambda of the epoch it was captured in
            return "training=macer with training.deferred_epochs > 0 changes lambda between epochs"
        return None

    def lam_at(self, epoch: int) -> float:
        """lambda in `epoch` (0-based): 0 while the radius term is deferred."""
        return 0.0 if epoch < self.deferred_epochs else self.lam

    def __call__(self, batch: TrainingBatch) -> TrainingOutput:
        logits = noisy_logits(batch.f, batch.x, batch.sigma, self.k)
        loss, terms = macer_loss(logits, batch.y, batch.sigma, self.lam_at(batch.epoch), self.gamma, self.beta)
        return TrainingOutput(loss, logits[:, 0], {k: v.detach() for k, v in terms.items()})
