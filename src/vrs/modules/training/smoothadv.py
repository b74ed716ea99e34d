"""`training=smoothadv`: SmoothAdv, adversarial training of the smoothed classifier (Salman, Li, Razenshteyn, Zhang,
Zhang, Bubeck, Yang, "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019),
its PGD variant with m noise draws ("SmoothAdv_PGD, m_train").

    L(x, y) = 1/m sum_j CE(f(x' + sigma z_j), y),    z_j ~ N(0, I), j = 1..m, drawn once per step
    x' = argmax_{||x' - x||_2 <= eps_t, x' in [0, 1]^d}  -log( 1/m sum_j softmax(f(x' + sigma z_j))_y )
    eps_t = eps * min(1, (t + 1) / warmup)    in epoch t (0-based): the eps warm-up

x' comes from `steps` steps of L2 PGD on the soft smoothed classifier's cross-entropy over the same m draws z_j
(fixed during the attack, then reused by the loss), from x (no random start), step size 2 eps_t / steps along the
gradient normalised per image, each step projected onto the eps_t ball and clipped to [0, 1]
(vrs.attacks.adaptive.project). The network runs in eval mode during the attack (batch-norm statistics
neither used from the batch nor updated) and the attack asks for gradients of the input only. x' is then a
constant: the weights' gradient comes from the loss at x' alone (no gradient flows through the attack).

Hyper-parameters: `m` (1, 2, 4, 8 in the paper), `steps` (1 to 10), `eps` (0.25 to 2 on CIFAR-10, in [0, 1] pixel
L2 units: the paper's eps of 255/256 is 0.996), `warmup` (epochs of the linear eps warm-up, 10 in the paper's
CIFAR-10 and Jeong & Shin's MNIST runs). Deviations: the paper splits each loader batch of 256 into m chunks of 256/m
images with m draws each; here each batch's images get m draws each (the presets set data.batch_size = 256 / m,
which gives the same images per step and steps per epoch). A zero gradient (a saturated image) leaves the image
where it is (the paper's code steps in a random direction then).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vrs.attacks.adaptive import project
from vrs.errors import check
from vrs.modules.training import TrainingBatch, TrainingMethod, TrainingOutput, cross_entropy_per_draw
from vrs.selection.soft import log_mean_softmax, soft_smooth_nll_log
from vrs.smoothing.noise import standard_normal


@contextmanager
def eval_mode(network: torch.nn.Module):
    """The network in eval mode inside the block, its own mode restored after."""
    was = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was)


def soft_smoothed_ce(f, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B,): -log(1/m sum_j softmax(f(x + noise_j))_y), noise (B, m, C, H, W) already scaled by sigma."""
    b, m = noise.shape[:2]
    logits = f((x.unsqueeze(1) + noise).reshape(b * m, *x.shape[1:])).view(b, m, -1)
    return soft_smooth_nll_log(log_mean_softmax(logits), y)


def smoothadv_attack(f, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """x' (B, C, H, W), detached: `steps` L2 PGD steps on `soft_smoothed_ce` from x, within the eps ball and [0, 1]."""
    x = x.detach()
    adv = x.clone()
    step = 2 * eps / steps
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(soft_smoothed_ce(f, adv, y, noise).sum(), adv)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        adv = project(adv.detach() + step * grad / norm, x, eps, "l2")
    return adv.detach()


class SmoothAdv(TrainingMethod):
    name = "smoothadv"

    def __init__(self, m: int = 4, steps: int = 10, eps: float = 1.0, warmup: int = 10):
        check(isinstance(m, int) and not isinstance(m, bool) and m >= 1, "training.m", m, "an integer >= 1")
        check(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "training.steps", steps,
              "an integer >= 1")
        check(isinstance(eps, (int, float)) and eps > 0, "training.eps", eps, "a number > 0 (L2, [0, 1] pixel units)")
        check(isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0, "training.warmup", warmup,
              "an integer >= 0 (epochs; 0: no warm-up)")
        self.m, self.steps, self.eps, self.warmup = m, steps, float(eps), warmup

    def graph_conflict(self) -> str | None:
        return "training=smoothadv runs a PGD attack inside each step and its eps changes between epochs"

    def eps_at(self, epoch: int) -> float:
        """eps in `epoch` (0-based): eps * min(1, (epoch + 1) / warmup)."""
        return self.eps if self.warmup == 0 else self.eps * min(1.0, (epoch + 1) / self.warmup)

    def __call__(self, batch: TrainingBatch) -> TrainingOutput:
        x, y = batch.x, batch.y
        b = x.shape[0]
        shape = (b, self.m, *x.shape[1:])
        sigma = torch.as_tensor(batch.sigma, dtype=x.dtype, device=x.device).expand(b)
        noise = sigma.view(b, 1, *([1] * (x.dim() - 1))) * standard_normal(shape, device=x.device, dtype=x.dtype)
        eps = self.eps_at(batch.epoch)
        with eval_mode(batch.network):
            adv = smoothadv_attack(batch.f, x, y, noise, eps, self.steps)
        logits = batch.f((adv.unsqueeze(1) + noise).reshape(b * self.m, *x.shape[1:])).view(b, self.m, -1)
        ce = cross_entropy_per_draw(logits, y).mean()
        moved = (adv - x).flatten(1).norm(dim=1).mean()
        return TrainingOutput(ce, logits[:, 0], {"eps": ce.new_tensor(eps), "delta_l2": moved.detach()})
