"""The assembled defended model: base classifier f, selector h and median-smoothing settings.

It holds no file reading: vrs.checkpoint reads VRS checkpoints (`load_vrs`, `LoadedCheckpoint.vrs_model`) and
builds this model from them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from vrs.selection.median import MedianSmoothing, deployed_sigma
from vrs.selection.networks import NoiseSelector


class VRSModel(nn.Module):
    """The defended pipeline's parts: base classifier f, selector h, median-smoothing settings.

    `sigma(x, lam)` is the deployed noise level: snap(clip(median_j h(x + eta_j, lam))) over n_h draws.
    """

    def __init__(self, base: nn.Module, selector: NoiseSelector, median: MedianSmoothing, data: dict,
                 meta: dict | None = None):
        super().__init__()
        self.base, self.selector, self.median, self.data = base.eval(), selector.eval(), median, data
        self.meta = meta or {}

    @property
    def sigma_min(self) -> float:
        return self.selector.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.selector.sigma_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base classifier logits (the noise is added by the caller)."""
        return self.base(x)

    @torch.no_grad()
    def sigma(self, x: torch.Tensor, lam, n_h: int | None = None, generator=None,
              snap_to_grid: bool = True) -> torch.Tensor:
        """The deployed sigma (B,) (`deployed_sigma`) with this model's median-smoothing settings; n_h
        copies (default median.n_h), from `generator` (one, one per image, or None: torch's global RNG)."""
        median = self.median if snap_to_grid else replace(self.median, grid=None)
        return deployed_sigma(self.selector, x, lam, median, n_h or self.median.n_h, generator)
