"""The fused residual stage (vrs.kernels) written in Gluon, Triton's explicit-layout dialect.

Why a second kernel: the Triton kernel loads each convolution tap's [pixels, C] operand in a blocked layout
and Triton then converts it to the tensor cores' operand layout through shared memory, so every operand
crosses the SM's L1/shared-memory arrays three times (load, shared store, shared load). With C = 16 (the
first stage of the CIFAR ResNets, where most of the time goes) those products are too small for the
arithmetic to hide that traffic. Here the operands are loaded from the (L1-resident) scratch tiles straight
into the registers of `mma_v2`'s operand layout: one pass, no shared memory at all.

To make those loads wide, the scratch tiles store each pixel's channels in a permuted order (`position`):
the channels one thread holds in a tensor-core fragment (2t, 2t+1, 2t+8, 2t+9 of every group of 16) are
adjacent, so a thread reads them with one vector load instead of 4-byte pieces. The weights are stored the
same way (`gluon_weight`). The permutation is internal: the stage's input and output are ordinary NHWC.

Same algorithm, same arithmetic as the Triton kernel (bf16/fp16 operands, fp32 accumulation in the same tap
order): on an H100 its outputs matched the Triton kernel's bit for bit (docs/performance.md). Gluon kernels
do not run in Triton's interpreter; on the CPU, tests compile this one for sm_80 and sm_90 instead.
"""

from __future__ import annotations

import torch

try:  # Gluon ships with Triton >= 3.5 (CUDA builds of torch)
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:  # pragma: no cover - depends on the install
    gluon = None

# Channel counts this kernel runs, with (output pixels per tensor-core tile, warps): the fastest on an H100
# (benchmarks/fused_stage_kernels.py). Other channel counts run the Triton kernel, which was as fast or
# faster there.
TILING: dict[int, tuple[int, int]] = {16: (512, 4), 32: (128, 2), 64: (64, 2)}


def gluon_available() -> bool:
    return gluon is not None


