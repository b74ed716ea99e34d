"""Randomized smoothing: noise levels, the smoothed classifier and its statistics."""

from vrs.smoothing.smoothed import SmoothedClassifier

__all__ = ["SmoothedClassifier"]
