"""Per-image oracle labels over the sigma grid, for the `oracle_labels` objective (Dual RS's recipe).

For each training image x (label y) and grid sigma_i, `votes` noisy copies x + sigma_i z go through the frozen base
classifier f; from the votes

    p_i(x) = (#{votes for y} + 1/2) / (votes + 1)                       (the share of votes for y, kept in (0, 1))
    R_i(x) = sigma_i * Phi^-1(p_i(x))  if y is the top class of the votes and p_i(x) > 1/2, else 0

R_i is Cohen's radius with the vote share in place of its confidence bound: a label, not a certificate. The score
of sigma_i at the trade-off lambda, and the image's best sigma, are

    score_i(x, lambda) = (1 - lambda) * p_i(x) + lambda * min(R_i(x), r_cap) / r_cap         (r_cap null: no cap,
                                                          R_i / max_i' sigma_i' Phi^-1((votes + 1/2) / (votes + 1)))

so lambda = 0 asks for the sigma that keeps the image's prediction most certain (clean accuracy) and lambda = 1 for
one that certifies it to r_cap (robustness at the radius the user cares about; ties broken by the p term for
lambda < 1). The table (p, R) is computed once per (base classifier weights, training images, grid, votes, seed)
and cached on disk (`cache_key`), since it costs len(grid) * votes forward passes per training image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vrs.analysis.oracle import best_sigma_shares
from vrs.data.datamodule import to_float
from vrs.smoothing.noise import standard_normal
from vrs.utils.io import atomic_path

log = logging.getLogger(__name__)

LAMBDA_STEPS = 20  # q (the best-sigma shares) is tabulated at lambda = 0, 1/20, ..., 1 and read at the nearest


@torch.no_grad()
def grid_votes(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, grid, votes: int,
               seed: int = 0, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(votes for y (N, G) int64, y is the top class of the votes (N, G) bool) of f at x + sigma_i z for each grid
    sigma_i, `votes` draws each. x: (N, C, H, W) images in [0, 1] (uint8 is scaled), on f's device; the noise comes
    from one generator seeded with `seed` (sigma by sigma, images in order), so the table is reproducible.
    Ties at the top count as not-top (a label must be earned)."""
    n, g = len(y), len(grid)
    count_y = torch.zeros(n, g, dtype=torch.int64, device=x.device)
    top_is_y = torch.zeros(n, g, dtype=torch.bool, device=x.device)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    per = max(1, batch_size // votes)  # images per forward batch
    num_classes = None
    for i, sigma in enumerate(grid):
        for start in range(0, n, per):
            xb = x[start : start + per]
            xb = to_float(xb)
            yb = y[start : start + per]
            copies = xb.unsqueeze(1).expand(len(xb), votes, *xb.shape[1:])
            noisy = copies + float(sigma) * standard_normal(copies.shape, device=x.device, dtype=xb.dtype,
                                                               generator=gen)
            pred = f(noisy.reshape(-1, *xb.shape[1:])).argmax(1).view(len(xb), votes)
            num_classes = num_classes or int(f(xb[:1]).shape[1])
            counts = torch.zeros(len(xb), num_classes, dtype=torch.int64, device=x.device)
            counts.scatter_add_(1, pred, torch.ones_like(pred))
            cy = counts.gather(1, yb.view(-1, 1)).squeeze(1)
            others = counts.scatter(1, yb.view(-1, 1), -1).amax(1)
            count_y[start : start + per, i] = cy
            top_is_y[start : start + per, i] = cy > others
    return count_y, top_is_y


def vote_share(count_y: torch.Tensor, votes: int) -> torch.Tensor:
    """p = (count + 1/2) / (votes + 1): the share of votes for y, never 0 or 1 (Phi^-1 stays finite)."""
    return (count_y.double() + 0.5) / (votes + 1)


def label_radius(p: torch.Tensor, top_is_y: torch.Tensor, grid) -> torch.Tensor:
    """R_i = sigma_i Phi^-1(p_i) where y is the top class and p_i > 1/2, else 0; p, top_is_y (N, G)."""
    sig = torch.as_tensor(list(grid), dtype=p.dtype, device=p.device)
    r = sig * torch.special.ndtri(p)
    return torch.where(top_is_y & (p > 0.5), r, torch.zeros_like(r))


def label_score(p: torch.Tensor, radius: torch.Tensor, lam: torch.Tensor, radius_cap: float) -> torch.Tensor:
    """score_i = (1 - lambda) p_i + lambda min(R_i, r_cap) / r_cap; p, radius (B, G), lam (B,) -> (B, G)."""
    lam = lam.to(p.dtype).view(-1, 1)
    return (1 - lam) * p + lam * radius.clamp(max=radius_cap) / radius_cap


@dataclass
class OracleTable:
    """The cached per-image labels of one training split: p, radius (N, G) float64, the grid, the cap, and q (L, G),
    the share of images whose best grid sigma is sigma_i at lambda = l / LAMBDA_STEPS (ties to the smaller sigma)."""

    p: torch.Tensor
    radius: torch.Tensor
    grid: tuple[float, ...]
    radius_cap: float
    q: torch.Tensor

    @classmethod
    def from_votes(cls, count_y: torch.Tensor, top_is_y: torch.Tensor, grid, votes: int,
                   radius_cap: float | None) -> OracleTable:
        p = vote_share(count_y, votes)
        radius = label_radius(p, top_is_y, grid)
        cap = float(radius_cap) if radius_cap is not None else \
            max(grid) * float(torch.special.ndtri(torch.tensor((votes + 0.5) / (votes + 1), dtype=torch.float64)))
        lams = torch.linspace(0, 1, LAMBDA_STEPS + 1, dtype=torch.float64)
        q = torch.stack([torch.from_numpy(best_sigma_shares(label_score(p, radius, lam.expand(len(p)), cap).T.cpu()
                                                            .numpy())) for lam in lams])
        return cls(p, radius, tuple(float(s) for s in grid), cap, q.to(p.device))

    def to(self, device) -> OracleTable:
        return OracleTable(self.p.to(device), self.radius.to(device), self.grid, self.radius_cap, self.q.to(device))

    def shares(self, lam: torch.Tensor) -> torch.Tensor:
        """q (B, G) at each sample's lambda (the nearest tabulated one)."""
        rows = (lam.double().clamp(0, 1) * LAMBDA_STEPS).round().long()
        return self.q[rows.to(self.q.device)]


def soft_targets(score: torch.Tensor, temperature: float) -> torch.Tensor:
    """Target distribution over the grid (B, G): softmax_i(score_i / T)."""
    return torch.softmax(score / temperature, dim=1)


def balance_weights(score: torch.Tensor, shares: torch.Tensor, min_share: float = 0.025) -> torch.Tensor:
    """Per-image loss weights (B,) that balance the best sigmas: w(x) = 1 / (G max(q_best(x), min_share)),
    best(x) the grid sigma with the largest score (ties to the smaller sigma), q (B, G) the share of training images
    whose best sigma it is. A sigma that is best for a share q >= min_share of the images then carries 1/G of the
    loss, whatever q; a sigma that is best for no image is not boosted (it gets no weight of its own); min_share
    caps a single image's weight at 1 / (G min_share) (10 for G = 4), so a few images with a rare best sigma
    cannot dominate a batch."""
    best = torch.argmax(score, dim=1, keepdim=True)  # torch's argmax returns the first maximum
    q = shares.to(score.dtype).gather(1, best).squeeze(1)
    return 1.0 / (score.shape[1] * q.clamp(min=min_share))


def cache_key(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, grid, votes: int, seed: int) -> str:
    """sha256 (first 16 hex digits) of everything the table depends on: the base classifier's weights and
    buffers, the training images and labels (in order), the grid, the number of votes and the seed."""
    h = hashlib.sha256()
    for name, t in base.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((tuple(float(s) for s in grid), int(votes), int(seed))).encode())
    return h.hexdigest()[:16]


