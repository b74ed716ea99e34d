"""Building a network from its config: the one place that turns (network config, data spec) into a module,
for training (vrs.modules) and for reading checkpoints (vrs.checkpoint) alike."""

from __future__ import annotations

from hydra.utils import instantiate
from torch import nn

from vrs.models.normalize import with_normalization


def build_network(net: dict, data: dict) -> nn.Module:
    """[0,1] images -> logits: Normalize(data mean/std) followed by the configured backbone."""
    return with_normalization(instantiate(net), data["mean"], data["std"])