def _position(k: int, c: int) -> int:
    """Where channel k of c is stored in the scratch tiles and in the weights' input-channel axis: a
    permutation of the bits of k (bit 0 stays, bit 3 moves to 1, bits 4.. to 2.., bits 1-2 to the top)."""
    return (c // 4) * ((k % 8) // 2) + 4 * (k // 16) + 2 * ((k // 8) % 2) + k % 2


def _position_bits(c: int) -> list[int]:
    """The channel bit that each bit of a storage position holds, most significant first."""
    nb = c.bit_length() - 1
    holder = [position(1 << bit, c).bit_length() - 1 for bit in range(nb)]  # position bit of each channel bit
    return [holder.index(pbit) for pbit in range(nb - 1, -1, -1)]


# Host code calls them as they are; kernels call them at compile time.
if gluon is not None:
    position = gluon.constexpr_function(_position)
    position_bits = gluon.constexpr_function(_position_bits)
else:  # pragma: no cover - depends on the install
    position, position_bits = _position, _position_bits


def gluon_weight(weight: torch.Tensor) -> torch.Tensor:
    """(blocks, 2, 3, 3, C_in, C_out) -> (blocks, 2, 3, 3, C_out, C_in at `position`): each tap's B operand
    with a thread's input channels adjacent. Views and one copy only (no index tensor), so that it can be
    captured in a CUDA graph."""
    c = weight.shape[-1]
    nb = c.bit_length() - 1
    bits = weight.transpose(-1, -2).reshape(*weight.shape[:-1], *[2] * nb)  # input channel bits, MSB first
    lead = list(range(weight.dim() - 1))
    order = [len(lead) + nb - 1 - bit for bit in position_bits(c)]
    return bits.permute(*lead, *order).reshape(weight.shape).contiguous()


if gluon is not None:

    @gluon.constexpr_function
    def _position_layout(layout, c, dim):
        """`layout` (a linear layout over [.., ..] with channels on `dim`) relabelled to storage positions,
        with the registers that hold adjacent positions first, so that loads and stores vectorise."""
        def relabel(bases):
            return [[position(b[0], c), b[1]] if dim == 0 else [b[0], position(b[1], c)] for b in bases]

        regs = relabel(layout.reg_bases)
        along = [b for b in regs if b[dim] != 0 and b[1 - dim] == 0]
        regs = sorted(along, key=lambda b: b[dim]) + [b for b in regs if b not in along]
        return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=relabel(layout.lane_bases),
                                          warp_bases=relabel(layout.warp_bases), block_bases=[],
                                          shape=layout.shape)

    @gluon.constexpr_function
    def _bit_shape(shape, dim):
        """`shape` with its channel dim split into bits, most significant first."""
        bits = [2] * (shape[dim].bit_length() - 1)
        return bits + [shape[1]] if dim == 0 else [shape[0]] + bits

    @gluon.constexpr_function
    def _bit_order(c, dim, to_channels):
        """The permutation of _bit_shape's dims between storage-position bits and channel bits."""
        nb = c.bit_length() - 1
        held = position_bits(c)
        if to_channels:
            order = [held.index(bit) for bit in range(nb - 1, -1, -1)]
        else:
            order = [nb - 1 - bit for bit in held]
        return order + [nb] if dim == 0 else [0] + [1 + o for o in order]

    @gluon.jit
    def _load_permuted(ptrs_base, other_off, SHAPE: gl.constexpr, DIM: gl.constexpr, LAYOUT: gl.constexpr):
        """The tensor of SHAPE (channels on DIM, stored at `position`) in LAYOUT: one vector load per run of a
        thread's channels, then a free relabelling of registers. `other_off`: the other dim's offsets."""
        C: gl.constexpr = SHAPE[DIM]
        PL: gl.constexpr = _position_layout(gl.to_linear_layout(LAYOUT, SHAPE), C, DIM)
        p = gl.arange(0, C, layout=gl.SliceLayout(1 - DIM, PL))
        o = gl.convert_layout(other_off, gl.SliceLayout(DIM, PL))
        if DIM == 0:
            m = gl.load(ptrs_base + p[:, None] + o[None, :])
        else:
            m = gl.load(ptrs_base + o[:, None] + p[None, :])
        m = gl.permute(gl.reshape(m, _bit_shape(SHAPE, DIM)), _bit_order(C, DIM, True).value)
        return gl.convert_layout(gl.reshape(m, SHAPE), LAYOUT)

    @gluon.jit
    def _store_permuted(ptrs_base, row_off, y, keep, BM: gl.constexpr, C: gl.constexpr, LAYOUT: gl.constexpr):
        """Store y ([BM, C] in LAYOUT) with its channels at `position`, rows where `keep`."""
        PL: gl.constexpr = _position_layout(gl.to_linear_layout(LAYOUT, [BM, C]), C, 1)
        m = gl.permute(gl.reshape(y, _bit_shape([BM, C], 1)), _bit_order(C, 1, False).value)
        m = gl.convert_layout(gl.reshape(m, [BM, C]), PL)
        p = gl.arange(0, C, layout=gl.SliceLayout(0, PL))
        r = gl.convert_layout(row_off, gl.SliceLayout(1, PL))
        k = gl.convert_layout(keep, gl.SliceLayout(1, PL))
        gl.store(ptrs_base + r[:, None] + p[None, :], m, mask=k[:, None] & (p[None, :] < C))

    @gluon.jit
    def _chunk(start, BM: gl.constexpr, HW: gl.constexpr, W: gl.constexpr, C: gl.constexpr, LAYOUT: gl.constexpr):
        """Pixels start..start+BM-1 of an image: (in range [BM], offset of each pixel's tap (0, 0) in the
        zero-bordered tile). Pixels past the end alias the last one (computed, never stored)."""
        p = start + gl.arange(0, BM, layout=LAYOUT)
        q = gl.minimum(p, HW - 1)
        return p < HW, ((q // W) * (W + 2) + q % W) * C

    @gluon.jit
    def _conv3x3(src, w_ptr, start, BM: gl.constexpr, HW: gl.constexpr, W: gl.constexpr, C: gl.constexpr,
                 MMA: gl.constexpr):
        """The 3x3 convolution of BM output pixels, [BM, C] fp32 in MMA: 9 products [BM, C] x [C, C]."""
        A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        B: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
        keep, corner = _chunk(start, BM, HW, W, C, gl.SliceLayout(1, A))
        n = gl.arange(0, C, layout=gl.SliceLayout(0, B))
        acc = gl.zeros([BM, C], gl.float32, layout=MMA)
        for t in gl.static_range(9):
            a = _load_permuted(src + ((t // 3) * (W + 2) + t % 3) * C, corner, [BM, C], 1, A)
            b = _load_permuted(w_ptr + t * C * C, n * C, [C, C], 0, B)
            acc = mma_v2(a, b, acc)
        return acc

    @gluon.jit
    def _residual_stage_kernel(x_ptr, out_ptr, w_ptr, b_ptr, scratch_ptr, BLOCKS: gl.constexpr, H: gl.constexpr,
                               W: gl.constexpr, C: gl.constexpr, BM: gl.constexpr, BORDER: gl.constexpr,
                               MMA: gl.constexpr, IO: gl.constexpr):
        """One program per image, as the Triton kernel: two zero-bordered tiles in `scratch`, barriers
        between the passes because each convolution reads pixels other threads wrote."""
        img = gl.program_id(0).to(gl.int64)
        WP: gl.constexpr = W + 2
        HW: gl.constexpr = H * W
        TILE: gl.constexpr = (H + 2) * WP * C
        CENTER: gl.constexpr = (WP + 1) * C  # tap (1, 1): the pixel itself
        dtype: gl.constexpr = x_ptr.dtype.element_ty
        act = scratch_ptr + img * (2 * TILE)  # block input, then block output (in place)
        mid = act + TILE                      # relu(bn1(conv1(act)))
        x_img = x_ptr + img * (HW * C)
        out_img = out_ptr + img * (HW * C)

        # the one-pixel frames of both tiles: top and bottom rows, then left and right columns
        i = gl.arange(0, BORDER, layout=gl.SliceLayout(1, IO))
        j = i - 2 * WP
        row = gl.where(i < WP, 0, gl.where(i < 2 * WP, H + 1, 1 + j // 2))
        col = gl.where(i < WP, i, gl.where(i < 2 * WP, i - WP, (j % 2) * (W + 1)))
        c = gl.arange(0, C, layout=gl.SliceLayout(0, IO))
        frame = ((row * WP + col) * C)[:, None] + c[None, :]
        in_frame = (i < 2 * WP + 2 * H)[:, None] & (c[None, :] < C)
        zeros = gl.zeros([BORDER, C], dtype, layout=IO)
        gl.store(act + frame, zeros, mask=in_frame)
        gl.store(mid + frame, zeros, mask=in_frame)
        gl.thread_barrier()

        for start in range(0, HW, BM):  # the image into the tile's interior
            keep, corner = _chunk(start, BM, HW, W, C, gl.SliceLayout(1, IO))
            pix = (start + gl.arange(0, BM, layout=gl.SliceLayout(1, IO)))[:, None] * C + c[None, :]
            x = gl.load(x_img + pix, mask=keep[:, None] & (c[None, :] < C))
            _store_permuted(act + CENTER, corner, x, keep, BM, C, IO)
        gl.thread_barrier()

        cm = gl.arange(0, C, layout=gl.SliceLayout(0, MMA))
        for blk in range(BLOCKS):
            w1 = w_ptr + (2 * blk) * (9 * C * C)
            w2 = w1 + 9 * C * C
            b1 = gl.load(b_ptr + (2 * blk) * C + cm)
            b2 = gl.load(b_ptr + (2 * blk + 1) * C + cm)
            for start in range(0, HW, BM):  # mid = relu(conv1(act) + b1)
                keep, corner = _chunk(start, BM, HW, W, C, gl.SliceLayout(1, MMA))
                y = gl.maximum(_conv3x3(act, w1, start, BM, HW, W, C, MMA) + b1[None, :], 0.0)
                _store_permuted(mid + CENTER, corner, y.to(dtype), keep, BM, C, MMA)
            gl.thread_barrier()
            for start in range(0, HW, BM):  # act = relu(conv2(mid) + b2 + act), in place
                keep, corner = _chunk(start, BM, HW, W, C, gl.SliceLayout(1, MMA))
                residual = _load_permuted(act + CENTER, corner, [BM, C], 1, MMA).to(gl.float32)
                y = _conv3x3(mid, w2, start, BM, HW, W, C, MMA) + b2[None, :] + residual
                _store_permuted(act + CENTER, corner, gl.maximum(y, 0.0).to(dtype), keep, BM, C, MMA)
            gl.thread_barrier()

        for start in range(0, HW, BM):  # the tile's interior out
            keep, corner = _chunk(start, BM, HW, W, C, gl.SliceLayout(1, IO))
            pix = (start + gl.arange(0, BM, layout=gl.SliceLayout(1, IO)))[:, None] * C + c[None, :]
            y = _load_permuted(act + CENTER, corner, [BM, C], 1, IO)
            gl.store(out_img + pix, y, mask=keep[:, None] & (c[None, :] < C))


def launch_config(h: int, w: int, c: int, pixels: int | None = None, warps: int | None = None) -> dict:
    """The kernel's compile-time arguments for (h, w, c) images (TILING's unless given)."""
    default_pixels, default_warps = TILING.get(c, (128, 4))
    bm = max(16, min(pixels or default_pixels, triton.next_power_of_2(h * w)))
    warps = max(1, min(warps or default_warps, bm // 16))  # every warp owns whole 16-row MMA tiles
    vec = min(8, c)
    io = gl.BlockedLayout(size_per_thread=[1, vec], threads_per_warp=[32 // min(32, c // vec), min(32, c // vec)],
                          warps_per_cta=[warps, 1], order=[1, 0])
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[warps, 1], instr_shape=[16, 8])
    return dict(H=h, W=w, C=c, BM=bm, BORDER=triton.next_power_of_2(2 * (w + 2) + 2 * h), MMA=mma, IO=io,
                num_warps=warps)


def run(nhwc: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scratch: torch.Tensor,
        pixels: int | None = None, warps: int | None = None) -> None:
    """The kernel on the buffers that vrs.kernels.dispatch.launch prepares: (N, H, W, C) bf16/fp16 CUDA activations
    in and out, the fused stage's weight (blocks, 2, 3, 3, C_in, C_out) and bias (blocks, 2, C) float32, and the
    scratch tiles (N * 2 * (H + 2) * (W + 2) * C elements)."""
    n, h, w, ch = nhwc.shape
    _residual_stage_kernel[(n,)](nhwc, out, gluon_weight(weight), bias, scratch, BLOCKS=weight.shape[0],
                                 **launch_config(h, w, ch, pixels, warps))
