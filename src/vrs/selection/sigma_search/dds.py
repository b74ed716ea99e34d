"""`sigma_search=dds`: data-dependent smoothing (Alfarra, Bibi, Torr & Ghanem, "Data Dependent Randomized Smoothing",
UAI 2022): each input's sigma by gradient ascent on the soft certified radius, at test time, no training.

    psi(x, sigma) = 1/m sum_k softmax(f(x + sigma z_k)),  z_k ~ N(0, I)              (m = `draws`, reparameterised)
    R(x, sigma) = sigma / 2 (Phi^-1(clamp(psi_top1)) - Phi^-1(clamp(psi_top2))),  clamp to [c, 1 - c] (c = `clamp`)
    sigma_{t+1} = clip(sigma_t + lr * dR/dsigma (x, sigma_t), sigma_min, sigma_max),   t = 0..steps-1,
    sigma_0 = `sigma_init`

(`vrs.selection.soft.soft_radius` is R; the reference code's step is plain gradient ascent with fresh z every step;
its library defaults to 900 steps of 100 draws at lr 0.04, conf/sigma_search/dds.yaml to 100 x 8 at lr 0.04.)
The deployed classifier is Cohen's smoothed classifier at sigma(x) = sigma_steps.

Certificate: none that is sound here. The published one is Cohen's at the optimised sigma(x), but sigma(x + delta)
differs from sigma(x), so Cohen's argument (one fixed noise distribution around every point of the ball) does not
apply (Sukenik et al., ICML 2022, show such certificates can be violated); the paper's fix keeps a memory of
certified inputs and depends on the order of the test set. The search is not smoothed (no interval on sigma(x +
delta)), so C1 / C2 cannot bound it either. vrs-certify therefore reports DDS as an EMPIRICAL defence: each image's
prediction is Cohen's CERTIFY class at sigma(x) (its correctness at x itself holds with probability >= 1 - alpha,
given sigma(x)), its radius is 0, and `radius_unsound` keeps the published radius sigma(x) Phi^-1(pA_lower) for
comparison only, never counted as certified. Its robustness is measured by vrs-attack against the whole pipeline.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from vrs.errors import check
from vrs.selection.sigma_search import SEARCH_STREAM
from vrs.selection.soft import log_mean_softmax, soft_radius
from vrs.smoothing.noise import standard_normal
from vrs.smoothing.smoothed import SmoothedClassifier, image_seed, stream_seed


def dds_search(f, x: torch.Tensor, sigma_init: float, steps: int, lr: float, draws: int, clamp: float,
               sigma_min: float, sigma_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) sigma(x) after `steps` gradient-ascent steps on the soft radius (module docstring), from sigma_init,
    kept in [sigma_min, sigma_max]. f's parameters are not changed; gradients go to sigma only."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    sigma = torch.full((b,), float(sigma_init), device=x.device, dtype=torch.float32)
    x = x.detach().float()
    with torch.enable_grad():
        for _ in range(steps):
            s = sigma.clone().requires_grad_(True)
            z = standard_normal((b, draws, *shape), device=x.device, generator=generator)
            noisy = x.unsqueeze(1) + s.view(b, 1, *([1] * len(shape))) * z
            log_probs = log_mean_softmax(f(noisy.reshape(b * draws, *shape)).view(b, draws, -1))
            (grad,) = torch.autograd.grad(soft_radius(log_probs, s, eps=clamp).sum(), s)
            sigma = (sigma + lr * grad).clamp(sigma_min, sigma_max).detach()
    return sigma


class DataDependentSmoothing:
    """DDS's per-input sigma search (module docstring); an empirical defence (`certificate = "empirical"`)."""

    certificate = "empirical"

    def __init__(self, steps: int = 100, lr: float = 0.04, draws: int = 8, clamp: float = 0.02,
                 sigma_init: float = 0.25, sigma_min: float = 0.12, sigma_max: float = 1.0, batch_size: int = 256):
        check(isinstance(steps, int) and steps >= 0, "sigma_search.steps", steps, "an integer >= 0")
        check(isinstance(lr, (int, float)) and lr > 0, "sigma_search.lr", lr, "a number > 0")
        check(isinstance(draws, int) and draws >= 1, "sigma_search.draws", draws, "an integer >= 1")
        check(isinstance(clamp, (int, float)) and 0 < clamp < 0.5, "sigma_search.clamp", clamp, "a number in (0, 0.5)")
        check(isinstance(sigma_min, (int, float)) and sigma_min > 0, "sigma_search.sigma_min", sigma_min,
              "a number > 0")
        check(isinstance(sigma_max, (int, float)) and sigma_max > sigma_min, "sigma_search.sigma_max", sigma_max,
              f"a number > sigma_search.sigma_min ({sigma_min})")
        check(isinstance(sigma_init, (int, float)) and sigma_min <= sigma_init <= sigma_max, "sigma_search.sigma_init",
              sigma_init, f"a number in [sigma_min, sigma_max] = [{sigma_min}, {sigma_max}]")
        check(isinstance(batch_size, int) and batch_size >= 1, "sigma_search.batch_size", batch_size, "an integer >= 1")
        self.steps, self.lr, self.draws, self.clamp = steps, float(lr), draws, float(clamp)
        self.sigma_init, self.sigma_min, self.sigma_max = float(sigma_init), float(sigma_min), float(sigma_max)
        self.batch_size = batch_size

    def to_dict(self) -> dict:
        return {"name": "dds", "steps": self.steps, "lr": self.lr, "draws": self.draws, "clamp": self.clamp,
                "sigma_init": self.sigma_init, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def search(self, f, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) sigma(x), images in chunks of batch_size // draws."""
        per = max(1, self.batch_size // self.draws)
        return torch.cat([dds_search(f, x[i : i + per], self.sigma_init, self.steps, self.lr, self.draws, self.clamp,
                                     self.sigma_min, self.sigma_max, generator) for i in range(0, x.shape[0], per)])

    def deployed_sigma(self, f, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.search(f, x, generator)

    def certify_groups(self, smoothed: SmoothedClassifier, groups: Iterable[tuple[torch.Tensor, Sequence[int]]],
                       seed: int, n0: int, n: int, alpha: float, batch_size: int) -> Iterator[list[dict]]:
        """Rows {"idx", "predict", "radius" (0: empirical), "sigma", "radius_unsound", "cert"} per group. Image idx's
        search draws from stream_seed(image_seed(seed, idx), SEARCH_STREAM), its CERTIFY from the engine's streams."""
        f = smoothed.base_classifier

        def inputs():
            for x, indices in groups:
                keys = [image_seed(seed, int(i)) for i in indices]
                sig = []
                for j, key in enumerate(keys):  # one generator per image: its sigma depends on its seed only
                    gen = torch.Generator(device=x.device).manual_seed(stream_seed(key, SEARCH_STREAM))
                    sig.append(self.search(f, x[j : j + 1].to(smoothed.device), gen))
                pending.append(list(indices))
                yield x, keys, torch.cat(sig).double().cpu().numpy()

        pending: list[list[int]] = []
        for res in smoothed.certify_groups(inputs(), n0, n, alpha, batch_size):
            indices = pending.pop(0)
            yield [{"idx": int(idx), "predict": int(res.prediction[j]), "radius": 0.0, "sigma": float(res.sigma[j]),
                    "radius_unsound": float(res.radius[j]),
                    "cert": "empirical" if res.prediction[j] >= 0 else "abstain"} for j, idx in enumerate(indices)]
