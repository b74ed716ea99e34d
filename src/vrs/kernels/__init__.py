"""Fused GPU kernels for certification: a run of a CIFAR ResNet's identity blocks as one kernel.

Why: certification runs ResNet-110 forward passes and nothing else, and most of their time goes to the
16-channel stage at 32x32, whose convolutions are memory-bound: every convolution and every
bias/ReLU/residual epilogue reads and writes a whole batch of activations in HBM (docs/performance.md). The
fused residual stage runs relu(bn2(conv2(relu(bn1(conv1(x))))) + x), repeated, inside one kernel that keeps
each image's activations on chip; BatchNorm is folded into the weights and bias once, when the stage is built.

- `triton_stage`: the kernel in Triton (also the one Triton's CPU interpreter runs);
- `gluon_stage`: the same algorithm in Gluon, Triton's explicit-layout dialect, which loads the tensor-core
  operands straight into registers and is 1.1-2x faster on an H100;
- `dispatch`: the one selector between them (`kernel_for`: Gluon on CUDA for the channel counts in its
  TILING, Triton otherwise), `kernel_supported`, and the `vrs::residual_stage` custom op;
- `fuse`: `fuse_residual_stages`, the inference-only copy of a network with its runs of identity BasicBlocks
  as `FusedResidualStage` modules (the original blocks run wherever the kernel cannot), used by
  vrs.smoothing.smoothed (`fused_blocks=True`) and vrs-certify (`certify.fused_blocks`).

Every module here imports Triton when it is installed: import them where they are used, not at start-up.
"""
