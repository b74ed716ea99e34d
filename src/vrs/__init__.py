"""Variational Randomized Smoothing (VRS): sample-wise randomized smoothing with Hydra + Lightning.

Flow: data -> models -> smoothing -> modules (Lightning) -> apps (train, certify, attack, report).
"""

__version__ = "0.1.0"
