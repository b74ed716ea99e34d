"""Noise levels for Gaussian noise augmentation: one fixed sigma, or sigma drawn per sample.

A sampler maps a batch size to a (B,) tensor of sigmas; `add_noise` adds fresh N(0, sigma^2 I) noise in
[0,1] pixel space (before the model's normalisation layer). `standard_normal` is the one draw of Gaussian
noise z ~ N(0, I) that every noisy copy in the project is made from (training augmentation, soft smoothing,
the selector's median smoothing, the sampling engine's noise blocks, the attacks' defended model).
"""

from __future__ import annotations

import math

import torch

from vrs.errors import check


class FixedSigma:
    """The conventional baseline (Cohen et al. 2019): the same sigma for every input."""

    def __init__(self, sigma: float):
        check(isinstance(sigma, (int, float)) and sigma > 0, "noise.sigma", sigma, "a number > 0")
        self.sigma = float(sigma)

    def __call__(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.full((batch_size,), self.sigma, device=device)

    def grid(self) -> list[float]:
        return [self.sigma]


class LogUniformSigma:
    """sigma ~ log-uniform on [sigma_min, sigma_max], drawn per sample: the multi-sigma base classifier
    that a noise-level selector needs (it must work across the whole range)."""

    def __init__(self, sigma_min: float, sigma_max: float):
        check(isinstance(sigma_min, (int, float)) and sigma_min > 0, "noise.sigma_min", sigma_min, "a number > 0")
        check(isinstance(sigma_max, (int, float)) and sigma_max > sigma_min, "noise.sigma_max", sigma_max,
              f"a number > noise.sigma_min ({sigma_min})")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + (hi - lo) * torch.rand(batch_size, device=device))

    def grid(self) -> list[float]:
        """A few sigmas spanning the range, for per-sigma validation accuracy."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return [round(math.exp(lo + (hi - lo) * t), 4) for t in (0.0, 0.5, 1.0)]


def standard_normal(shape, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I) of `shape` (contiguous), from `generator` (on `device`) or torch's global RNG.

    Callers scale it by sigma themselves: the stream of z is what seeds fix, so it is drawn in one place and
    one layout (the same numbers as torch.randn_like of a contiguous tensor of that shape)."""
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def add_noise(x: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + sigma * z with z ~ N(0, I); sigma a float or a per-sample (B,) tensor."""
    if isinstance(sigma, torch.Tensor) and sigma.dim() == 1:
        sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    return x + sigma * standard_normal(x.shape, device=x.device, dtype=x.dtype, generator=generator)
