"""`training=consistency`: consistency regularization (Jeong & Shin, "Consistency Regularization for Certified
Robustness of Smoothed Classifiers", NeurIPS 2020).

    L(x, y) = 1/m sum_j CE(F_j, y)  +  lambda * 1/m sum_j KL(F_hat || F_j)  +  eta * H(F_hat)
    F_j = softmax(f(x + sigma z_j)),  z_j ~ N(0, I), j = 1..m;     F_hat = 1/m sum_j F_j

averaged over the batch. The KL term asks the m noisy predictions to agree with their mean (the soft smoothed
classifier), so the smoothed classifier's vote becomes confident, which its certified radius rewards; the entropy
term keeps the mean itself confident (lambda alone can be lowered by spreading F_hat). Gradients flow through every
F_j, including through F_hat inside the KL and entropy terms (the paper's code does not detach the mean).

Hyper-parameters: `m` (noise draws per image, 2 in the paper), `lam` (lambda: 20 on MNIST at every sigma; 10 or
20 on CIFAR-10), `eta` (0.5). Deviations: the paper splits each loader batch of 256 into m chunks of 256/m images
with m draws each; here each batch's images get m draws each (the presets set data.batch_size = 256 / m, which gives
the same images per step and steps per epoch). log F_hat is computed as a log-mean-exp of log-softmaxes (exact,
where the paper clamps F_hat at 1e-20 before its log).
"""

from __future__ import annotations

import torch

from vrs.errors import check
from vrs.modules.training import TrainingBatch, TrainingMethod, TrainingOutput, cross_entropy_per_draw
from vrs.selection.soft import log_mean_softmax, noisy_logits


def consistency_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL, H), each (B,), from logits (B, m, K) of m noisy draws per image:
    KL = 1/m sum_j KL(F_hat || F_j) and H = H(F_hat), F_j = softmax(logits_j), F_hat = 1/m sum_j F_j."""
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)                      # (B, m, K) log F_j
    log_mean = log_mean_softmax(logits)                            # (B, K) log F_hat
    mean = log_mean.exp()
    kl = (mean.unsqueeze(1) * (log_mean.unsqueeze(1) - log_p)).sum(-1).mean(1)
    entropy = -(mean * log_mean).sum(-1)
    return kl, entropy


def consistency_loss(logits: torch.Tensor, y: torch.Tensor, lam: float, eta: float
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's loss (module docstring), a scalar, and its terms (ce, kl, entropy: batch means), from logits
    (B, m, K) of m noisy draws of each image and labels y (B,)."""
    ce = cross_entropy_per_draw(logits, y).mean()
    kl, entropy = consistency_terms(logits)
    kl, entropy = kl.mean(), entropy.mean()
    return ce + lam * kl + eta * entropy, {"ce": ce, "kl": kl, "entropy": entropy}


class Consistency(TrainingMethod):
    name = "consistency"

    def __init__(self, m: int = 2, lam: float = 20.0, eta: float = 0.5):
        check(isinstance(m, int) and not isinstance(m, bool) and m >= 2, "training.m", m,
              "an integer >= 2 (the consistency term compares noisy draws of one image)")
        check(isinstance(lam, (int, float)) and lam >= 0, "training.lam", lam, "a number >= 0")
        check(isinstance(eta, (int, float)) and eta >= 0, "training.eta", eta, "a number >= 0")
        self.m, self.lam, self.eta = m, float(lam), float(eta)

    def __call__(self, batch: TrainingBatch) -> TrainingOutput:
        logits = noisy_logits(batch.f, batch.x, batch.sigma, self.m)
        loss, terms = consistency_loss(logits, batch.y, self.lam, self.eta)
        return TrainingOutput(loss, logits[:, 0], {k: v.detach() for k, v in terms.items()})
