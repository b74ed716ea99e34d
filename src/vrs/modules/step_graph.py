"""The whole training step (noise, forward, loss, backward, optimizer step) as one CUDA graph.

Why: a CIFAR ResNet at Cohen's batch size (256) launches about two thousand small kernels per step, and the
host CPU, not the GPU, sets the pace (docs/performance.md: a bare PyTorch loop spends 88 ms per step on the
host for about 12 ms of GPU work). Replaying one captured graph costs the host a few microseconds, so the
step runs at the GPU's speed. torch.compile's "reduce-overhead" graphs the forward and the backward
separately and leaves the noise, the loss and the optimizer outside; this captures all of it.

How (the recipe of PyTorch's "whole network capture"): the first `warmup` steps run eagerly on a side
stream (cuDNN autotuning, optimizer state, lazy initialisation); the next step is captured with its inputs
copied into static buffers, and every later batch of the same shape is copied into those buffers and
replayed. A batch of another shape (the last, smaller batch of an epoch) runs eagerly on the same
parameters, gradients and optimizer state. Fresh noise on every replay comes from the CUDA generator's
Philox offset, which a graph advances on each replay, so the random stream stays seeded and reproducible.

What the captured step needs: a learning rate held in a device tensor (schedulers then update it in place:
`make_capturable`), optimizers in capturable mode, autocast without its weight cache, and nothing that reads
values back on the host.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from vrs.errors import VRSError

Tensors = Sequence[torch.Tensor]


class CaptureError(VRSError):
    """The step does something a CUDA graph cannot hold (one clear line from the apps, exit code 2)."""


def make_capturable(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Prepare an optimizer for a captured step, right before the capture (after any checkpoint is restored).

    A Python-float learning rate would be frozen into the graph at capture; as a one-element tensor on the
    parameters' device, the scheduler's later updates (an in-place fill of a tensor rate) reach every replay.
    Optimizers with a `capturable` option (Adam, AdamW, ...) keep their step counters on the device with it (a
    CUDA-only mode; on the CPU, where the tests stand in for the capture, it stays off).
    """
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "capturable" in optimizer.defaults and device.type == "cuda":
            group["capturable"] = True
    return optimizer


class CUDAGraphCapture:
    """`body(*static_inputs)` recorded once into a CUDA graph (recording does not run it)."""

    def __init__(self, body: Callable[..., tuple[torch.Tensor, ...]], static_inputs: Tensors,
                 zero_grad: Callable[..., None]):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = tuple(body(*static_inputs))

    def replay(self) -> None:
        self.graph.replay()


class CallCapture:
    """Stand-in for CUDAGraphCapture where there is no GPU (tests): a replay calls `body` again on the static
    inputs and writes the results into the same output tensors, which is what a replay does. Gradients are
    cleared first: the captured backward writes them afresh (it was recorded with no gradients present)."""

    def __init__(self, body: Callable[..., tuple[torch.Tensor, ...]], static_inputs: Tensors,
                 zero_grad: Callable[..., None]):
        self.body, self.static_inputs, self.zero_grad = body, static_inputs, zero_grad
        self.outputs: tuple[torch.Tensor, ...] = ()

    def replay(self) -> None:
        self.zero_grad(set_to_none=True)
        results = tuple(self.body(*self.static_inputs))
        if not self.outputs:
            self.outputs = tuple(t.clone() for t in results)
        for static, new in zip(self.outputs, results):
            static.copy_(new)


class GraphedStep:
    """Call `body(*inputs)` as one CUDA graph once warmed up; see the module docstring.

    body: runs forward, loss, backward and optimizer step on its inputs and returns tensors (e.g. detached
        logits and loss); after a replay they hold that step's values until the next call.
    zero_grad: `optimizer.zero_grad`; called with set_to_none=True before warm-up steps and the capture
        (the captured backward allocates the gradients it writes), with set_to_none=False before eager steps
        after the capture (they accumulate into the captured gradient tensors, which the graph still uses).
    capture: how to record the step: CUDAGraphCapture, or CallCapture to check the logic on a CPU.
    before_capture: called right before recording (e.g. make_capturable: a checkpoint restored after the
        optimizer was built may have put float learning rates back).
    """

    def __init__(self, body: Callable[..., tuple[torch.Tensor, ...]], zero_grad: Callable[..., None],
                 warmup: int = 3, capture: type = CUDAGraphCapture,
                 before_capture: Callable[[], object] | None = None):
        self.body, self.zero_grad, self.warmup, self.capture_cls = body, zero_grad, warmup, capture
        self.before_capture = before_capture
        self.captured: CUDAGraphCapture | CallCapture | None = None
        self.static_inputs: list[torch.Tensor] = []
        self.eager_steps = 0
        self.replays = 0

    def _matches(self, inputs: Tensors) -> bool:
        return all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                   for a, b in zip(inputs, self.static_inputs))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.captured is None:
            if self.eager_steps < self.warmup:
                return self._eager(inputs)
            if self.before_capture is not None:
                self.before_capture()
            self.static_inputs = [t.detach().clone() for t in inputs]
            self.zero_grad(set_to_none=True)
            try:
                self.captured = self.capture_cls(self.body, self.static_inputs, self.zero_grad)
            except Exception as err:  # e.g. a host read-back in the step; the CUDA RNG is unusable after it
                raise CaptureError(f"the training step could not be captured in a CUDA graph ({err}); "
                                   "set module.cuda_graph=false") from err
        elif self._matches(inputs):
            for static, new in zip(self.static_inputs, inputs):
                static.copy_(new)
        else:
            return self._eager(inputs)
        self.captured.replay()
        self.replays += 1
        return self.captured.outputs

    def _eager(self, inputs: Tensors) -> tuple[torch.Tensor, ...]:
        self.eager_steps += 1
        self.zero_grad(set_to_none=self.captured is None)
        if self.captured is not None or not inputs[0].is_cuda:
            return self.body(*inputs)
        side = torch.cuda.Stream()  # warm up on a side stream, as the capture will run on one
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.body(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return out
