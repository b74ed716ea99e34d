"""A differentiable model of the whole defended pipeline, for attacks (docs/method.md section 7).

`DefendedModel` is an ordinary nn.Module on [0,1] images that returns logits, so torchattacks (or any
gradient attack) can attack it directly:

    sigma = sigma(x)                                   # a fixed float, or the VRS selector's choice
    logits = log( 1/m * sum_k softmax(f(x + sigma * z_k) / tau) )     # SmoothAdv-style soft smoothing

`log` of the averaged softmax is what Salman et al. (SmoothAdv, NeurIPS 2019) attack: cross-entropy on
these logits is -log g_soft(x)_y, and its gradient is a low-variance, informative direction for the
(non-differentiable) majority-vote classifier.

Noise across attack steps (`noise`):
- ``"fresh"`` (default): new z_k on every forward pass, as torchattacks' PGDRS and every EOT attack
  assume (EOT averages gradients over forward passes; with fixed noise all passes would agree).
- ``"fixed"``: SmoothAdv's choice: the m draws z_1..z_m (and the selector's eta_j) are drawn once and
  reused by every forward pass until `resample_noise()` is called (the attack app calls it before each
  batch). The bank is shared by the images of a batch: each image still sees m independent N(0, I)
  draws, and since the images of a batch do not interact, each image's attack is exactly SmoothAdv's.

Mode handling, explicit:
- the base classifier and the selector are kept in eval mode whatever mode this wrapper is put in:
  BatchNorm uses running statistics (an attack never updates them), dropout is off. torchattacks calls
  ``model.eval()`` before an attack (and ``.train()`` after, if the model was training); neither
  changes anything here, and neither turns the smoothing noise off: noise is drawn in every mode.
- their parameters are frozen (requires_grad False) unless ``freeze=False``; gradients w.r.t. the input
  are unaffected.
- normalisation is the first layer *inside* the base classifier (and the selector), so the attack works
  on [0,1] pixels: never call torchattacks' ``set_normalization_used`` on this model.

Noise comes from the model's own torch.Generator (`seed`), so attacks that reseed torch's global RNG
(torchattacks' APGD calls ``torch.manual_seed`` on every run) do not make the smoothing noise repeat.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn

from vrs.errors import check, check_choice
from vrs.selection.median import smoothed_sigma
from vrs.selection.soft import log_mean_softmax
from vrs.selection.vote import vote_counts
from vrs.smoothing.noise import standard_normal

NOISE_MODES = ("fresh", "fixed")
SELECTOR_SMOOTHINGS = ("median", "vote")  # VRS's median smoothing, or Dual RS's majority vote over the grid
SELECTOR_GRADS = ("straight_through", "mean", "median")
PRECISIONS = ("fp32", "bf16", "fp16")


def _as_sigma_vector(sigma: torch.Tensor | float, b: int, device: torch.device) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if sigma.dim() == 0:
        sigma = sigma.expand(b)
    if sigma.shape != (b,):
        raise ValueError(f"sigma has shape {tuple(sigma.shape)}, expected () or ({b},)")
    return sigma


class _NoiseSource:
    """Standard normal noise from a private generator, fresh per call or from a fixed bank."""

    def __init__(self, mode: str, seed: int | None):
        check_choice("defense.noise", mode, NOISE_MODES)
        self.mode = mode
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._gens: dict[str, torch.Generator] = {}
        self._bank: dict[str, torch.Tensor] = {}

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._gens.clear()
        self._bank.clear()

    def resample(self) -> None:
        """Forget the fixed bank: the next call draws a new one (no effect in `fresh` mode)."""
        self._bank.clear()

    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._gens[key] = g
        return self._gens[key]

    def draw(self, name: str, b: int, k: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """(b, k, *shape) float32 N(0, I) noise: k draws per image."""
        if self.mode == "fresh":
            return standard_normal((b, k, *shape), generator=self._gen(device), device=device)
        key = f"{name}:{device}"
        bank = self._bank.get(key)
        if bank is None or bank.shape != (k, *shape):
            bank = standard_normal((k, *shape), generator=self._gen(device), device=device)
            self._bank[key] = bank
        return bank.unsqueeze(0).expand(b, *bank.shape)


class SelectorSigma(nn.Module):
    """The VRS noise level sigma~(x) = snap(clip(median_j h(x + eta_j, lambda), sigma_min, sigma_max)),
    eta_j ~ N(0, sigma_h^2 I), j = 1..n_h (median smoothing of the selector, docs/method.md section 5; snapped
    to `grid` when one is given, as the deployed VRS model does), with a gradient an attack can follow.

    The median (and the snapping) has no useful gradient, so `grad` chooses what the attack differentiates:
    - ``"straight_through"`` (default): the forward value is the deployed value (clipped, snapped
      median), the backward pass is that of the mean over the n_h copies;
    - ``"mean"``: value and gradient of the clipped mean over the copies (no snapping): a smooth
      surrogate of the selector;
    - ``"median"``: the deployed value, with the gradient of the clipped median (one copy's gradient).
    `exact(x)` is the deployed value without a graph: `deployed(x)` when given (the VRS model's own
    `sigma(x, lam)`, i.e. `vrs.selection.median.deployed_sigma`, with its n_h), else the same formula
    (`smoothed_sigma`) over this module's n_h copies. n_h = 0 (or sigma_h = 0) means no median smoothing:
    sigma = snap(clip(h(x))).

    `selector(x, lam)` may return a (B,) tensor or an object with a `.sigma` (B,) tensor (the
    `NoiseSelector` of `vrs.selection.networks` returns a `SelectorOutput`; in eval mode that is the
    log-normal's median).
    """

    def __init__(self, selector: nn.Module, lam: float, sigma_min: float, sigma_max: float, n_h: int = 8,
                 sigma_h: float = 0.25, grad: str = "straight_through", grid: Sequence[float] | None = None,
                 deployed: Callable[[torch.Tensor], torch.Tensor] | None = None, smoothing: str = "median"):
        super().__init__()
        check_choice("defense.selector_grad", grad, SELECTOR_GRADS)
        check_choice("defense.selector_smoothing", smoothing, SELECTOR_SMOOTHINGS)
        check(smoothing == "median" or bool(grid), "defense.selector_smoothing", smoothing,
              "median for a selector without a grid (the vote is over grid cells)")
        self.smoothing = smoothing
        check(isinstance(n_h, int) and n_h >= 0, "defense.n_h", n_h, "an integer >= 0")
        check(sigma_h >= 0, "defense.sigma_h", sigma_h, "a number >= 0")
        check(0 < sigma_min < sigma_max, "sigma_min/sigma_max", (sigma_min, sigma_max), "0 < sigma_min < sigma_max")
        self.selector = selector
        self.lam = float(lam)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.n_h, self.sigma_h, self.grad = n_h, float(sigma_h), grad
        self.grid = sorted(float(g) for g in grid) if grid else None
        self.deployed = deployed
        self.noise: _NoiseSource | None = None  # set by DefendedModel (shared generator and mode)

    @property
    def smoothed(self) -> bool:
        return self.n_h > 0 and self.sigma_h > 0

    def _h(self, x: torch.Tensor) -> torch.Tensor:
        out = self.selector(x, self.lam)
        sigma = getattr(out, "sigma", out)
        return sigma.float().reshape(-1)

    def copies(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_h) selector outputs on the noisy copies x + eta_j (or (B, 1) without median smoothing)."""
        b = x.shape[0]
        if not self.smoothed:
            return self._h(x).view(b, 1)
        if self.noise is None:
            self.noise = _NoiseSource("fresh", None)
        eta = self.noise.draw("eta", b, self.n_h, tuple(x.shape[1:]), x.device)
        noisy = (x.unsqueeze(1).float() + self.sigma_h * eta).reshape(b * self.n_h, *x.shape[1:])
        return self._h(noisy.to(x.dtype)).view(b, self.n_h)

    def _clip(self, s: torch.Tensor) -> torch.Tensor:
        return s.clamp(self.sigma_min, self.sigma_max)

    def _deployed_value(self, h: torch.Tensor) -> torch.Tensor:
        """The deployed formula on these copies: snap(clip(median)) (`smoothed_sigma`), or with vote smoothing the
        grid sigma with the most votes (`vote_counts`), in h's dtype."""
        if self.smoothing == "vote":
            counts = vote_counts(self._clip(h.detach()), self.grid)
            return torch.as_tensor([self.grid[i] for i in counts.argmax(axis=1)], dtype=h.dtype, device=h.device)
        return smoothed_sigma(self._clip(h.detach()), self.grid).to(h.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.copies(x)
        if self.grad == "mean":
            return self._clip(h.mean(dim=1))
        value = self._deployed_value(h)
        # torch's median: the lower middle value, as deployed; its gradient is that of one copy
        surrogate = self._clip(h.median(dim=1).values) if self.grad == "median" else h.mean(dim=1)
        return value + (surrogate - surrogate.detach())

    @torch.no_grad()
    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The deployed noise level at x, no graph: `deployed(x)` (the VRS model's `deployed_sigma`), else
        the deployed formula on this module's copies."""
        if self.deployed is not None:
            return self.deployed(x).float().reshape(-1)
        return self._deployed_value(self.copies(x))


class SearchSigma(nn.Module):
    """The noise level of a test-time sigma search (vrs.selection.sigma_search: multiscale, dds) at x, for attacks.

    The search is a discrete stopping rule (multiscale) or an inner optimisation (dds) with no useful gradient, so
    the attack differentiates the classifier at the searched sigma and treats sigma as a constant (detached); every
    forward pass runs the search again (fresh noise from the defence's generator), so EOT also averages over it.
    `surrogate`: another configuration of the search for the attack's forward passes only (e.g. DDS with fewer steps:
    its full search in each of steps x EOT passes costs ~100 attacks); PREDICT always uses the deployed one."""

    def __init__(self, method, base: nn.Module, surrogate=None):
        super().__init__()
        self.method, self.base = method, base
        self.surrogate = surrogate if surrogate is not None else method  # a cheaper search for the attack's steps
        self.noise: _NoiseSource | None = None  # set by DefendedModel (shared generator)

    def _search(self, method, x: torch.Tensor) -> torch.Tensor:
        gen = self.noise._gen(x.device) if self.noise is not None else None
        return method.deployed_sigma(self.base, x.detach(), gen).float().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sigma the attack's forward pass smooths with: the surrogate search (the deployed one by default)."""
        return self._search(self.surrogate, x)

    @torch.no_grad()
    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The deployed search's sigma (what PREDICT on the clean and the adversarial input uses)."""
        return self._search(self.method, x)


class DefendedModel(nn.Module):
    """[0,1] images -> logits of the soft-smoothed classifier: log of the softmax averaged over m noisy
    copies at the chosen noise level (see the module docstring for noise and mode handling).

    Args:
        base: the base classifier f ([0,1] images -> logits, normalisation inside).
        sigma: a float (fixed-sigma smoothing) or a module x -> (B,) sigma (e.g. `SelectorSigma`).
        m: noise draws per image (SmoothAdv's m).
        noise: "fresh" (default) or "fixed" (see above).
        tau: softmax temperature.
        max_batch: largest batch of noisy images sent through f at once (None: all B * m).
        precision: "fp32", or "bf16" / "fp16" autocast of f and the selector (noise stays float32).
        seed: seed of the private noise generator (None: drawn from torch's global RNG).
        freeze: set requires_grad False on every parameter (the attack needs input gradients only).
    """

    def __init__(self, base: nn.Module, sigma: float | nn.Module | Callable, m: int = 8, noise: str = "fresh",
                 tau: float = 1.0, max_batch: int | None = None, precision: str = "fp32", seed: int | None = None,
                 freeze: bool = True):
        super().__init__()
        check(isinstance(m, int) and m >= 1, "defense.m", m, "an integer >= 1")
        check(isinstance(tau, (int, float)) and tau > 0, "defense.tau", tau, "a number > 0")
        check(max_batch is None or (isinstance(max_batch, int) and max_batch >= 1), "defense.max_batch",
              max_batch, "null or an integer >= 1")
        check_choice("defense.precision", precision, PRECISIONS)
        if not isinstance(sigma, (nn.Module,)) and not callable(sigma):
            check(isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0,
                  "defense.sigma", sigma, "a number > 0 (or a selector)")
        self.base = base
        self.sigma_source = sigma
        self.m, self.tau, self.max_batch, self.precision = m, float(tau), max_batch, precision
        self.noise = _NoiseSource(noise, seed)
        if isinstance(sigma, (SelectorSigma, SearchSigma)):
            sigma.noise = self.noise
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)
        self.train(False)

    # ---- mode ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DefendedModel:
        """Record the mode, but keep every wrapped network in eval mode (BN running stats, no dropout)."""
        self.training = bool(mode)
        for child in self.children():
            child.eval()
        return self

    # ---- noise ---------------------------------------------------------------------------------
    @property
    def has_selector(self) -> bool:
        return not isinstance(self.sigma_source, (int, float))

    def seed(self, seed: int) -> None:
        """Restart the private noise generator (and drop a fixed bank)."""
        self.noise.reseed(seed)

    def resample_noise(self) -> None:
        """Draw a new fixed noise bank at the next forward (`fixed` mode; no effect in `fresh` mode)."""
        self.noise.resample()

    # ---- forward -------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def sigma_of(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) noise level used at x, differentiable (through the selector's gradient surrogate)."""
        if not self.has_selector:
            return _as_sigma_vector(self.sigma_source, x.shape[0], x.device)
        with self._autocast(x.device):
            sigma = self.sigma_source(x)
        return _as_sigma_vector(sigma.float(), x.shape[0], x.device)

    @torch.no_grad()
    def defended_sigma(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the noise level the defence itself uses at x (exact clipped median for a selector)."""
        if not self.has_selector:
            return _as_sigma_vector(self.sigma_source, x.shape[0], x.device)
        src = self.sigma_source
        with self._autocast(x.device):
            sigma = src.exact(x) if hasattr(src, "exact") else src(x)
        return _as_sigma_vector(sigma.float(), x.shape[0], x.device)

    def forward_with_sigma(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K) of the soft-smoothed classifier, sigma (B,)) from one forward pass."""
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
        b, shape = x.shape[0], tuple(x.shape[1:])
        sigma = self.sigma_of(x)
        z = self.noise.draw("z", b, self.m, shape, x.device)
        noisy = x.unsqueeze(1).float() + sigma.view(b, 1, *([1] * len(shape))) * z
        noisy = noisy.reshape(b * self.m, *shape)
        with self._autocast(x.device):
            if self.max_batch is None or noisy.shape[0] <= self.max_batch:
                logits = self.base(noisy)
            else:
                logits = torch.cat([self.base(chunk) for chunk in noisy.split(self.max_batch)])
        return log_mean_softmax(logits.float().view(b, self.m, -1), self.tau), sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_sigma(x)[0]

    @torch.no_grad()
    def soft_predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) argmax of the soft-smoothed classifier (one forward pass, m draws)."""
        return self.forward(x).argmax(dim=1)
