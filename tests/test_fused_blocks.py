"""The fused residual stages (vrs.kernels) against the plain blocks they replace.

On the CPU: BatchNorm folding, which blocks get fused, the exact fallback outside the kernel's domain, the
certify option, and the Triton kernel itself run by Triton's interpreter (TRITON_INTERPRET=1, in a
subprocess because Triton reads it when the kernel is defined) in float32 and float16. The Gluon kernel
(vrs.kernels.gluon_stage) cannot run in the interpreter: on the CPU it is compiled for sm_80 and sm_90
and its PTX checked (tensor-core operands in registers, no shared memory), and its channel permutation is
checked. On a GPU: both kernels in bfloat16 and float16 against the blocks and each other, the network
inside torch.compile with CUDA graphs, and in the certification engine.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, compose_config
from vrs.apps.certify import resolve_options
from vrs.errors import VRSError
from vrs.models import with_normalization
from vrs.kernels import gluon_stage
from vrs.kernels.dispatch import kernel_for, launch, triton_available
from vrs.kernels.fuse import FusedResidualStage, fold_batchnorm, fuse_residual_stages
from vrs.models.lenet import LeNet
from vrs.models.resnet import CifarResNet, WideResNet
from vrs.smoothing.smoothed import SmoothedClassifier

CUDA = torch.cuda.is_available() and triton_available()


def random_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
    return net.eval()


def resnet(depth: int = 20, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return random_batchnorm(CifarResNet(depth, 3, 10), seed)


def stages_of(net: nn.Module) -> list[FusedResidualStage]:
    return [m for m in net.modules() if isinstance(m, FusedResidualStage)]


def test_fold_batchnorm_is_conv_then_batchnorm():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=True), nn.BatchNorm2d(16)
    random_batchnorm(nn.Sequential(conv, bn))
    x = torch.randn(4, 8, 9, 9)
    weight, bias = fold_batchnorm(conv, bn)
    torch.testing.assert_close(nn.functional.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fuse_replaces_each_run_of_identity_blocks():
    net = with_normalization(resnet(20), [0.5] * 3, [0.25] * 3)
    fused = fuse_residual_stages(net)
    # ResNet-20: 3 blocks per stage; stages 2 and 3 start with a downsampling block, which stays as it is
    assert [s.weight.shape[:2] for s in stages_of(fused)] == [(3, 2), (2, 2), (2, 2)]
    assert [s.weight.shape[-1] for s in stages_of(fused)] == [16, 32, 64]
    layers = fused[1].layers
    assert [type(m).__name__ for m in layers] == ["FusedResidualStage", "BasicBlock", "FusedResidualStage",
                                                 "BasicBlock", "FusedResidualStage"]
    assert not stages_of(net), "the original network is left as it was"
    assert all(not m.training for m in fused.modules())


def test_outside_the_kernels_domain_the_fused_network_is_the_original():
    net = resnet(20)
    fused = fuse_residual_stages(net)
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(fused(x), net(x))  # CPU, float32: the original blocks run
    x.requires_grad_(True)
    grad_fused, = torch.autograd.grad(fused(x).sum(), x)  # input gradients: the original blocks as well
    grad_plain, = torch.autograd.grad(net(x).sum(), x)
    assert torch.equal(grad_fused, grad_plain)


def test_fused_stages_are_inference_only_and_check_their_blocks():
    from vrs.models.resnet import BasicBlock

    fused = fuse_residual_stages(resnet(20))
    assert not any(p.requires_grad for s in stages_of(fused) for p in s.parameters())  # a frozen snapshot
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    with pytest.raises(ValueError, match="power of two >= 16; got \\[24\\]"):
        FusedResidualStage([BasicBlock(24, 24, 1), BasicBlock(24, 24, 1)])
    with pytest.raises(ValueError, match="stride-1 BasicBlocks with identity shortcuts"):
        FusedResidualStage([BasicBlock(16, 32, 2)])


def test_other_networks_are_left_alone():
    for net in (LeNet(1, 10, 28), WideResNet(16, 2, 3, 10), CifarResNet(8, 3, 10)):  # ResNet-8: one block per stage
        fused = fuse_residual_stages(net)
        assert not stages_of(fused)
        assert [type(m) for m in fused.modules()] == [type(m) for m in net.modules()]


def test_engine_with_fused_blocks_counts_like_the_plain_engine_on_cpu():
    net = resnet(8 + 6)  # ResNet-14: 2 blocks per stage, so each stage has a fused run
    x = torch.rand(2, 3, 32, 32)
    counts = [SmoothedClassifier(net, 10, 0.5, fused_blocks=fused).sample_counts(x, 300, 128, seeds=[1, 2])
              for fused in (False, True)]
    assert torch.equal(counts[0], counts[1])


def test_certify_option_resolves_and_refuses_what_cannot_run():
    def options(*overrides):
        return resolve_options(compose_config("ckpt_path=x.ckpt", *overrides, config_name="certify",
                                              output_dir="/nonexistent/run").certify)  # resolved, never written

    assert options("certify.device=cpu").fused_blocks is False  # auto: off on the CPU
    assert options("certify.fused_blocks=false").fused_blocks is False
    if CUDA:
        assert options("certify.device=cuda").fused_blocks is True  # auto: bf16 on CUDA
        assert options("certify.device=cuda", "certify.precision=fp32").fused_blocks is False
        with pytest.raises(VRSError, match="precision 'fp32'"):
            options("certify.device=cuda", "certify.precision=fp32", "certify.fused_blocks=true")
    with pytest.raises(VRSError, match=r"certify.fused_blocks=true needs a CUDA device.*precision 'fp32'"):
        options("certify.device=cpu", "certify.fused_blocks=true")
    with pytest.raises(VRSError, match="certify.fused_blocks"):
        options("certify.fused_blocks=sometimes")


INTERPRETED = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from vrs.kernels.dispatch import launch
    from vrs.kernels.fuse import FusedResidualStage
    from vrs.models.resnet import BasicBlock
    torch.manual_seed(0)
    results = []
    # (channels, height, width, blocks, images): the three CIFAR stages, and shapes whose pixel count is not
    # a multiple of the tile (masked pixels), non-square, with more than one image per launch
    for c, h, w, blocks, n in [(16, 32, 32, 2, 2), (32, 16, 16, 2, 2), (64, 8, 8, 2, 3), (16, 7, 5, 3, 3),
                               (32, 28, 28, 1, 1)]:
        stage = FusedResidualStage([BasicBlock(c, c, 1) for _ in range(blocks)])
        for m in stage.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.25, 0.75); m.bias.data.uniform_(-0.1, 0.1)
        stage = FusedResidualStage(list(stage.blocks.eval()))  # fold the statistics just set
        x = torch.relu(torch.randn(n, c, h, w)).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for dtype in (torch.float32, torch.float16):
                xd = x.to(dtype)
                ref = stage.blocks(xd.float())
                out = launch(xd, stage.weight.to(dtype), stage.bias)
                assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                results.append([c, h, w, str(dtype), err])
    json.dump(results, sys.stdout)
""")


