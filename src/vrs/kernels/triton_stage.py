"""The fused residual stage (vrs.kernels) written in Triton: one program per image.

Each program keeps the image's activations in a scratch slot (two zero-bordered (H+2)x(W+2)xC tiles) small
enough to stay in the SM's L1 and the L2, and runs every block of the stage on it; the stage's input and output
are read and written once. (The scratch is device memory, so L2 may write some of it back to HBM; that traffic
is not measured.) A 3x3 convolution is 9 shifted [pixels, C] x [C, C] tensor-core products (implicit GEMM,
fp32 accumulation). This is also the one implementation that Triton's CPU interpreter runs (the tests).
"""

from __future__ import annotations

import torch

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


def run(nhwc: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scratch: torch.Tensor,
        pixels: int | None = None, warps: int | None = None, stages: int | None = None) -> None:
    """The kernel on the buffers that vrs.kernels.dispatch.launch prepares: (N, H, W, C) activations in and out,
    the weight (blocks, 2, 3, 3, C_in, C_out) and bias (blocks, 2, C) float32, and the scratch tiles
    (N * 2 * (H + 2) * (W + 2) * C elements). Tiling: TILING's for the channel count unless given."""
    n, h, w, ch = nhwc.shape
    default_pixels, default_warps, default_stages = TILING.get(ch, DEFAULT_TILING)
    pixels, warps, stages = pixels or default_pixels, warps or default_warps, stages or default_stages
    bm = max(16, min(pixels, triton.next_power_of_2(h * w)))
    _residual_stage_kernel[(n,)](nhwc, out, weight, bias, scratch, BLOCKS=weight.shape[0], H=h, W=w, C=ch,
                                 BM=bm, BORDER=triton.next_power_of_2(2 * (w + 2) + 2 * h),
                                 num_warps=warps, num_stages=stages)