def load_or_compute(base: torch.nn.Module, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, grid, votes: int, seed: int, cache_dir: str | Path | None,
                    device: torch.device | str = "cpu", batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(count_y, top_is_y) of `grid_votes` of f (the forward of `base`, whose weights key the cache), read from
    `<cache_dir>/oracle_labels_<key>.pt` when it is there, else computed on `device` (where f is) and written
    there atomically (cache_dir None: not cached). An unreadable or mismatched cache file is recomputed (and
    replaced), never trusted."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"oracle_labels_{cache_key(base, x, y, grid, votes, seed)}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved["count_y"].shape == (len(y), len(grid)) and saved["votes"] == votes:
                    log.info("oracle labels from the cache %s", path)
                    return saved["count_y"], saved["top_is_y"]
                log.warning("oracle label cache %s does not match this training split: recomputing", path)
            except Exception as err:  # noqa: BLE001 - a torn or foreign file: recompute, the cache is only a cache
                log.warning("oracle label cache %s is unreadable (%s): recomputing", path, err)
    n_forward = len(y) * len(grid) * votes
    log.info("computing oracle labels: %d images x %d sigmas x %d votes = %.3g forward passes", len(y), len(grid),
             votes, n_forward)
    count_y, top_is_y = grid_votes(f, x.to(device), y.to(device), grid, votes, seed, batch_size)
    count_y, top_is_y = count_y.cpu(), top_is_y.cpu()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({"count_y": count_y, "top_is_y": top_is_y, "votes": votes,
                            "grid": [float(s) for s in grid], "seed": seed}, tmp)
            log.info("oracle labels cached in %s", path)
        except OSError as err:
            log.warning("could not cache the oracle labels in %s (%s); they will be recomputed next time", path, err)
    return count_y, top_is_y


def kernel_width(grid) -> float:
    """Default width w of the selector's distribution over the grid: half the mean spacing of log sigma."""
    logs = np.log(np.asarray(list(grid), dtype=np.float64))
    return float(np.diff(logs).mean() / 2) if len(logs) > 1 else 0.5


def grid_log_probs(log_sigma: torch.Tensor, grid, width: float) -> torch.Tensor:
    """log P_i(x) (B, G): the selector's scalar log sigma read as a distribution over the grid,
    P_i proportional to exp(-(log sigma - log sigma_i)^2 / (2 w^2)) (an ordinal classifier: its mode is the
    grid sigma nearest in log space, the one deployment snaps to)."""
    logs = torch.log(torch.as_tensor(list(grid), dtype=log_sigma.dtype, device=log_sigma.device))
    return torch.log_softmax(-(log_sigma.view(-1, 1) - logs) ** 2 / (2 * width ** 2), dim=1)

