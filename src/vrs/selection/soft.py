"""Soft smoothing: the differentiable training signal for the selector (docs/method.md section 3), and the
soft-smoothed classifier that attacks differentiate (vrs.attacks.defended).

g_s(x) = 1/N * sum_k softmax(f(x + sigma_s * z_k) / tau), z_k ~ N(0, I), k = 1..N.

The noise is reparameterised (x + sigma_s * z with z drawn independently of sigma_s), so gradients reach
sigma_s, and through it the selector, even when the base classifier f is frozen. log g_s is computed as
log-mean-exp of log-softmax (`log_mean_softmax`): the log of an averaged softmax loses a class whose
probability underflows, which is exactly the class a cross-entropy loss or an attack needs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from vrs.errors import check
from vrs.smoothing.noise import standard_normal


def log_mean_softmax(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """log(1/N * sum_k softmax(logits_k / tau)) over the copies axis: (B, N, K) logits -> (B, K).

    Half-precision logits (autocast) are taken to float32 first."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.logsumexp(torch.log_softmax(logits / tau, dim=-1), dim=1) - math.log(logits.shape[1])


def soft_smooth_log(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor | float,
                    n: int, tau: float = 1.0) -> torch.Tensor:
    """log g_s(x) (B, K) of `f` at `x` (B, C, H, W) with per-sample `sigma` (B,).

    The N noisy copies of each image go through f in one batch of B * N images.
    """
    check(isinstance(n, int) and n >= 1, "n_trf", n, "an integer >= 1")
    check(tau > 0, "tau", tau, "a number > 0")
    return log_mean_softmax(noisy_logits(f, x, sigma, n), tau)


def noisy_copies(x: torch.Tensor, sigma: torch.Tensor | float, n: int) -> torch.Tensor:
    """(B, n, C, H, W): n noisy copies x + sigma * z_k of each image of `x` (B, C, H, W), z_k ~ N(0, I) drawn
    independently per copy, with per-sample `sigma` (B,) (a scalar broadcasts)."""
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(b)
    xs = x.unsqueeze(1).expand(b, n, *x.shape[1:])
    return xs + sigma.view(b, 1, *([1] * (x.dim() - 1))) * standard_normal(xs.shape, device=x.device, dtype=x.dtype)


def noisy_logits(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor | float,
                 n: int) -> torch.Tensor:
    """(B, n, K) logits f(x + sigma * z_k) of n noisy copies of each image (`noisy_copies`), in one batch of B * n."""
    b = x.shape[0]
    return f(noisy_copies(x, sigma, n).reshape(b * n, *x.shape[1:])).view(b, n, -1)


def soft_smooth(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor | float,
                n: int, tau: float = 1.0) -> torch.Tensor:
    """Soft-smoothed class probabilities g_s(x) (B, K): exp of `soft_smooth_log`."""
    return soft_smooth_log(f, x, sigma, n, tau).exp()


def soft_smooth_nll_log(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample L_CE = -log g_s(x)_y, (B,), from log g_s (`soft_smooth_log`): the training loss."""
    return -log_probs.gather(1, y.view(-1, 1)).squeeze(1)


def soft_smooth_nll(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample L_CE = -log g_s(x)_y, (B,), from probabilities g_s (clamped at eps)."""
    return soft_smooth_nll_log(torch.log(probs.clamp_min(eps)), y)


def soft_radius(log_probs: torch.Tensor, sigma: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Soft certified radius (B,) of the soft-smoothed classifier: the `radius` objective's reward
    (data-dependent smoothing, Alfarra et al. 2022; MACER, Zhai et al. 2020).

        R_soft(x) = sigma / 2 * (Phi^-1(p_top1) - Phi^-1(p_top2)),   p = clamp(exp(log_probs), eps, 1 - eps)

    p_top1 >= p_top2 are the two largest entries of each row of g_s(x) = exp(log_probs) (B, K), K >= 2,
    e.g. from `soft_smooth_log`; `sigma` (B,) is the per-sample noise level (a scalar broadcasts).
    It is Cohen's two-class radius with the Monte-Carlo bound replaced by the soft probabilities, so it is
    differentiable in sigma and in the probabilities; the clamp keeps Phi^-1 finite (|Phi^-1| <= 3.72 at
    eps = 1e-4) and its derivative sqrt(2 pi) exp(Phi^-1(p)^2 / 2) bounded (about 2.5e3 at the clamp).
    A row with a tie at the top has radius 0; nothing here checks the label (MACER rewards only the rows
    whose top class is the true one: mask with the label outside). Half-precision input is taken to float32.
    """
    check(0 < eps < 0.5, "eps", eps, "a number in (0, 0.5)")
    check(log_probs.dim() == 2 and log_probs.shape[1] >= 2, "log_probs.shape", tuple(log_probs.shape),
          "(B, K) with K >= 2")
    if log_probs.dtype in (torch.float16, torch.bfloat16):
        log_probs = log_probs.float()
    top2 = torch.topk(log_probs, 2, dim=1).values.exp().clamp(eps, 1.0 - eps)
    sigma = torch.as_tensor(sigma, dtype=top2.dtype, device=top2.device)
    gap = torch.special.ndtri(top2[:, 0]) - torch.special.ndtri(top2[:, 1])
    return sigma / 2 * gap
