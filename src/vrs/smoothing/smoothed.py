"""The smoothed classifier g(x) = argmax_c P[f(x + sigma z) = c]: a batched sampling engine for Cohen's
PREDICT and CERTIFY (statistics in `vrs.smoothing.core`).

How the engine spends the device's time:
- The Monte-Carlo samples of many images share one forward batch of `batch_size` inputs; an image's
  samples may straddle two batches. With torch.compile the last batch of a group is padded, so the shape
  never changes (no recompiles; CUDA graphs can replay).
- Noise is drawn on the device, in float32, from one torch.Generator per (image, stream), seeded from the
  image's seed. Each stream draws its noise in fixed blocks of `noise_block` samples in order, however the
  samples are packed into forward batches, so an image's noise depends only on its seed (and the device
  type): not on the batch size, on which other images share a batch, or on how a data set is sharded over
  processes. Selection (n0), estimation (n) and prediction samples use independent streams.
- Counts accumulate on the device with `index_add_` (integer, exact); the host reads them once per group of
  images, and while it does the statistics of one group the device already works on the next one.
- Options: bf16/fp16 autocast, true fp32 (TF32 off) or TF32, channels_last, torch.compile (any mode;
  "reduce-overhead" adds CUDA graphs), and `fused_blocks`: the CIFAR ResNet's residual stages as one
  Triton or Gluon kernel each (vrs.kernels; the fastest on an H100, docs/performance.md).

On numerics: the certificate holds for whatever deterministic function the network computes, so a
bf16 network is a different (equally certifiable) base classifier from the fp32 one; the precision is
part of what a result describes. The noise itself is always float32 and x + sigma * z is formed in float32.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from vrs.errors import VRSError, check, check_choice
from vrs.smoothing import batchnorm_folding
from vrs.smoothing import core, lattice
from vrs.smoothing.noise import standard_normal
from vrs.smoothing.sequential import SamplingPlan, run_looks

# Independent noise streams per image.
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
NOISE_BLOCK = 1024
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs
_SEED_MASK = (1 << 63) - 1


class NonFiniteOutputError(VRSError):
    """The base classifier returned NaN / Inf logits while sampling: its argmax would be counted as a vote
    ("class 0" for all-NaN logits), so the counts, and every radius from them, would be wrong."""


def image_seed(seed: int, idx: int) -> int:
    """The seed of data-set image `idx` in a run with global `seed` (a 63-bit hash of both)."""
    state = np.random.SeedSequence([int(seed) & _SEED_MASK, int(idx) & _SEED_MASK]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & _SEED_MASK


def stream_seed(key: int, stream: int) -> int:
    """The seed of one noise stream (SELECTION, ESTIMATION, PREDICTION) of an image with seed `key`."""
    state = np.random.SeedSequence([int(key) & _SEED_MASK, int(stream)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & _SEED_MASK


def with_freezing(compiled):
    """Call a torch.compile'd network with Inductor's freezing on: when it compiles, the weights become
    constants, so BatchNorm folds into the convolutions. Sound here because certification never changes the
    weights (a network trained further needs a new SmoothedClassifier)."""
    import torch._inductor.config as inductor_config  # deferred: only torch.compile needs it

    def forward(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return forward


def check_sampling(n: int, alpha: float, batch_size: int, n0: int | None = None, prefix: str = "") -> None:
    """Raise ConfigError (naming `<prefix>n` etc.) for n < 1, n0 < 1, n0 > n, alpha outside (0, 1),
    batch_size < 1."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    check(is_int(n) and n >= 1, f"{prefix}n", n, "an integer >= 1")
    if n0 is not None:
        check(is_int(n0) and n0 >= 1, f"{prefix}n0", n0, "an integer >= 1")
        check(n0 <= n, f"{prefix}n0", n0, f"at most {prefix}n={n} (n0 samples only pick the class to certify)")
    check(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < alpha < 1.0,
          f"{prefix}alpha", alpha, "a number strictly between 0 and 1")
    check(is_int(batch_size) and batch_size >= 1, f"{prefix}batch_size", batch_size, "an integer >= 1")


