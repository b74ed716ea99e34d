"""`objective=oracle_labels`: the selector learns each training image's best grid sigma (Dual RS's recipe).

    L(x, y, lambda) = - v(x, lambda) sum_i t_i(x, lambda) log P_i(x, lambda)
                      + beta * (log sigma(x + eta) - log sigma(x + eta'))^2 / (2 w^2)

    t_i(x, lambda) = softmax_i(score_i(x, lambda) / T),      v(x, lambda) = 1 / (G max(q_best(x)(lambda), 0.025))
    score_i(x, lambda) = (1 - lambda) p_i(x) + lambda min(R_i(x), r_cap) / r_cap
    P_i(x, lambda) = softmax_i( -(log h(x + eta, lambda) - log sigma_i)^2 / (2 w^2) )

p_i(x), R_i(x): the share of the base classifier's votes for y at x + sigma_i z, and the radius sigma_i Phi^-1(p_i)
where y wins the vote (0 where it does not), from `votes` draws per (training image, grid sigma), computed once per
base classifier and cached (vrs.selection.oracle_labels). q_i(lambda): the share of training images whose best sigma
(largest score) is sigma_i; weighting each image by 1 / (G q) of its best sigma (G the grid size) gives every sigma
that is best for some images the same share of the loss, so the selector does not collapse onto the sigma that is
best for most images (`reweight`; false: v = 1). [choice] The weight is per image, by its best sigma (class
re-balancing), not per grid entry of the label: dividing t_i by q_i would boost sigmas that are best for no image
at all. T: `temperature`. P: the selector's scalar sigma read as a distribution over the deployed grid
(an ordinal classifier: a Gaussian kernel of width w in log sigma around its output, whose mode is the grid sigma
deployment snaps to), so median smoothing, snapping, the C1 certificate and the attacks' gradients stay as they
are for every other objective. The second term (weight `consistency`, beta) asks two draws of the selector's own
input noise eta, eta' ~ N(0, sigma_h^2 I) to agree: its median-smoothed choice at test time is only certified while it
stays in one grid cell.

lambda enters through the label only: lambda = 0 asks for the sigma at which the image's vote is most certain
(clean accuracy), lambda = 1 for one that certifies it to r_cap (robustness at the radius the user reports, e.g.
r_cap = 1 for L2 eps 1), so one selector still covers the trade-off and lambda is chosen at test time.

Sources:
- Sun, Mao, Vechev, "Dual Randomized Smoothing" (ICLR 2026): a sigma selector trained as a classifier over a grid
  of noise levels with CE to soft labels softmax(R(x, sigma_i) / T) from per-image certified radii on the training
  set, re-weighted by 1/q_i (q_i how often sigma_i is the best), with a consistency term under the selector's noise.
  Here the labels mix clean certainty and capped radius by lambda, and the classifier is ordinal over one scalar.
Validation (no training-split index there) scores the soft smoothed classifier's CE at the deployed sigma.
"""

from __future__ import annotations

import logging

import torch

from vrs.errors import VRSError, check
from vrs.selection.objectives import Objective, ObjectiveInput, ObjectiveOutput, TrainingSplit
from vrs.selection.oracle_labels import (OracleTable, balance_weights, grid_log_probs, kernel_width, label_score,
                                         load_or_compute, soft_targets)
from vrs.selection.soft import soft_smooth_nll_log

log = logging.getLogger(__name__)


