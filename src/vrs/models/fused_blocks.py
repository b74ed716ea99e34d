"""Inference-only fusion of the CIFAR ResNet's residual stages into one GPU kernel each.

Why: certification runs ResNet-110 forward passes and nothing else, and most of their time goes to the
16-channel stage at 32x32, whose convolutions are memory-bound: every convolution and every
bias/ReLU/residual epilogue reads and writes a whole batch of activations in HBM
(docs/performance.md). `residual_stage` runs a whole run of identity BasicBlocks,
relu(bn2(conv2(relu(bn1(conv1(x))))) + x), repeated, inside one Triton kernel: each program takes one
image and keeps its activations in a scratch slot (two zero-bordered (H+2)x(W+2)xC tiles) small enough to
stay in the SM's L1 and the L2; the stage's input and output are read and written once. (The scratch is
device memory, so L2 may write some of it back to HBM; that traffic is not measured.)
A 3x3 convolution is 9 shifted [pixels, C] x [C, C] tensor-core products (implicit GEMM, fp32
accumulation); BatchNorm is folded into the weights and bias once, when the stage is built.
Two implementations of that one algorithm: the Triton kernel below, and vrs.models.fused_stage_gluon, which
loads the tensor-core operands straight into registers and is 1.1-2x faster on an H100; `kernel_for` picks
the Gluon one on CUDA for the channel counts in its TILING (16, 32, 64), this one otherwise (and in Triton's
CPU interpreter, which runs only this one).

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

import contextlib
import copy
import functools
import itertools

import torch
from torch import nn

from vrs.models import fused_stage_gluon
from vrs.models.resnet import BasicBlock

try:  # Triton ships with CUDA builds of torch; CPU-only installs fall back to the plain blocks.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

# Launch settings of the Triton kernel per channel count: (output pixels per tensor-core tile, warps,
# software-pipelining stages). The fastest on an H100 (benchmarks/fused_blocks_tiling.py, docs/performance.md);
# other channel counts take DEFAULT_TILING.
TILING: dict[int, tuple[int, int, int]] = {16: (512, 2, 1), 32: (256, 2, 1), 64: (64, 4, 2)}
DEFAULT_TILING = (128, 4, 1)


def triton_available() -> bool:
    return triton is not None


@functools.lru_cache(maxsize=None)
def _capability_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # bf16 tensor-core products


def kernel_supported(device: torch.device | str | None = None) -> bool:
    """Whether the fused kernel can run on `device` (default: the current CUDA device): Triton installed and
    a CUDA GPU of compute capability >= 8.0."""
    if triton is None or not torch.cuda.is_available():
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    return _capability_ok(device.index if device.index is not None else torch.cuda.current_device())


if triton is not None:

    @triton.jit
    def _conv3x3(src, w_ptr, corner, c, C: tl.constexpr, WP: tl.constexpr, BM: tl.constexpr):
        """The 3x3 convolution of BM output pixels, [BM, C] in fp32: 9 tensor-core products
        [BM, C] x [C, C], one per tap. `corner` holds each pixel's offset of tap (0, 0) in the
        zero-bordered tile, so no tap needs a bounds mask. (Stacking a kernel row's three taps into one
        [BM, 3C -> power of two] product was slower on an H100 for every channel count.)"""
        acc = tl.zeros((BM, C), dtype=tl.float32)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                a = tl.load(src + corner[:, None] + ((dy * WP + dx) * C) + c[None, :])
                w = tl.load(w_ptr + ((dy * 3 + dx) * C + c[:, None]) * C + c[None, :])
                acc = tl.dot(a, w, acc=acc)
        return acc

    @triton.jit
    def _residual_stage_kernel(x_ptr, out_ptr, w_ptr, b_ptr, scratch_ptr, BLOCKS: tl.constexpr,
                               H: tl.constexpr, W: tl.constexpr, C: tl.constexpr, BM: tl.constexpr,
                               BORDER: tl.constexpr):
        """One program per image. Its two tiles live in `scratch` (slot = image), which stays in L2."""
        img = tl.program_id(0).to(tl.int64)
        TILE: tl.constexpr = (H + 2) * (W + 2) * C
        act = scratch_ptr + img * (2 * TILE)  # block input, then block output (in place)
        mid = act + TILE                      # relu(bn1(conv1(act)))
        _zero_borders(act, mid, H, W, C, BORDER)
        _residual_image(x_ptr + img * (H * W * C), out_ptr + img * (H * W * C), w_ptr, b_ptr, act, mid,
                        BLOCKS, H, W, C, BM)

    @triton.jit
    def _zero_borders(act, mid, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr, BORDER: tl.constexpr):
        """Zero the one-pixel frame of both tiles (the convolutions' zero padding): the top and bottom
        rows, then the left and right columns."""
        WP: tl.constexpr = W + 2
        i = tl.arange(0, BORDER)
        j = i - 2 * WP
        row = tl.where(i < WP, 0, tl.where(i < 2 * WP, H + 1, 1 + j // 2))
        col = tl.where(i < WP, i, tl.where(i < 2 * WP, i - WP, (j % 2) * (W + 1)))
        keep = (i < 2 * WP + 2 * H)[:, None]
        offs = ((row * WP + col) * C)[:, None] + tl.arange(0, C)[None, :]
        zeros = tl.zeros((BORDER, C), dtype=act.dtype.element_ty)
        tl.store(act + offs, zeros, mask=keep)
        tl.store(mid + offs, zeros, mask=keep)

    @triton.jit
    def _chunk(start, m, HW: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, C: tl.constexpr):
        """Pixels start..start+BM-1 of an image: (in-range mask [BM, 1], offset of each pixel's tap (0, 0)
        in the zero-bordered tile). Pixels past the end alias the last one (computed, never stored)."""
        p = start + m
        q = tl.minimum(p, HW - 1)
        return (p < HW)[:, None], ((q // W) * WP + q % W) * C

    @triton.jit
    def _residual_image(x_ptr, out_ptr, w_ptr, b_ptr, act, mid, BLOCKS: tl.constexpr, H: tl.constexpr,
                        W: tl.constexpr, C: tl.constexpr, BM: tl.constexpr):
        """All blocks of the stage for one NHWC image. Barriers separate the passes because each
        convolution reads pixels that other threads of the program wrote."""
        WP: tl.constexpr = W + 2
        HW: tl.constexpr = H * W
        CENTER: tl.constexpr = (WP + 1) * C  # tap (1, 1): the pixel itself
        c = tl.arange(0, C)
        m = tl.arange(0, BM)
        tl.debug_barrier()  # the frame is zero before anyone reads it
        for start in range(0, HW, BM):  # the image into the tile's interior
            keep, corner = _chunk(start, m, HW, W, WP, C)
            pix = (start + m)[:, None] * C + c[None, :]
            tl.store(act + corner[:, None] + CENTER + c[None, :], tl.load(x_ptr + pix, mask=keep), mask=keep)
        tl.debug_barrier()
        for blk in range(BLOCKS):
            w1 = w_ptr + (2 * blk) * (9 * C * C)
            w2 = w1 + 9 * C * C
            b1 = tl.load(b_ptr + (2 * blk) * C + c)
            b2 = tl.load(b_ptr + (2 * blk + 1) * C + c)
            for start in range(0, HW, BM):  # mid = relu(conv1(act) + b1)
                keep, corner = _chunk(start, m, HW, W, WP, C)
                y = tl.maximum(_conv3x3(act, w1, corner, c, C, WP, BM) + b1[None, :], 0.0)
                tl.store(mid + corner[:, None] + CENTER + c[None, :], y.to(mid.dtype.element_ty), mask=keep)
            tl.debug_barrier()
            for start in range(0, HW, BM):  # act = relu(conv2(mid) + b2 + act), in place
                keep, corner = _chunk(start, m, HW, W, WP, C)
                here = act + corner[:, None] + CENTER + c[None, :]
                y = _conv3x3(mid, w2, corner, c, C, WP, BM) + b2[None, :] + tl.load(here).to(tl.float32)
                tl.store(here, tl.maximum(y, 0.0).to(act.dtype.element_ty), mask=keep)
            tl.debug_barrier()
        for start in range(0, HW, BM):  # the tile's interior out
            keep, corner = _chunk(start, m, HW, W, WP, C)
            pix = (start + m)[:, None] * C + c[None, :]
            tl.store(out_ptr + pix, tl.load(act + corner[:, None] + CENTER + c[None, :]), mask=keep)


def kernel_for(x: torch.Tensor) -> str:
    """Which implementation runs a stage on x: "gluon" (fused_stage_gluon) for the channel counts where it
    is faster on CUDA, "triton" (this module's kernel; also the one Triton's CPU interpreter can run)."""
    if x.is_cuda and fused_stage_gluon.gluon_available() and x.shape[1] in fused_stage_gluon.TILING:
        return "gluon"
    return "triton"


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: str | None = None,
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
        if (kernel or kernel_for(x)) == "gluon":
            fused_stage_gluon.run(nhwc, out, weight, bias, scratch, *(tiling or ()))
        else:
            pixels, warps, stages = tiling or TILING.get(ch, DEFAULT_TILING)
            bm = max(16, min(pixels, triton.next_power_of_2(h * w)))
            _residual_stage_kernel[(n,)](nhwc, out, weight, bias, scratch, BLOCKS=weight.shape[0], H=h, W=w, C=ch,
                                         BM=bm, BORDER=triton.next_power_of_2(2 * (w + 2) + 2 * h),
                                         num_warps=warps, num_stages=stages)
    return out.permute(0, 3, 1, 2)


@torch.library.custom_op("vrs::residual_stage", mutates_args=())
def residual_stage(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A run of identity BasicBlocks in one kernel. x: (N, C, H, W) bf16/fp16 on CUDA; weight:
    (blocks, 2, 3, 3, C_in, C_out) in x's dtype, BatchNorm folded in; bias: (blocks, 2, C) float32.
    Returns channels_last (N, C, H, W)."""
    return _launch(x, weight, bias)


@residual_stage.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.channels_last)


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
            raise ValueError(f"FusedResidualStage needs one channel count, a power of two >= 16; got {sorted(channels)}")
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


def _with_runs(children, min_blocks: int) -> list:
    """`children` in order, with each run of >= `min_blocks` consecutive identity BasicBlocks of one fusable
    channel count gathered into a list (the other children as they are)."""
    out = []
    key = lambda m: m.conv1.out_channels if is_identity_block(m) else None  # noqa: E731
    for channels, group in itertools.groupby(children, key=key):
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