@dataclass
class CertifyResult:
    """CERTIFY for a group of B images; arrays of length B (counts (B, K))."""

    prediction: np.ndarray      # c_A, or -1 (abstain)
    radius: np.ndarray          # sigma * Phi^-1(pA_lower), 0.0 on abstain
    c_a: np.ndarray             # the class picked from the selection samples
    n_a: np.ndarray             # estimation count of c_A
    p_lower: np.ndarray         # Clopper-Pearson lower bound on pA
    sigma: np.ndarray
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    samples: np.ndarray | None = None    # samples drawn per image (n0 + estimation samples)
    decisions: np.ndarray | None = None  # radius_target: (B, J) yes / no / budget per target radius
    radii: tuple[float, ...] = ()        # radius_target: the J target radii

    def sampling_fields(self, j: int) -> dict:
        """Image j's `samples` and, with radius_target, `decisions` [(radius, yes/no/budget)], for a results row."""
        out = {"samples": int(self.samples[j])}
        if self.decisions is not None:
            out["decisions"] = list(zip(self.radii, self.decisions[j].tolist()))
        return out


@dataclass
class PredictResult:
    """PREDICT for a group of B images."""

    prediction: np.ndarray      # top class, or -1 (abstain)
    sigma: np.ndarray
    counts: np.ndarray


class _NoiseStream:
    """N(0, I) noise for `total` samples of one image, drawn in fixed blocks from its own generator; with
    `lattice_sigma`, integer lattice noise of that sigma instead (the sound mode, vrs.smoothing.lattice)."""

    def __init__(self, seed: int, total: int, shape: tuple[int, ...], device: torch.device, block: int,
                 lattice_sigma: float | None = None):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.shape, self.device, self.block, self.lattice_sigma = shape, device, block, lattice_sigma
        self.left = total          # samples not handed out yet
        self._ungenerated = total  # samples not drawn yet
        self._buf: torch.Tensor | None = None
        self._pos = 0

    def take(self, k: int) -> list[torch.Tensor]:
        """The next k samples (k <= self.left), as one or more slices of the drawn blocks."""
        parts = []
        self.left -= k
        while k > 0:
            if self._buf is None or self._pos == self._buf.shape[0]:
                size = min(self.block, self._ungenerated)
                if self.lattice_sigma is None:
                    self._buf = standard_normal((size, *self.shape), device=self.device, generator=self.gen)
                else:
                    self._buf = lattice.lattice_noise((size, *self.shape), self.lattice_sigma, device=self.device,
                                                      generator=self.gen)
                self._ungenerated -= size
                self._pos = 0
            m = min(k, self._buf.shape[0] - self._pos)
            parts.append(self._buf[self._pos : self._pos + m])
            self._pos += m
            k -= m
        return parts


