"""Noise priors q and the KL(p || q) term of the variational loss (docs/method.md section 4).

p is the noise the selector chose, q the target ("prior"). Every prior returns a per-sample (B,) KL.

* `GaussianPrior(sigma_t)`: q = N(0, sigma_t^2 I), p = N(0, sigma_s^2 I). The KL between two isotropic
  d-dimensional Gaussians is d/2 * (r - 1 - ln r), r = sigma_s^2 / sigma_t^2; divided by d it is
  `kl_isotropic_gaussian_per_dim`. With a log-normal posterior it is averaged over the drawn sigma (an
  upper bound on the KL of the resulting Gaussian mixture, by convexity of the KL).
* `LogNormalPrior(median, s)`: a log-normal over sigma itself, closed-form KL to the log-normal posterior
  (`kl_lognormal`). Needs `posterior=lognormal`.
* `UniformPrior(low, high)`: uniform density over sigma on [low, high]; Monte-Carlo KL
  log p(sigma_s) - log q(sigma_s) at the drawn sigma_s. Needs `posterior=lognormal` (with a point
  posterior log p is undefined and log q is constant). Draws outside [low, high] (before the selector's
  clip) are charged at the boundary density rather than an infinite KL.
"""

from __future__ import annotations

import math

import torch

from vrs.errors import ConfigError, check
from vrs.selection.networks import SelectorOutput

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def kl_isotropic_gaussian_per_dim(sigma_s: torch.Tensor, sigma_t: float | torch.Tensor) -> torch.Tensor:
    """KL(N(0, sigma_s^2 I_d) || N(0, sigma_t^2 I_d)) / d = 1/2 * (r - 1 - ln r), r = sigma_s^2 / sigma_t^2."""
    r = (sigma_s / sigma_t) ** 2
    return 0.5 * (r - 1 - torch.log(r))


def kl_lognormal(mu_p: torch.Tensor, s_p: torch.Tensor, mu_q: float | torch.Tensor,
                 s_q: float | torch.Tensor) -> torch.Tensor:
    """KL(LogNormal(mu_p, s_p) || LogNormal(mu_q, s_q)) (mu, s: mean and std of log sigma).

    Equal to the KL between N(mu_p, s_p^2) and N(mu_q, s_q^2) (KL is invariant under sigma -> log sigma):
    ln(s_q / s_p) + (s_p^2 + (mu_p - mu_q)^2) / (2 s_q^2) - 1/2.
    """
    s_q = torch.as_tensor(s_q, dtype=s_p.dtype, device=s_p.device)
    return torch.log(s_q / s_p) + (s_p**2 + (mu_p - mu_q) ** 2) / (2 * s_q**2) - 0.5


def log_lognormal_pdf(sigma_log: torch.Tensor, mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log density over sigma of LogNormal(mu, s) at sigma = exp(sigma_log)."""
    return -sigma_log - torch.log(s) - LOG_SQRT_2PI - (sigma_log - mu) ** 2 / (2 * s**2)


class GaussianPrior:
    """Target noise N(0, sigma_t^2 I): pulls sigma_s towards sigma_t."""

    needs_lognormal = False

    def __init__(self, sigma_t: float):
        check(isinstance(sigma_t, (int, float)) and sigma_t > 0, "prior.sigma_t", sigma_t, "a number > 0")
        self.sigma_t = float(sigma_t)

    def target(self) -> float:
        return self.sigma_t

    def kl(self, out: SelectorOutput) -> torch.Tensor:
        return kl_isotropic_gaussian_per_dim(out.sigma, self.sigma_t)


class LogNormalPrior:
    """Target LogNormal over sigma with the given median and log-scale s: closed-form KL."""

    needs_lognormal = True

    def __init__(self, median: float, s: float):
        check(isinstance(median, (int, float)) and median > 0, "prior.median", median, "a number > 0")
        check(isinstance(s, (int, float)) and s > 0, "prior.s", s, "a number > 0")
        self.mu, self.s = math.log(median), float(s)

    def target(self) -> float:
        return math.exp(self.mu)

    def kl(self, out: SelectorOutput) -> torch.Tensor:
        return kl_lognormal(out.mu, out.s, self.mu, self.s)


class UniformPrior:
    """Uniform density 1/(high - low) over sigma on [low, high]: Monte-Carlo KL at the drawn sigma."""

    needs_lognormal = True

    def __init__(self, low: float, high: float):
        check(isinstance(low, (int, float)) and low > 0, "prior.low", low, "a number > 0")
        check(isinstance(high, (int, float)) and high > low, "prior.high", high, f"a number > prior.low ({low})")
        self.low, self.high = float(low), float(high)

    def target(self) -> float:
        return 0.5 * (self.low + self.high)

    def kl(self, out: SelectorOutput) -> torch.Tensor:
        log_p = log_lognormal_pdf(out.log_sigma, out.mu, out.s)
        log_q = -math.log(self.high - self.low)
        return log_p - log_q


PRIORS = {"gaussian": GaussianPrior, "lognormal": LogNormalPrior, "uniform": UniformPrior}


def build_prior(cfg: dict, posterior: str):
    """A prior from the `prior` config group ({name, ...parameters}), checked against the posterior."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in PRIORS:
        raise ConfigError("prior.name", name, "one of " + ", ".join(PRIORS))
    prior = PRIORS[name](**cfg)
    if prior.needs_lognormal and posterior != "lognormal":
        raise ConfigError("prior", name, f"prior={name} needs selector.posterior=lognormal (got {posterior!r}): "
                          "its KL is undefined for a point posterior; use prior=gaussian instead")
    return prior
