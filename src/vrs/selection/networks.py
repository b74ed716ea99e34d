"""Noise-level selectors h(x, lambda) -> sigma (docs/method.md section 2).

A selector is a small trunk (a CNN, a ResNet-20, or an MLP on the flattened image) whose features are modulated by
FiLM (a per-channel scale and shift computed from the trade-off knob lambda), followed by global average
pooling (for feature maps) and a linear head. `NoiseSelector` turns the head's raw outputs into a noise level kept
inside [sigma_min, sigma_max]:

* ``posterior="point"``: sigma = squash(raw) directly;
* ``posterior="lognormal"``: (mu, s) of a log-normal over sigma, mu = log of its median squashed into
  [log sigma_min, log sigma_max]; training draws sigma = exp(mu + s * z) (reparameterised, then clipped
  to the range), test time uses the median exp(mu).

The squash is log-space: sigma = exp(log sigma_min + (log sigma_max - log sigma_min) * sigmoid(raw)), so
a raw output of 0 gives the geometric middle of the range. Inputs are [0,1] images; the data set's
normalisation is the trunk's first layer, as for the base classifier.

`sees_base: true` [choice] also gives the head the base classifier's class probabilities softmax(f(x')) at the
selector's own (noisy) input x': what the best sigma of an image depends on is how the base classifier votes
near it, which a small CNN on a heavily noised image may not recover (docs/vrs.md, issue 17). The selector keeps a
frozen copy of f (`base_view`, saved with its weights), so it is self-contained and a joint fine-tune of f does
not change what it was trained on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from torch import nn

from vrs.errors import check, check_choice
from vrs.models.normalize import Normalize
from vrs.models.resnet import BasicBlock

POSTERIORS = ("point", "lognormal")


def as_lambda(lam: torch.Tensor | float, batch_size: int, device: torch.device) -> torch.Tensor:
    """lambda as a (B,) float tensor on `device`; a float or 0-d tensor is broadcast over the batch."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device)
    if lam.dim() == 0:
        lam = lam.expand(batch_size)
    if lam.shape != (batch_size,):
        raise ValueError(f"lambda has shape {tuple(lam.shape)}, expected () or ({batch_size},)")
    return lam


class LambdaEmbedding(nn.Module):
    """lambda in [0,1] -> a conditioning vector (a two-layer MLP on (lambda, lambda - 1/2))."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.stack([lam, lam - 0.5], dim=-1))


class FiLM(nn.Module):
    """Feature-wise linear modulation: h * (1 + gamma(c)) + beta(c), per channel (dim 1 of (B, C, ...) features)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(c).to(h.dtype).chunk(2, dim=-1)
        shape = gamma.shape + (1,) * (h.dim() - 2)  # broadcast over the spatial dims, if any
        return h * (1 + gamma.view(shape)) + beta.view(shape)


class _Head(nn.Module):
    """Pooled features, the lambda embedding and `extra_dim` extra features (the base classifier's view, when the
    selector sees it) -> raw outputs (bias 0: mid-range sigma at the start)."""

    def __init__(self, channels: int, cond_dim: int, out_dim: int, extra_dim: int = 0):
        super().__init__()
        self.linear = nn.Linear(channels + cond_dim + extra_dim, out_dim)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        pooled = h.mean(dim=tuple(range(2, h.dim()))) if h.dim() > 2 else h
        parts = [pooled, c.to(pooled.dtype)] + ([extra.to(pooled.dtype)] if extra is not None else [])
        return self.linear(torch.cat(parts, dim=-1))