class SmoothedClassifier:
    """Cohen's smoothed classifier around a base classifier f: [0,1] images -> logits.

    Args:
        base_classifier: the network (normalisation inside it); it is put in eval mode.
        num_classes: K.
        sigma: the noise level: a float, or a per-input (B,) tensor / sequence matching the batches passed
            to predict / certify (the data-dependent case). A call's own `sigma` argument overrides it.
        precision: "fp32" (true float32: TF32 off), "tf32", "bf16" or "fp16" (autocast).
        channels_last: run the network in channels_last memory format.
        compile: False, True (torch.compile default mode), a torch.compile mode string, e.g.
            "max-autotune-no-cudagraphs" (the fastest on an H100 for CIFAR ResNets: docs/performance.md) or
            "reduce-overhead" (CUDA graphs), or a dict of torch.compile keyword arguments (e.g.
            {"backend": "eager"}). Compiled networks run with Inductor's freezing (`with_freezing`).
        noise_block: samples per noise draw of one stream (part of what fixes the random stream).
        fused_blocks: run each run of identity BasicBlocks as one fused kernel
            (vrs.kernels.fuse.fuse_residual_stages, on a copy of the network). Takes effect on CUDA in
            bf16/fp16; elsewhere the copy computes exactly what the original does.
        fold_batchnorm: merge each eval-mode BatchNorm into the convolution before it
            (vrs.smoothing.batchnorm_folding, on a copy): the same function up to rounding, faster where memory
            bandwidth bounds the forward pass (small networks on a CPU).
        device: where to sample; default: the network's device.
        source: what the network is, e.g. its checkpoint's path: named by NonFiniteOutputError.
        sampling: None (Cohen's fixed n0 + n) or a vrs.smoothing.sequential.SamplingPlan: CERTIFY then draws
            the estimation samples in looks and stops an image once its plan's rule is met (certify.sampling).
            An image's samples are the first ones of the same stream fixed n draws, so one look is fixed CERTIFY.
        sound: draw integer lattice noise and form inputs exactly (vrs.smoothing.lattice, Voracek & Hein 2023):
            the certificate then holds for the computation as done in floating point. Needs 8-bit images;
            pA_lower gives up the lattice sampler's slack (about 1e-12).

    Non-finite logits: every forward batch adds the number of its samples with a NaN / Inf logit to a counter
    on the device, read with the counts (once per group of images, no extra synchronisation); any such
    sample raises NonFiniteOutputError when its group's counts reach the host.
    """

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma, *, precision: str = "fp32",
                 channels_last: bool = False, compile: bool | str | dict = False, noise_block: int = NOISE_BLOCK,
                 fused_blocks: bool = False, device: torch.device | str | None = None, source: str | None = None,
                 sampling: SamplingPlan | None = None, sound: bool = False, fold_batchnorm: bool = False):
        self.source = source  # what the network is (a checkpoint path), for NonFiniteOutputError
        self.sampling, self.sound = sampling, bool(sound)
        check(isinstance(num_classes, int) and num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        check_choice("precision", precision, PRECISIONS)
        check(isinstance(noise_block, int) and noise_block >= 1, "noise_block", noise_block, "an integer >= 1")
        if device is None:
            param = next(iter(base_classifier.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.base_classifier = base_classifier.to(self.device).eval()
        self.fold_batchnorm = bool(fold_batchnorm)
        if self.fold_batchnorm:
            self.base_classifier = batchnorm_folding.fold_batchnorm(self.base_classifier)
        self.fused_blocks = bool(fused_blocks)
        if self.fused_blocks:
            from vrs.kernels.fuse import fuse_residual_stages  # deferred: it imports Triton

            self.base_classifier = fuse_residual_stages(self.base_classifier)
        self.num_classes = num_classes
        self.sigma = sigma
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.noise_block = noise_block
        if self.channels_last:
            self.base_classifier = self.base_classifier.to(memory_format=torch.channels_last)
        if compile is False or compile is None:
            self.compile_mode, kwargs = None, None
        elif isinstance(compile, dict):
            kwargs = dict(compile)
            self.compile_mode = str(kwargs.get("mode") or kwargs.get("backend") or "default")
        else:
            self.compile_mode = "default" if compile is True else str(compile)
            kwargs = {"mode": self.compile_mode}
        self._forward = self.base_classifier
        if kwargs is not None:
            self._forward = with_freezing(torch.compile(self.base_classifier, dynamic=False, **kwargs))
        self._buffers: dict = {}

    # ---- public API --------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *, seeds: Sequence[int] | None = None,
                sigma=None) -> torch.Tensor:
        """PREDICT for a batch of images in [0,1]: (B,) int64 classes, -1 where it abstains."""
        result = next(self.predict_groups([(x, seeds, sigma)], n, alpha, batch_size))
        return torch.from_numpy(result.prediction)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *,
                seeds: Sequence[int] | None = None, sigma=None) -> tuple[torch.Tensor, torch.Tensor]:
        """CERTIFY for a batch of images in [0,1]: ((B,) int64 classes, (B,) float64 L2 radii), -1 / 0.0 on
        abstain."""
        result = next(self.certify_groups([(x, seeds, sigma)], n0, n, alpha, batch_size))
        return torch.from_numpy(result.prediction), torch.from_numpy(result.radius)

    def certify_groups(self, groups: Iterable[tuple], n0: int, n: int, alpha: float,
                       batch_size: int) -> Iterator[CertifyResult]:
        """CERTIFY over an iterable of (x, seeds, sigma) groups, yielding one CertifyResult per group.

        seeds: one integer per image (None: drawn from torch's global RNG); sigma: None (the classifier's),
        a float, or one value per image. The device works on group i + 1 while the host finishes group i.
        """
        check_sampling(n, alpha, batch_size, n0=n0)
        core.warn_sample_size(n, alpha, "certify")
        if self.sampling is not None:
            if (self.sampling.n, self.sampling.alpha) != (n, alpha):
                raise ValueError(f"the sampling plan is for n={self.sampling.n}, alpha={self.sampling.alpha}; "
                                 f"certify_groups got n={n}, alpha={alpha}")
            yield from self._certify_in_looks(groups, n0, batch_size)
            return

        def finish(sigmas, host, slack):
            counts = host.numpy()
            sel, est = counts[0::2], counts[1::2]
            stats = core.certify_from_counts(sel, est, alpha, sigmas, slack=slack)
            return CertifyResult(stats["prediction"], stats["radius"], stats["c_a"], stats["n_a"],
                                 stats["p_lower"], sigmas, sel, est, samples=np.full(len(sigmas), n0 + n))

        jobs = ((SELECTION, n0), (ESTIMATION, n))
        yield from self._run_groups(groups, jobs, batch_size, finish)

    def _certify_in_looks(self, groups: Iterable[tuple], n0: int, batch_size: int) -> Iterator[CertifyResult]:
        """CERTIFY with self.sampling: the n0 selection samples, then the estimation samples of each image in the
        plan's looks, only for the images whose rule is not met yet (vrs.smoothing.sequential.run_looks). Each
        look reads the counts back (no overlap of host and device work across looks)."""
        plan = self.sampling
        for group in groups:
            x, seeds, sigma = (tuple(group) + (None, None))[:3]
            with torch.inference_mode(), self._precision_context():
                x, seeds, sigmas = self._prepare(x, seeds, sigma)
                b = x.shape[0]
                sel_jobs = [(row, n0, stream_seed(seeds[row], SELECTION)) for row in range(b)]
                counts = self._count(x, sigmas, sel_jobs, batch_size).cpu()
            self._check_finite(int(counts[-1, 0]), n0 * b)
            sel = counts[:-1].numpy()
            c_a = sel.argmax(axis=1)
            streams = [self._stream(stream_seed(seeds[row], ESTIMATION), plan.n, tuple(x.shape[1:]), sigmas[row])
                       for row in range(b)]
            est = np.zeros_like(sel)

            def draw(rows, m, x=x, sigmas=sigmas, streams=streams, est=est, c_a=c_a):
                with torch.inference_mode(), self._precision_context():
                    got = self._count(x, sigmas, [(int(r), m, streams[r]) for r in rows], batch_size).cpu()
                self._check_finite(int(got[-1, 0]), m * len(rows))
                got = got[:-1].numpy()
                est[rows] += got
                return got[np.arange(len(rows)), c_a[rows]]  # the look's new counts of c_A

            n_a, drawn, p_lower, decisions = run_looks(plan, draw, sigmas, b, slack=self._slack(x, sigmas))
            abstain = p_lower < 0.5
            radius = np.where(abstain, 0.0, np.atleast_1d(core.radius_from_lower_bound(p_lower, sigmas)))
            prediction = np.where(abstain, core.ABSTAIN, c_a).astype(np.int64)
            yield CertifyResult(prediction, radius, c_a, n_a, p_lower, sigmas, sel, est, samples=n0 + drawn,
                                decisions=decisions, radii=plan.radii)

    def predict_groups(self, groups: Iterable[tuple], n: int, alpha: float, batch_size: int) -> Iterator[PredictResult]:
        """PREDICT over an iterable of (x, seeds, sigma) groups (see certify_groups)."""
        check_sampling(n, alpha, batch_size)
        core.warn_sample_size(n, alpha, "predict")

        def finish(sigmas, host, slack):
            counts = host.numpy()
            return PredictResult(core.predict_from_counts(counts, alpha), sigmas, counts)

        yield from self._run_groups(groups, ((PREDICTION, n),), batch_size, finish)

    def sample_counts(self, x: torch.Tensor, n: int, batch_size: int, *, seeds: Sequence[int] | None = None,
                      sigma=None, stream: int = ESTIMATION) -> torch.Tensor:
        """(B, K) int64 counts of the base classifier's top class over n noisy copies of each image (on the
        device; one number, the count of non-finite logits, is read back: NonFiniteOutputError)."""
        with torch.inference_mode(), self._precision_context():
            x, seeds, sigmas = self._prepare(x, seeds, sigma)
            jobs = [(row, n, stream_seed(seeds[row], stream)) for row in range(x.shape[0])]
            counts = self._count(x, sigmas, jobs, batch_size)
            self._check_finite(counts[-1, 0].item(), n * x.shape[0])
            return counts[:-1]

    def warmup(self, batch_size: int, shape: Sequence[int]) -> None:
        """One forward pass on a full batch (compiles the network when torch.compile is on)."""
        buf = self._buffer(batch_size, tuple(shape))
        with torch.inference_mode(), self._precision_context():
            self._forward(buf).argmax(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- internals ---------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, seeds, sigma) -> tuple[torch.Tensor, list[int], np.ndarray]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) image tensor, got {type(x).__name__} "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()  # a copy from pageable memory could wait for the work queued before it
        x = x.to(self.device, torch.float32, non_blocking=True)
        b = x.shape[0]
        if seeds is None:
            seeds = torch.randint(0, _SEED_MASK, (b,), dtype=torch.int64).tolist()
        seeds = [int(s) for s in seeds]
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for {b} images")
        sigma = self.sigma if sigma is None else sigma
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.detach().to("cpu", torch.float64).numpy()
        sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(-1), (b,)).copy() \
            if np.ndim(sigma) == 0 or np.size(sigma) in (1, b) else None
        if sigmas is None:
            raise ValueError(f"sigma has {np.size(sigma)} values for {b} images")
        if not np.all(np.isfinite(sigmas) & (sigmas > 0)):
            raise ValueError(f"sigma must be finite and > 0, got {sigmas}")
        if self.sound:
            lattice.to_lattice(x)  # refuses images off the 8-bit lattice
        return x, seeds, sigmas

    def _run_groups(self, groups, jobs_spec, batch_size, finish):
        # The torch contexts are entered around the device work only, never across a `yield`: the caller's
        # code between two results must not run under inference mode or autocast.
        pending = None
        for group in groups:
            x, seeds, sigma = (tuple(group) + (None, None))[:3]
            with torch.inference_mode(), self._precision_context():
                x, seeds, sigmas = self._prepare(x, seeds, sigma)
                jobs = [(row, num, stream_seed(seeds[row], stream))
                        for row in range(x.shape[0]) for stream, num in jobs_spec]
                counts = self._count(x, sigmas, jobs, batch_size)
                host, event = self._to_host(counts)
            if pending is not None:
                yield self._finish(pending, finish)
            pending = (sigmas, host, event, sum(num for _, num, _ in jobs), self._slack(x, sigmas))
        if pending is not None:
            yield self._finish(pending, finish)

    def _finish(self, pending, finish):
        sigmas, host, event, samples, slack = pending
        if event is not None:
            event.synchronize()
        self._check_finite(int(host[-1, 0]), samples)
        return finish(sigmas, host[:-1], slack)

    def _slack(self, x: torch.Tensor, sigmas: np.ndarray) -> np.ndarray:
        """What pA_lower gives up per image: the lattice sampler's total variation in the sound mode, else 0."""
        if not self.sound:
            return np.zeros(len(sigmas))
        d = int(np.prod(x.shape[1:]))
        return np.array([lattice.noise_slack(float(s), d) for s in sigmas])

    def _stream(self, seed: int, total: int, shape: tuple[int, ...], sigma: float) -> _NoiseStream:
        """The noise stream of `total` samples of one image (lattice noise at `sigma` in the sound mode)."""
        return _NoiseStream(seed, total, shape, self.device, self.noise_block,
                            lattice_sigma=float(sigma) if self.sound else None)

    def _check_finite(self, bad: int, samples: int) -> None:
        if bad:
            what = f"checkpoint {self.source}" if self.source else "the base classifier"
            raise NonFiniteOutputError(
                f"{what} gives non-finite (NaN / Inf) logits for {bad} of {samples} noisy samples of these "
                "images: their votes (argmax) would be wrong, so no result is written for them; the network "
                "overflows on these inputs (with fp16, try precision fp32 or bf16)")

    def _to_host(self, counts: torch.Tensor):
        if self.device.type != "cuda":
            return counts.to("cpu"), None
        host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        host.copy_(counts, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return host, event

    def _buffer(self, batch_size: int, shape: tuple[int, ...]) -> torch.Tensor:
        key = (batch_size, shape)
        if key not in self._buffers:
            fmt = torch.channels_last if self.channels_last and len(shape) == 3 else torch.contiguous_format
            buf = torch.zeros((batch_size, *shape), device=self.device, dtype=torch.float32)
            self._buffers.clear()  # one shape at a time
            self._buffers[key] = buf.contiguous(memory_format=fmt)
        return self._buffers[key]

    def _count(self, x: torch.Tensor, sigmas: np.ndarray, jobs: list[tuple[int, int, int | _NoiseStream]],
               batch_size: int) -> torch.Tensor:
        """Counts (len(jobs) + 1, K) on the device: row j counts the top classes of jobs[j] = (image row, number
        of samples, stream seed, or a stream to continue); the last row's first entry counts the samples with a
        non-finite logit."""
        k = self.num_classes
        shape = tuple(x.shape[1:])
        buf = self._buffer(batch_size, shape)
        # rows: one per job, then the non-finite counter (its first entry), then the padding rows of the last
        # batch (counted there and dropped)
        flag, trash = len(jobs) * k, len(jobs) + 1
        counts = torch.zeros((len(jobs) + 2) * k, dtype=torch.int64, device=self.device)
        ones = torch.ones(batch_size, dtype=torch.int64, device=self.device)
        fill, segments = 0, []
        x_int = lattice.to_lattice(x) if self.sound else None
        for slot, (row, num, source) in enumerate(jobs):
            stream = source if isinstance(source, _NoiseStream) else self._stream(source, num, shape, sigmas[row])
            xi, s = x[row], float(sigmas[row])
            left = num
            while left:
                take = min(left, batch_size - fill)
                left -= take
                for part in stream.take(take):
                    m = part.shape[0]
                    if self.sound:  # exact integer sum, then one float per lattice point
                        lattice.lattice_inputs(x_int[row], part, buf[fill : fill + m])
                    else:
                        torch.add(xi, part, alpha=s, out=buf[fill : fill + m])
                    fill += m
                segments.append((slot, take))
                if fill == batch_size:
                    self._forward_count(buf, segments, counts, ones, flag, fill)
                    fill, segments = 0, []
        if fill:
            if self.compile_mode is not None:  # keep one shape for compiled code (and CUDA graphs): pad
                segments.append((trash, batch_size - fill))
                self._forward_count(buf, segments, counts, ones, flag, fill)
            else:
                self._forward_count(buf[:fill], segments, counts, ones, flag, fill)
        return counts.view(len(jobs) + 2, k)[:-1]

    def _forward_count(self, buf, segments, counts, ones, flag: int, real: int) -> None:
        """Count the top class of each of buf's samples into `counts` (segments: (row, samples) in order) and
        the samples among the first `real` (the rest is padding) with a non-finite logit into counts[flag]."""
        k = self.num_classes
        offsets = torch.cat([torch.full((m,), slot * k, dtype=torch.int64, device=self.device)
                             for slot, m in segments])
        if self.compile_mode in CUDA_GRAPH_MODES and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._forward(buf)
        if logits.shape != (buf.shape[0], k):
            raise ValueError(f"base classifier returned logits of shape {tuple(logits.shape)}, expected "
                             f"({buf.shape[0]}, {k})")
        counts.index_add_(0, logits.argmax(1) + offsets, ones[: buf.shape[0]])
        counts[flag : flag + 1].add_(torch.isfinite(logits[:real]).all(1).logical_not().sum())

    @contextlib.contextmanager
    def _precision_context(self):
        dev = self.device.type
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(device_type=dev, dtype=dtype):
                yield
            return
        if dev != "cuda":
            yield
            return
        tf32 = self.precision == "tf32"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