def test_results_directories_do_not_mix_fused_and_plain_rows(tmp_path):
    import json

    from vrs.apps.certify import fused_stage_count
    from vrs.apps.certify_store import META_NAME, RESULTS_FORMAT, ResultsDir

    assert fused_stage_count(resnet(20), True) == 3
    assert fused_stage_count(resnet(20), False) == 0
    assert fused_stage_count(LeNet(1, 10, 28), True) == 0  # nothing to fuse: runs as it is
    meta = {"mode": "certify", "n0": 10, "n": 100, "alpha": 0.001, "sigma": 0.25, "seed": 0}
    (tmp_path / META_NAME).write_text(json.dumps({**meta, "format": RESULTS_FORMAT}))  # written before the key
    ResultsDir(tmp_path, {**meta, "fused_stages": 0}).check_meta()  # absent meant no fused stages
    with pytest.raises(VRSError, match="fused_stages: existing 0, now 3"):
        ResultsDir(tmp_path, {**meta, "fused_stages": 3}).check_meta()


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_kernel_matches_the_blocks_in_triton_interpreter():
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)  # keep the caller's
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 10
    for c, h, w, dtype, err in results:
        # float32: only the summation order differs; float16: one rounding per stored activation
        assert err < (1e-5 if dtype == "torch.float32" else 5e-3), (c, h, w, dtype, err)


needs_gluon = pytest.mark.skipif(not gluon_stage.gluon_available(), reason="Triton with Gluon is not installed")


def test_gluon_channel_permutation_and_weight_layout():
    for c in (16, 32, 64, 128):
        assert sorted(gluon_stage.position(k, c) for k in range(c)) == list(range(c))
    # a thread's fragment channels 2t, 2t+1, 2t+8, 2t+9 (and +16, +32, ...) are adjacent
    assert [gluon_stage.position(k, 16) for k in (2, 3, 10, 11)] == [4, 5, 6, 7]
    assert [gluon_stage.position(k, 32) for k in (2, 3, 10, 11, 18, 19, 26, 27)] == list(range(8, 16))
    if not gluon_stage.gluon_available():
        return
    torch.manual_seed(0)
    w = torch.randn(2, 2, 3, 3, 32, 32)  # (blocks, 2, ky, kx, C_in, C_out)
    g = gluon_stage.gluon_weight(w)
    for k in range(32):
        assert torch.equal(g[..., :, gluon_stage.position(k, 32)], w[..., k, :])


def test_cpu_tensors_take_the_triton_kernel():
    assert kernel_for(torch.zeros(1, 16, 8, 8)) == "triton"
    assert kernel_for(torch.zeros(1, 48, 8, 8)) == "triton"