class OracleLabelsObjective(Objective):
    name = "oracle_labels"
    needs_index = True

    def __init__(self, votes: int = 64, temperature: float = 0.05, radius_cap: float | None = 1.0,
                 reweight: bool = True, consistency: float = 1.0, width: float | None = None, seed: int = 0,
                 cache: bool = True, batch_size: int = 8192):
        check(isinstance(votes, int) and votes >= 1, "objective.votes", votes, "an integer >= 1")
        check(isinstance(temperature, (int, float)) and temperature > 0, "objective.temperature", temperature,
              "a number > 0")
        check(radius_cap is None or (isinstance(radius_cap, (int, float)) and radius_cap > 0), "objective.radius_cap",
              radius_cap, "a number > 0 (pixel-L2 units), or null (no cap)")
        check(isinstance(reweight, bool), "objective.reweight", reweight, "true or false")
        check(isinstance(consistency, (int, float)) and consistency >= 0, "objective.consistency", consistency,
              "a number >= 0")
        check(width is None or (isinstance(width, (int, float)) and width > 0), "objective.width", width,
              "a number > 0 (log-sigma units), or null (half the grid's mean log step)")
        check(isinstance(batch_size, int) and batch_size >= 1, "objective.batch_size", batch_size, "an integer >= 1")
        self.votes, self.temperature, self.radius_cap = votes, float(temperature), radius_cap
        self.reweight, self.consistency, self.width = reweight, float(consistency), width
        self.seed, self.cache, self.batch_size = int(seed), bool(cache), batch_size
        self.table: OracleTable | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "table")
        return f"{type(self).__name__}({args})"

    def prepare(self, split: TrainingSplit) -> None:
        if not split.grid:
            raise VRSError("objective=oracle_labels needs a sigma grid (module.median.grid): its labels are one per "
                           "grid sigma; set module.median.grid to a list such as [0.12, 0.25, 0.5, 1.0]")
        count_y, top_is_y = load_or_compute(split.base, split.f, split.x, split.y, split.grid, self.votes, self.seed,
                                            split.cache_dir if self.cache else None, split.device, self.batch_size)
        self.table = OracleTable.from_votes(count_y, top_is_y, split.grid, self.votes, self.radius_cap) \
            .to(split.device)
        if self.width is None:
            self.width = kernel_width(split.grid)
        q = self.table.q.cpu()
        for row in (0, q.shape[0] // 2, q.shape[0] - 1):  # what the labels ask for: lambda 0, 0.5, 1
            shares = ", ".join(f"{s:g}: {float(v):.3f}" for s, v in zip(split.grid, q[row]))
            log.info("oracle labels, lambda %g: share of training images whose best sigma is %s",
                     row / (q.shape[0] - 1), shares)

    def targets(self, idx: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B, G), v (B,)): the soft labels of the training images `idx` at their lambdas and their weights."""
        t = self.table
        idx, lam = idx.to(t.p.device), lam.to(t.p.device)
        score = label_score(t.p[idx], t.radius[idx], lam, t.radius_cap)
        weight = balance_weights(score, t.shares(lam)) if self.reweight else torch.ones_like(score[:, 0])
        return soft_targets(score, self.temperature), weight

    def __call__(self, inp: ObjectiveInput) -> ObjectiveOutput:
        if self.table is None or inp.idx is None:
            raise VRSError("objective=oracle_labels needs its label table and the batch's training-split indices: "
                           "train it through SelectorModule (vrs-train), which calls prepare() and feeds indices")
        grid = self.table.grid
        target, weight = (t.to(inp.out.mu.device, inp.out.mu.dtype) for t in self.targets(inp.idx, inp.lam))
        log_p = grid_log_probs(inp.out.mu, grid, self.width)
        ce_labels = -(target * log_p).sum(1)
        loss, terms = weight * ce_labels, {"ce_labels": ce_labels.detach(), "label_weight": weight.detach()}
        if self.consistency > 0 and inp.select is not None:
            other = inp.select(inp.x, inp.lam)
            spread = (inp.out.mu - other.mu) ** 2 / (2 * self.width ** 2)
            loss = loss + self.consistency * spread
            terms["consistency"] = spread.detach()
        logs = torch.log(torch.tensor(grid, dtype=target.dtype, device=target.device))
        terms["target_sigma"] = torch.exp((target * logs).sum(1)).detach()  # the labels' geometric mean sigma
        terms["ce"] = soft_smooth_nll_log(inp.log_probs, inp.y).detach()
        return ObjectiveOutput(loss, terms)

    def evaluate(self, inp: ObjectiveInput) -> ObjectiveOutput:
        ce = soft_smooth_nll_log(inp.log_probs, inp.y)
        return ObjectiveOutput(ce, {"ce": ce})
