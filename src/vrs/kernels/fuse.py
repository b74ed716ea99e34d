"""Inference-only fusion of a network's runs of identity ResNet blocks into fused residual stages (vrs.kernels).

What it is for: inference on CUDA (compute capability >= 8.0), bf16 or fp16 activations, channels a power
of two >= 16. `FusedResidualStage` falls back to the original blocks (exactly the unfused network)
everywhere else: on the CPU, in fp32, for input gradients. It is inference-only: the folded weights are a
snapshot, so its blocks are frozen and `.train()` is refused; fuse after loading the weights. Fusing
renumbers the children of the Sequentials it rewrites (state_dict keys change): keep the original network
for checkpoints.
Numerically it is the same network in bf16 with fp32 accumulation, so it is its own (equally
certifiable) base classifier, like any other precision choice (vrs.smoothing.smoothed).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from vrs.kernels.dispatch import kernel_supported, residual_stage
from vrs.models.resnet import BasicBlock


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of bn(conv(x)) in eval mode as one convolution, in float32."""
    gamma = bn.weight.detach().double() if bn.weight is not None else 1.0
    beta = bn.bias.detach().double() if bn.bias is not None else 0.0
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    weight = conv.weight.detach().double() * scale[:, None, None, None]
    bias = beta - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    return weight.float(), bias.float()


def is_identity_block(block: nn.Module) -> bool:
    """A BasicBlock of stride 1 whose shortcut is the identity (the blocks a stage repeats)."""
    return (isinstance(block, BasicBlock) and isinstance(block.shortcut, nn.Identity)
            and block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
            and block.conv1.in_channels == block.conv1.out_channels)


def fusable_channels(c: int) -> bool:
    return c >= 16 and c & (c - 1) == 0


class FusedResidualStage(nn.Module):
    """A run of identity BasicBlocks as one `residual_stage` kernel (eval-mode BatchNorm folded in).

    Inference-only. Runs the kernel on a supported GPU for bf16/fp16 inputs that need no gradient; the
    original (frozen) blocks otherwise."""

    def __init__(self, blocks: list[BasicBlock]):
        super().__init__()
        if not blocks or not all(is_identity_block(b) for b in blocks):
            raise ValueError("FusedResidualStage takes a non-empty list of stride-1 BasicBlocks with identity "
                             "shortcuts")
        channels = {b.conv1.out_channels for b in blocks}
        if len(channels) != 1 or not fusable_channels(next(iter(channels))):
            raise ValueError(f"FusedResidualStage needs one channel count, a power of two >= 16; "
                             f"got {sorted(channels)}")
        self.blocks = nn.Sequential(*blocks).requires_grad_(False)
        weights, biases = [], []
        for block in blocks:
            for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2)):
                w, b = fold_batchnorm(conv, bn)
                weights.append(w.permute(2, 3, 1, 0))  # (3, 3, C_in, C_out): one [C, C] matrix per tap
                biases.append(b)
        c = blocks[0].conv1.out_channels
        self.register_buffer("weight", torch.stack(weights).reshape(len(blocks), 2, 3, 3, c, c).contiguous())
        self.register_buffer("bias", torch.stack(biases).reshape(len(blocks), 2, c).contiguous())
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("FusedResidualStage is inference-only (its folded weights are a snapshot of eval-mode "
                               "BatchNorm): train the original network and fuse it again")
        return super().train(False)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
                and not (torch.is_grad_enabled() and x.requires_grad) and kernel_supported(x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_kernel(x):
            return self.blocks(x)
        return residual_stage(x, self.weight.to(x.dtype), self.bias)


def _run_key(module: nn.Module) -> int | None:
    """The channel count of an identity block (consecutive ones of one count form a run); None otherwise."""
    return module.conv1.out_channels if is_identity_block(module) else None


def _with_runs(children, min_blocks: int) -> list:
    """`children` in order, with each run of >= `min_blocks` consecutive identity BasicBlocks of one fusable
    channel count gathered into a list (the other children as they are)."""
    out = []
    for channels, group in itertools.groupby(children, key=_run_key):
        group = list(group)
        if channels is not None and len(group) >= min_blocks and fusable_channels(channels):
            out.append(group)
        else:
            out.extend(group)
    return out


def fusable_stage_count(model: nn.Module, min_blocks: int = 2) -> int:
    """How many FusedResidualStage modules fuse_residual_stages(model) would make (without copying it)."""
    return sum(isinstance(item, list) for parent in model.modules() if isinstance(parent, nn.Sequential)
               for item in _with_runs(parent, min_blocks))


def fuse_residual_stages(model: nn.Module, min_blocks: int = 2) -> nn.Module:
    """An inference-only copy of `model` (eval mode) in which every run of >= `min_blocks` consecutive identity
    BasicBlocks inside an nn.Sequential is one FusedResidualStage. Other modules are untouched, so any
    network works; one without such runs comes back unchanged (as a copy)."""
    fused = copy.deepcopy(model).eval()
    for parent in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        items = _with_runs(parent, min_blocks)
        if len(items) == len(parent):
            continue
        for name in list(parent._modules):
            del parent._modules[name]
        for i, item in enumerate(items):
            parent.add_module(str(i), FusedResidualStage(item) if isinstance(item, list) else item)
    return fused
