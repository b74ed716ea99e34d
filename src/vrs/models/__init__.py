"""Base classifiers. Every network built for training or certification starts with `Normalize`."""

from vrs.models.normalize import Normalize, with_normalization

__all__ = ["Normalize", "with_normalization"]
