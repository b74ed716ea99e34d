"""Lightning callbacks: empirical and certified robustness on a fixed subset during training."""

from vrs.callbacks.robustness import CertifiedRobustness, EmpiricalRobustness

__all__ = ["CertifiedRobustness", "EmpiricalRobustness"]
