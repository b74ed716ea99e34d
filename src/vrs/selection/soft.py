"""Soft smoothing: the differentiable training signal for the selector (method.md section 3).

g_s(x) = 1/N * sum_k softmax(f(x + sigma_s * z_k) / tau), z_k ~ N(0, I), k = 1..N.

The noise is reparameterised (x + sigma_s * z with z drawn independently of sigma_s), so gradients reach
sigma_s, and through it the selector, even when the base classifier f is frozen.
"""

from __future__ import annotations

from typing import Callable

import torch

from vrs.errors import check


def soft_smooth(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor | float,
                n: int, tau: float = 1.0) -> torch.Tensor:
    """Soft-smoothed class probabilities (B, K) of `f` at `x` (B, C, H, W) with per-sample `sigma` (B,).

    The N noisy copies of each image go through f in one batch of B * N images.
    """
    check(isinstance(n, int) and n >= 1, "n_trf", n, "an integer >= 1")
    check(tau > 0, "tau", tau, "a number > 0")
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(b)
    xs = x.unsqueeze(1).expand(b, n, *x.shape[1:])
    noisy = xs + sigma.view(b, 1, *([1] * (x.dim() - 1))) * torch.randn_like(xs)
    logits = f(noisy.reshape(b * n, *x.shape[1:]))
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: softmax and the log in float32
        logits = logits.float()
    return torch.softmax(logits / tau, dim=-1).view(b, n, -1).mean(dim=1)


def soft_smooth_nll(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample L_CE = -log g_s(x)_y, (B,)."""
    return -torch.log(probs.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(eps))
