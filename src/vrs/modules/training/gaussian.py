"""`training=gaussian`: Gaussian noise augmentation, the default (Cohen, Rosenfeld, Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019).

    L(x, y) = CE(f(x + sigma * z), y),    z ~ N(0, I), one fresh draw per image and step

sigma: each image's noise level from the `noise` group (one fixed sigma, or drawn per image for VRS's multi-sigma
base classifier). The gradient reaches the weights through the one noisy copy; the noise is a constant.
Hyper-parameters: none. Deviation: none (Cohen et al. add the noise to the normalised image of their data
pipeline's scale; here it is added in [0, 1] pixel space before the network's normalisation layer, as certification
adds it, so sigma means the same in training and certification).
"""

from __future__ import annotations

import torch

from vrs.modules.training import TrainingBatch, TrainingMethod, TrainingOutput
from vrs.smoothing.noise import add_noise


class GaussianAugmentation(TrainingMethod):
    name = "gaussian"

    def __call__(self, batch: TrainingBatch) -> TrainingOutput:
        logits = batch.f(add_noise(batch.x, batch.sigma))
        return TrainingOutput(torch.nn.functional.cross_entropy(logits, batch.y), logits)