@needs_gluon
@pytest.mark.parametrize("arch,c,h,w", [(90, 16, 32, 32), (80, 16, 5, 7), (90, 32, 16, 16), (80, 64, 7, 7)])
def test_gluon_kernel_compiles_with_tensor_core_operands_in_registers(arch, c, h, w):
    """No GPU needed: Triton compiles to PTX for a named target. The design's point is checked in the PTX:
    tensor-core products, vectorised global loads, and no shared memory at all (no layout round trip)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    config = gluon_stage.launch_config(h, w, c)
    warps = config.pop("num_warps")
    constants = {"BLOCKS": 2, **config}
    signature = {"x_ptr": "*bf16", "out_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "scratch_ptr": "*bf16",
                 **{name: "constexpr" for name in constants}}
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(5)}  # what a launch with torch tensors sees
    source = GluonASTSource(gluon_stage._residual_stage_kernel, signature, constants, attrs=aligned)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    ptx = kernel.asm["ptx"]
    assert kernel.metadata.shared == 0
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
    assert not re.search(r"(ld|st)\.shared|ldmatrix", ptx)
    assert re.search(r"ld\.global(\.[a-z]+)*\.v[24]\.b32", ptx)  # wide operand loads


# ---- GPU -----------------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and Triton")


@gpu
@pytest.mark.parametrize("c,h,w", [(16, 32, 32), (32, 16, 16), (64, 8, 8), (16, 28, 28), (32, 7, 9)])
def test_gpu_kernel_matches_the_blocks_in_bf16(c, h, w):
    from vrs.models.resnet import BasicBlock

    torch.manual_seed(0)
    stage = FusedResidualStage([random_batchnorm(BasicBlock(c, c, 1), s) for s in range(4)]).cuda()
    x = torch.relu(torch.randn(300, c, h, w, device="cuda")).to(torch.bfloat16)
    with torch.inference_mode():
        ref = stage.blocks(x.float())
        out = stage(x.contiguous(memory_format=torch.channels_last))
        out_nchw = stage(x)  # a contiguous (NCHW) input is accepted too
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, out_nchw)
    rel = (out.float() - ref).abs().max() / ref.abs().max()
    assert rel < 0.03, rel  # bf16 activations between layers; fp32 accumulation


@gpu
@pytest.mark.parametrize("c,h,w", [(16, 32, 32), (16, 5, 7), (32, 16, 16), (64, 8, 8), (64, 7, 7)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gluon_and_triton_kernels_agree(c, h, w, dtype):
    from vrs.models.resnet import BasicBlock

    torch.manual_seed(1)
    stage = FusedResidualStage([random_batchnorm(BasicBlock(c, c, 1), s) for s in range(3)]).cuda()
    x = torch.relu(torch.randn(257, c, h, w, device="cuda")).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = stage.weight.to(dtype)
    with torch.inference_mode():
        ref = stage.blocks(x.float())
        by_triton = launch(x, weight, stage.bias, kernel="triton")
        by_gluon = launch(x, weight, stage.bias, kernel="gluon")
    scale = ref.abs().max()
    # the same products in the same order: equal up to a rare rounding flip of a stored activation
    assert (by_gluon.float() - by_triton.float()).abs().max() / scale < 0.01
    assert (by_gluon.float() - ref).abs().max() / scale < 0.03


@gpu
def test_gpu_fused_network_compiled_with_cuda_graphs():
    net = with_normalization(resnet(56), [0.5] * 3, [0.25] * 3).cuda().to(memory_format=torch.channels_last)
    fused = fuse_residual_stages(net)
    x = torch.rand(512, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(fused, mode="reduce-overhead", dynamic=False)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        plain = net(x).float()
        eager = fused(x).float()
        for _ in range(3):  # record, then replay
            torch.compiler.cudagraph_mark_step_begin()
            graphed = compiled(x).float()
    scale = plain.abs().max()
    assert (eager - plain).abs().max() / scale < 0.05
    assert (graphed - eager).abs().max() / scale < 0.02


@gpu
def test_gpu_engine_with_fused_blocks_agrees_with_the_plain_engine():
    net = copy.deepcopy(resnet(20)).cuda()
    x = torch.rand(4, 3, 32, 32)
    kw = dict(precision="bf16", channels_last=True)
    plain = SmoothedClassifier(net, 10, 0.25, **kw).sample_counts(x, 2000, 512, seeds=[0, 1, 2, 3])
    fused = SmoothedClassifier(net, 10, 0.25, fused_blocks=True, **kw).sample_counts(x, 2000, 512,
                                                                                      seeds=[0, 1, 2, 3])
    # the same noise; the two bf16 networks may disagree only where the top two logits are within rounding
    assert (plain - fused).abs().sum() <= 0.02 * plain.sum()
