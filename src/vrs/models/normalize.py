"""Normalisation as the first layer of the model, so noise is added in [0,1] pixel space and the
mean/std travel with the checkpoint (as buffers), never with the data pipeline."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(backbone: nn.Module, mean: list[float], std: list[float]) -> nn.Sequential:
    """[0,1] images -> logits: Normalize, then the backbone."""
    return nn.Sequential(Normalize(mean, std), backbone)