class SelectorCNN(nn.Module):
    """`depth` conv-BN-FiLM-ReLU blocks (the first at stride 1, later ones at stride 2, width doubling
    every block up to 4x), global average pooling, linear head. ~20k parameters at width 16."""

    def __init__(self, in_channels: int, out_dim: int = 1, width: int = 16, depth: int = 3, cond_dim: int = 32,
                 extra_dim: int = 0):
        super().__init__()
        check(isinstance(depth, int) and depth >= 1, "selector.net.depth", depth, "an integer >= 1")
        check(isinstance(width, int) and width >= 1, "selector.net.width", width, "an integer >= 1")
        self.embed = LambdaEmbedding(cond_dim)
        self.convs, self.films = nn.ModuleList(), nn.ModuleList()
        c_in = in_channels
        for i in range(depth):
            c_out = width * min(2**i, 4)
            self.convs.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1 if i == 0 else 2, 1, bias=False),
                                            nn.BatchNorm2d(c_out)))
            self.films.append(FiLM(c_out, cond_dim))
            c_in = c_out
        self.head = _Head(c_in, cond_dim, out_dim, extra_dim)

    def forward(self, x: torch.Tensor, lam: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(lam)
        h = x
        for conv, film in zip(self.convs, self.films):
            h = torch.relu(film(conv(h), c))
        return self.head(h, c, extra)


class SelectorMLP(nn.Module):
    """Flatten -> `depth` x (Linear(hidden) -> FiLM -> ReLU) -> linear head: the selector for CPU-sized experiments.

    [choice] On 28x28 inputs it costs 1/12-1/20 of the width-8 SelectorCNN per noisy copy (docs/vrs.md),
    and the attacks and C1 certificates run the selector hundreds of times per image; it pairs with `model=mlp`."""

    def __init__(self, in_channels: int, input_size: int, out_dim: int = 1, hidden: int = 64, depth: int = 2,
                 cond_dim: int = 32, extra_dim: int = 0):
        super().__init__()
        check(isinstance(depth, int) and depth >= 1, "selector.net.depth", depth, "an integer >= 1")
        check(isinstance(hidden, int) and hidden >= 1, "selector.net.hidden", hidden, "an integer >= 1")
        self.embed = LambdaEmbedding(cond_dim)
        self.linears, self.films = nn.ModuleList(), nn.ModuleList()
        width = in_channels * input_size * input_size
        for _ in range(depth):
            self.linears.append(nn.Linear(width, hidden))
            self.films.append(FiLM(hidden, cond_dim))
            width = hidden
        self.head = _Head(hidden, cond_dim, out_dim, extra_dim)

    def forward(self, x: torch.Tensor, lam: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(lam)
        h = x.flatten(1)
        for linear, film in zip(self.linears, self.films):
            h = torch.relu(film(linear(h), c))
        return self.head(h, c, extra)


class SelectorResNet(nn.Module):
    """A CIFAR ResNet trunk (depth 6n+2; 20 by default) with FiLM after every residual block."""

    def __init__(self, in_channels: int, out_dim: int = 1, depth: int = 20, cond_dim: int = 64, extra_dim: int = 0):
        super().__init__()
        check((depth - 2) % 6 == 0 and depth >= 8, "selector.net.depth", depth, "6n+2 with n >= 1 (20, 32, ...)")
        n = (depth - 2) // 6
        self.embed = LambdaEmbedding(cond_dim)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        self.blocks, self.films = nn.ModuleList(), nn.ModuleList()
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                self.blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                self.films.append(FiLM(planes, cond_dim))
                in_planes = planes
        self.head = _Head(in_planes, cond_dim, out_dim, extra_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, lam: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(lam)
        h = self.stem(x)
        for block, film in zip(self.blocks, self.films):
            h = film(block(h), c)
        return self.head(h, c, extra)


@dataclass
class SelectorOutput:
    """What the selector chose for a batch.

    sigma: (B,) the noise level to smooth with (a reparameterised draw in training for `lognormal`, the
        median exp(mu) otherwise), inside [sigma_min, sigma_max];
    mu: (B,) log of the median noise level;
    s: (B,) log-normal scale (None for `point`);
    log_sigma: (B,) the unclipped log of the drawn sigma (= mu for `point` or at test time), for
        Monte-Carlo KL terms.
    """

    sigma: torch.Tensor
    mu: torch.Tensor
    s: torch.Tensor | None
    log_sigma: torch.Tensor


class NoiseSelector(nn.Module):
    """h(x, lambda): Normalize -> trunk -> squash into [sigma_min, sigma_max] (section 2)."""

    def __init__(self, trunk: nn.Module, mean: list[float], std: list[float], sigma_min: float, sigma_max: float,
                 posterior: str = "point", s_min: float = 1e-3, s_max: float = 1.0,
                 base_view: nn.Module | None = None):
        super().__init__()
        check_sigma_range(sigma_min, sigma_max)
        check_choice("selector.posterior", posterior, POSTERIORS)
        check(0 < s_min < s_max, "selector.s_min/s_max", (s_min, s_max), "0 < s_min < s_max")
        self.normalize = Normalize(mean, std)
        self.trunk = trunk
        self.sigma_min, self.sigma_max, self.posterior = float(sigma_min), float(sigma_max), posterior
        self.s_min, self.s_max = float(s_min), float(s_max)
        self.log_lo, self.log_hi = math.log(sigma_min), math.log(sigma_max)
        self.base_view = base_view  # a frozen copy of the base classifier whose probabilities the head sees, or None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.base_view is not None:
            self.base_view.eval()  # frozen: batch-norm statistics and dropout as trained
        return self

    def forward(self, x: torch.Tensor, lam: torch.Tensor | float, sample: bool | None = None) -> SelectorOutput:
        """sample: draw sigma from the log-normal posterior (default: in training mode only)."""
        lam = as_lambda(lam, x.shape[0], x.device)
        extra = None if self.base_view is None else torch.softmax(self.base_view(x).float(), dim=-1)
        raw = self.trunk(self.normalize(x), lam, extra).float()
        mu = self.log_lo + (self.log_hi - self.log_lo) * torch.sigmoid(raw[:, 0])
        if self.posterior == "point":
            return SelectorOutput(torch.exp(mu), mu, None, mu)
        s = self.s_min + (self.s_max - self.s_min) * torch.sigmoid(raw[:, 1])
        do_sample = self.training if sample is None else sample
        if do_sample:
            log_sigma = mu + s * torch.randn_like(mu)
        else:
            log_sigma = mu
        sigma = torch.exp(log_sigma).clamp(self.sigma_min, self.sigma_max)
        return SelectorOutput(sigma, mu, s, log_sigma)

    @torch.no_grad()
    def test_sigma(self, x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """The test-time noise level of one pass: the (median) sigma, hard-clipped to the range."""
        return self.forward(x, lam, sample=False).sigma.clamp(self.sigma_min, self.sigma_max)


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    check(isinstance(sigma_min, (int, float)) and sigma_min > 0, "selector.sigma_min", sigma_min, "a number > 0")
    check(isinstance(sigma_max, (int, float)) and sigma_max > sigma_min, "selector.sigma_max", sigma_max,
          f"a number > selector.sigma_min ({sigma_min})")


def build_selector(cfg: dict, data: dict, base: nn.Module | None = None) -> NoiseSelector:
    """A NoiseSelector from the `selector` config group (net: the trunk's config, sigma range, posterior,
    sees_base) and the data spec (normalisation constants, classes). With `sees_base: true` the selector keeps a
    frozen copy of `base` (the base classifier; its weights are overwritten when a checkpoint's selector state is
    loaded)."""
    cfg = dict(cfg)
    check_sigma_range(cfg.get("sigma_min"), cfg.get("sigma_max"))
    posterior = cfg.get("posterior", "point")
    check_choice("selector.posterior", posterior, POSTERIORS)
    sees_base = cfg.get("sees_base", False)
    check(isinstance(sees_base, bool), "selector.sees_base", sees_base, "true or false")
    base_view = None
    if sees_base:
        if base is None:
            raise ValueError("build_selector: selector.sees_base=true needs the base classifier")
        base_view = copy.deepcopy(base).eval().requires_grad_(False)
    trunk = instantiate(cfg["net"], out_dim=1 if posterior == "point" else 2,
                        extra_dim=int(data["num_classes"]) if sees_base else 0)
    return NoiseSelector(trunk, data["mean"], data["std"], cfg["sigma_min"], cfg["sigma_max"], posterior,
                         s_min=cfg.get("s_min", 1e-3), s_max=cfg.get("s_max", 1.0), base_view=base_view)
