"""Sound randomized smoothing in floating-point arithmetic (Voracek & Hein, ICLR 2023): lattice noise.

Why: Cohen's certificate is about g(x) = argmax_c P[f(x + sigma z) = c] with z a real Gaussian. The float path
forms x + sigma z in float32, and the rounding of that sum depends on x's own bits: the samples around x and those
around a nearby x' are not shifted copies of one distribution, so a base classifier that reads the low bits of its
input can make the float-computed g disagree with a certificate (Voracek & Hein build one that certifies a radius
of 1.26 where an adversarial example lies at 0.8; tests/test_sound_smoothing.py builds a 1-pixel one).

The sound procedure (their section 5, for inputs quantised to 8 bits): with images on the lattice Z^d / L
(L = 255), draw integer noise v = round(L * sigma * z) coordinate-wise, i.e. from the discretised Gaussian
P[v] = Phi((v + 1/2) / s) - Phi((v - 1/2) / s), s = L * sigma, and give f the point (L x + v) / L, formed from an
exact integer sum. Since L x is an integer, L x + v = round(L (x + sigma z)): the samples are exactly those of the
base classifier h(y) = f(float(round(L y)) / L) under real Gaussian noise, and h is one fixed function (the float
division maps each lattice point to one float, whatever x was), so Cohen's theorem applies to h's smoothed
classifier, which is the one being evaluated at every lattice input.

The discretised Gaussian is drawn from fair coins: u uniform on [0, 2^B) (B = 62 bits), v = the number of
thresholds T_j <= u, T_j = round(2^B Phi((j + 1/2) / s)) for j = -V .. V - 1 (tails beyond V = ceil(TAIL * s)
go to +-V). The thresholds are computed with mpmath at 40 digits, so the only departures from the ideal law are
the rounding of each T_j (<= 2^-(B+1)) and the tails (Phi(-(V + 1/2) / s) each side): per coordinate a total
variation of at most delta_1 = (2V + 1) 2^-(B+1) + 2 Phi(-(V + 1/2) / s), and over d coordinates at most
d delta_1 (`noise_slack`). pA of the ideal law is then >= pA of the drawn law - d delta_1, so the sound bound is
CP_lower - d delta_1: a slack of about 1e-12 for CIFAR-10 at sigma = 1 (radius change far below 1e-6).

Where it does not carry over: the argument needs x on the lattice (8-bit images: every data set here) and one
sigma per image, fixed before the image's noise is drawn. A fixed sigma qualifies; VRS's per-image sigma0
would too for Cohen's part of C1/C2, but the selector's own median smoothing (the interval on sigma) samples
float noise around x, so that half of a VRS certificate is not covered: vrs-certify refuses certify.sound=true
with a VRS certificate or a sigma search.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy.stats import norm

LEVELS = 255  # 8-bit images: x * 255 is an integer
BITS = 62  # uniform integers on [0, 2^BITS): torch.randint's 64-bit path, unbiased since 2^BITS divides 2^64
GUIDE_BITS = 16  # the sampler's guide table: 2^16 buckets of u (`invert`)
TAIL = 10.0  # V = ceil(TAIL * s): Phi(-10) ~ 7.6e-24 of each tail is lumped into +-V


@lru_cache(maxsize=16)
def thresholds(sigma: float, levels: int = LEVELS, bits: int = BITS) -> tuple[np.ndarray, int]:
    """(T, V): the 2V integer thresholds T_j = round(2^bits Phi((j + 1/2) / s)), j = -V .. V - 1, s = levels *
    sigma, computed with 40-digit arithmetic (mpmath), and V."""
    import mpmath  # deferred: only the sound mode needs it (a dependency of sympy)

    s = levels * float(sigma)
    v_max = max(1, math.ceil(TAIL * s))
    scale = mpmath.mpf(2) ** bits
    with mpmath.workdps(40):
        t = [int(mpmath.nint(scale * mpmath.ncdf((mpmath.mpf(j) + mpmath.mpf(1) / 2) / mpmath.mpf(s))))
             for j in range(-v_max, v_max)]
    return np.asarray(t, dtype=np.int64), v_max


def noise_slack(sigma: float, d: int, levels: int = LEVELS, bits: int = BITS) -> float:
    """Total variation between the drawn lattice noise of d coordinates and the ideal discretised Gaussian:
    d ((2V + 1) 2^-(bits+1) + 2 Phi(-(V + 1/2) / s)), the amount the sound bound on pA gives up."""
    _, v_max = thresholds(float(sigma), levels, bits)
    s = levels * float(sigma)
    return float(d * ((2 * v_max + 1) * 2.0 ** -(bits + 1) + 2 * norm.cdf(-(v_max + 0.5) / s)))


def lattice_noise(shape, sigma: float, *, device, generator: torch.Generator, levels: int = LEVELS,
                  bits: int = BITS) -> torch.Tensor:
    """Integer noise v (int32, `shape`) from the discretised Gaussian of std levels * sigma: fair coins
    u ~ U{0, .., 2^bits - 1} (torch.randint), then `invert`."""
    u = torch.randint(0, 2 ** bits, tuple(shape), generator=generator, device=device, dtype=torch.int64)
    return invert(u, sigma, levels, bits)


def invert(u: torch.Tensor, sigma: float, levels: int = LEVELS, bits: int = BITS) -> torch.Tensor:
    """v = #{j: T_j <= u} - V for int64 u in [0, 2^bits): the inverse of the thresholds' CDF (int32).

    Fast and exact: the top GUIDE_BITS bits of u pick a bucket of 2^(bits - GUIDE_BITS) consecutive values of u;
    where no threshold falls inside a bucket (all but about 2V of the 2^GUIDE_BITS buckets), every u in it has the
    same v, read from a table; the rest is found by binary search on the integer thresholds."""
    guide, ambiguous, thresholds_, v_max = _device_table(float(sigma), levels, bits, u.device)
    bucket = u >> (bits - GUIDE_BITS)
    v = torch.take(guide, bucket)
    unsure = torch.take(ambiguous, bucket)
    if unsure.any():
        v[unsure] = (torch.searchsorted(thresholds_, u[unsure], right=True) - v_max).to(torch.int32)
    return v


@lru_cache(maxsize=16)
def _device_table(sigma: float, levels: int, bits: int, device: torch.device):
    """(guide, ambiguous, thresholds, V) on `device`: guide[b] = v of the first u of bucket b (int32), ambiguous[b]
    = a threshold lies inside bucket b (its u do not all share that v)."""
    t, v_max = thresholds(sigma, levels, bits)
    width = 1 << (bits - GUIDE_BITS)
    first = np.arange(1 << GUIDE_BITS, dtype=np.int64) * width
    v_first = np.searchsorted(t, first, side="right") - v_max
    v_last = np.searchsorted(t, first + (width - 1), side="right") - v_max
    return (torch.as_tensor(v_first.astype(np.int32), device=device), torch.as_tensor(v_first != v_last, device=device),
            torch.as_tensor(t, device=device), v_max)


def to_lattice(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """x (floats in [0,1]) as integers levels * x (int32); ValueError when x is not on the lattice (not 8-bit)."""
    scaled = x.double() * levels
    ints = scaled.round()
    if not torch.all((scaled - ints).abs() <= 1e-4):
        bad = float((scaled - ints).abs().max())
        raise ValueError(f"certify.sound=true needs images on the 1/{levels} lattice (8-bit pixels); these are "
                         f"{bad / levels:.3g} off it")
    return ints.to(torch.int32)


def lattice_inputs(x_int: torch.Tensor, v: torch.Tensor, out: torch.Tensor, levels: int = LEVELS) -> None:
    """out = (x_int + v) / levels: the exact integer sum, then one float per lattice point."""
    out.copy_(torch.add(x_int, v)).div_(float(levels))
