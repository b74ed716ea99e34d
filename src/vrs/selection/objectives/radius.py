"""`objective=radius`: amortised radius maximisation, CE against the soft certified radius.

    L(x, y, lambda) = (1 - lambda) * CE - lambda * weight * 1[top class of g_s(x) = y] * min(R, sigma * gamma / 2)
    R = sigma/2 * (Phi^-1(p_top1) - Phi^-1(p_top2))     (`vrs.selection.soft.soft_radius`, p clamped to [eps, 1-eps])

g_s the soft-smoothed base classifier at the selector's sigma, CE = -log g_s(x)_y. A large sigma earns a larger
radius exactly where the classifier stays confident at that sigma, so the selector is rewarded for picking a
large sigma on easy images and a small one near the decision boundary: the input-dependence VRS is for.

Sources:
- Zhai, Dan, He, Zhang, Gong, Ji, Wang, Wang, "MACER: Attack-free and Scalable Robust Training via Maximizing
  Certified Radius", ICLR 2020: the soft radius of a soft-smoothed classifier, rewarded only on images whose
  top class is the label (a confident wrong prediction earns nothing), with a hinge at gamma on
  xi = Phi^-1(p_top1) - Phi^-1(p_top2) (MACER's loss sigma/2 * max(gamma - xi, 0) on the correct images; here the
  reward sigma/2 * min(xi, gamma), the same gradient in xi). MACER trains the classifier at one fixed sigma; here
  sigma is the variable, and the reward also grows with sigma wherever xi stays at or above gamma.
- Alfarra, Bibi, Torr, Ghanem, "Data Dependent Randomized Smoothing", UAI 2022: the same radius maximised over
  a per-input sigma (there optimised per test image; here amortised into the selector h(x, lambda)).

Scale [choice]: R is in pixel-L2 units (at most sigma * Phi^-1(1 - eps) = 3.72 sigma for eps = 1e-4), CE in
nats. `weight` (default 1) converts; the cap gamma (default 4, so the reward is at most 2 sigma) keeps images
that are already far from the boundary from dominating the batch and keeps the reward linear in sigma there,
so it pushes sigma up until the margin xi drops below gamma and CE starts to rise. lambda = 0 is the CE alone
(the smallest sigma that keeps the classifier right), lambda = 1 the radius alone. The `prior` group is not
used (its KL is still logged by the module). Temperature: MACER sharpens the soft smoothing with an inverse
temperature beta = 16 so the soft p_top1 approaches the hard vote's; here that is `module.tau` (1/16 for
MACER's), which moves the radius optimum to larger sigma (with tau = 1 a soft p_top1 stays well below 1 at
large sigma and the rewarded radius peaks early). Terms logged: `ce`, `radius` (the soft radius R at sigma, every
image), `reward` (the capped, label-masked radius the loss uses), `correct` (1[top class = y]).
"""

from __future__ import annotations

from vrs.errors import check
from vrs.selection.objectives import Objective, ObjectiveInput, ObjectiveOutput
from vrs.selection.soft import soft_radius, soft_smooth_nll_log


class RadiusObjective(Objective):
    name = "radius"

    def __init__(self, weight: float = 1.0, gamma: float | None = 4.0, eps: float = 1e-4):
        check(isinstance(weight, (int, float)) and weight > 0, "objective.weight", weight, "a number > 0")
        check(gamma is None or (isinstance(gamma, (int, float)) and gamma > 0), "objective.gamma", gamma,
              "a number > 0, or null (no cap)")
        check(isinstance(eps, (int, float)) and 0 < eps < 0.5, "objective.eps", eps, "a number in (0, 1/2)")
        self.weight, self.gamma, self.eps = float(weight), None if gamma is None else float(gamma), float(eps)

    def __call__(self, inp: ObjectiveInput) -> ObjectiveOutput:
        ce = soft_smooth_nll_log(inp.log_probs, inp.y)
        radius = soft_radius(inp.log_probs, inp.sigma, self.eps)
        capped = radius if self.gamma is None else radius.minimum(inp.sigma * (self.gamma / 2))
        correct = (inp.log_probs.argmax(1) == inp.y).to(radius.dtype)
        reward = correct * capped
        loss = (1 - inp.lam) * ce - inp.lam * self.weight * reward
        return ObjectiveOutput(loss, {"ce": ce, "radius": radius.detach(), "reward": reward.detach(),
                                      "correct": correct})
