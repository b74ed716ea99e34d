"""The sound mode's lattice noise (vrs.smoothing.lattice, Voracek & Hein, ICLR 2023) against known answers: the
drawn law is the discretised Gaussian up to the stated slack, the sampler inverts the integer thresholds exactly
(tails included), inputs are exact lattice points, and the float path's inputs are not (the weakness the mode
removes). Its false-certificate rate: tests/test_sequential.py::test_engine_false_certificate_rate_is_at_most_alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from vrs.smoothing import SmoothedClassifier, lattice
from vrs.smoothing.smoothed import image_seed

SIGMA = 0.25
S = lattice.LEVELS * SIGMA


def test_thresholds_give_the_discretised_gaussian_within_the_slack():
    t, v_max = lattice.thresholds(SIGMA)
    assert v_max == int(np.ceil(lattice.TAIL * S)) and len(t) == 2 * v_max and np.all(np.diff(t) >= 0)
    cdf = np.concatenate([[0], t, [2 ** lattice.BITS]]).astype(np.float64) / 2.0 ** lattice.BITS
    drawn = np.diff(cdf)  # P[v] for v = -V .. V
    v = np.arange(-v_max, v_max + 1)
    ideal = norm.cdf((v + 0.5) / S) - norm.cdf((v - 0.5) / S)
    tv = 0.5 * np.abs(drawn - ideal).sum()
    # float64 (cdf / 2^BITS, and scipy's Phi) adds up to ~1e-16 per value: 2V + 1 values
    assert tv <= lattice.noise_slack(SIGMA, 1) + (2 * v_max + 1) * 1e-16
    assert 0 < lattice.noise_slack(SIGMA, 3072) < 1e-11


def test_invert_is_exact_at_every_threshold_and_in_the_tails():
    t, v_max = lattice.thresholds(SIGMA)
    u = np.concatenate([[0, 1, 2 ** lattice.BITS - 1], t[:: 7], t[:: 7] - 1, t[:40], t[-40:] - 1])
    u = torch.as_tensor(u[(u >= 0) & (u < 2 ** lattice.BITS)])  # the far tails' thresholds are 0 and 2^BITS
    want = np.searchsorted(t, u.numpy(), side="right") - v_max
    np.testing.assert_array_equal(lattice.invert(u, SIGMA).numpy(), want)
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, 2 ** lattice.BITS, (200_000,), generator=gen)
    v = lattice.invert(u, SIGMA)
    np.testing.assert_array_equal(v.numpy(), np.searchsorted(t, u.numpy(), side="right") - v_max)
    # moments of the discretised Gaussian: mean 0, variance s^2 + 1/12 (Sheppard), 4 standard errors
    assert abs(v.double().mean().item()) < 4 * S / np.sqrt(len(v))
    assert v.double().var().item() == pytest.approx(S ** 2 + 1 / 12, rel=4 * np.sqrt(2 / len(v)))


def test_sound_inputs_are_lattice_points_and_float_inputs_are_not():
    """Around x0 = 0 the float path hands the network inputs with bits no input around x' = 204/255 (0.8 away)
    ever has: a network reading them can tell the two apart, which breaks Cohen's argument (Voracek & Hein).
    The sound path's inputs are exact lattice points from both."""
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, y):
            seen.setdefault("y", []).append(y.detach().clone().double().flatten())
            return torch.zeros(y.shape[0], 2)

    for sound in (False, True):
        fine = {}
        for k in (0, 204):
            seen.clear()
            smoothed = SmoothedClassifier(Spy(), 2, SIGMA, sound=sound)
            smoothed.sample_counts(torch.full((1, 1, 1, 1), k / 255), 2048, 2048, seeds=[image_seed(0, k)])
            y = torch.cat(seen["y"])
            fine[k] = bool((y * 2 ** 25 != torch.round(y * 2 ** 25)).any())
            if sound:  # k / 255 + v / 255 formed as (k + v) / 255: within float32 rounding of a lattice point
                assert torch.allclose(y * 255, torch.round(y * 255), atol=1e-4, rtol=0)
        if not sound:
            assert fine == {0: True, 204: False}


def test_sound_refuses_images_off_the_lattice():
    smoothed = SmoothedClassifier(torch.nn.Flatten(), 2, SIGMA, sound=True)
    with pytest.raises(ValueError, match="1/255 lattice"):
        smoothed.certify(torch.full((1, 1, 1, 2), 0.3001), 4, 20, 0.1, 32)
