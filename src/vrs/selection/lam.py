"""Samplers of the trade-off knob lambda for conditional meta-learning (docs/method.md section 4).

lambda is drawn at random for every batch (default U[0,1]) or for every sample (`per_sample=True`), and
the selector is conditioned on it, so one selector covers the whole accuracy/robustness trade-off.
"""

from __future__ import annotations

import torch

from vrs.errors import check, check_choice

DISTS = ("uniform", "beta", "fixed")


def check_lambda(lam, key: str = "lam") -> float:
    """A test-time lambda: a number in [0, 1]."""
    ok = isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0.0 <= float(lam) <= 1.0
    check(ok, key, lam, "a number in [0, 1]")
    return float(lam)


class LambdaSampler:
    """dist: uniform on [low, high] | beta(a, b) | fixed at `value`; per_sample: one lambda per sample
    instead of one per batch."""

    def __init__(self, dist: str = "uniform", low: float = 0.0, high: float = 1.0, a: float = 1.0, b: float = 1.0,
                 value: float = 0.5, per_sample: bool = False):
        check_choice("module.lam.dist", dist, DISTS)
        check_lambda(low, "module.lam.low")
        check_lambda(high, "module.lam.high")
        check(low <= high, "module.lam.high", high, f"a number >= module.lam.low ({low})")
        check(a > 0 and b > 0, "module.lam.a/b", (a, b), "positive numbers")
        check_lambda(value, "module.lam.value")
        self.dist, self.low, self.high, self.a, self.b = dist, float(low), float(high), float(a), float(b)
        self.value, self.per_sample = float(value), bool(per_sample)

    def __call__(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        n = batch_size if self.per_sample else 1
        if self.dist == "uniform":
            lam = self.low + (self.high - self.low) * torch.rand(n, device=device)
        elif self.dist == "beta":
            lam = torch.distributions.Beta(torch.tensor(self.a), torch.tensor(self.b)).sample((n,)).to(device)
        else:
            lam = torch.full((n,), self.value, device=device)
        return lam.expand(batch_size).contiguous() if n == 1 else lam
