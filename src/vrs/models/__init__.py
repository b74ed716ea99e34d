"""Base classifiers. Every network built for training or certification starts with `Normalize`."""

from vrs.models.build import build_network
from vrs.models.normalize import Normalize, with_normalization

__all__ = ["Normalize", "build_network", "with_normalization"]
