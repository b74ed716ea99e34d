"""The one selector between the fused residual stage's two kernels (vrs.kernels): which one runs, on which
device, and the `vrs::residual_stage` custom op that torch.compile sees.

Both kernels take inference inputs on CUDA (compute capability >= 8.0), bf16 or fp16 activations, channels a
power of two >= 16; `kernel_for` picks Gluon for the channel counts in gluon_stage.TILING (the faster one there
on an H100, docs/performance.md) and Triton otherwise, and Triton on the CPU (its interpreter; the tests).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from vrs.kernels import gluon_stage, triton_stage
from vrs.kernels.triton_stage import triton_available


@functools.cache
def _capability_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # bf16 tensor-core products


def kernel_supported(device: torch.device | str | None = None) -> bool:
    """Whether the fused kernel can run on `device` (default: the current CUDA device): Triton installed and
    a CUDA GPU of compute capability >= 8.0."""
    if not triton_available() or not torch.cuda.is_available():
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    return _capability_ok(device.index if device.index is not None else torch.cuda.current_device())


def kernel_for(x: torch.Tensor) -> str:
    """Which implementation runs a stage on x: "gluon" (gluon_stage) for the channel counts where it is faster
    on CUDA, "triton" (triton_stage; also the one Triton's CPU interpreter can run)."""
    if x.is_cuda and gluon_stage.gluon_available() and x.shape[1] in gluon_stage.TILING:
        return "gluon"
    return "triton"


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: str | None = None,
           tiling: tuple[int, ...] | None = None) -> torch.Tensor:
    """Run the fused stage on (N, C, H, W) activations with `kernel` (default: kernel_for(x)) and `tiling`
    (default: that kernel's TILING for the channel count); returns channels_last (N, C, H, W)."""
    n, ch, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).contiguous()  # free when x is channels_last
    out = torch.empty_like(nhwc)
    if n == 0:
        return out.permute(0, 3, 1, 2)
    scratch = torch.empty(n * 2 * (h + 2) * (w + 2) * ch, dtype=x.dtype, device=x.device)
    # Triton launches on the current device: make it x's (the interpreter runs CPU tensors)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        run = gluon_stage.run if (kernel or kernel_for(x)) == "gluon" else triton_stage.run
        run(nhwc, out, weight, bias, scratch, *(tiling or ()))
    return out.permute(0, 3, 1, 2)


@torch.library.custom_op("vrs::residual_stage", mutates_args=())
def residual_stage(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A run of identity BasicBlocks in one kernel. x: (N, C, H, W) bf16/fp16 on CUDA; weight:
    (blocks, 2, 3, 3, C_in, C_out) in x's dtype, BatchNorm folded in; bias: (blocks, 2, C) float32.
    Returns channels_last (N, C, H, W)."""
    return launch(x, weight, bias)


@residual_stage.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.channels_last)

