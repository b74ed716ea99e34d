"""certify.fold_batchnorm: each eval-mode BatchNorm merged into the convolution before it (vrs.smoothing.
batchnorm_folding) computes the same function up to float32 rounding, and the engine's counts stay those of the
unfolded network on inputs that are not near a tie."""

from __future__ import annotations

import torch
from conftest import compose_config
from torch import nn

from vrs.apps.certify import resolve_options
from vrs.models.lenet import LeNet
from vrs.models.resnet import CifarResNet
from vrs.smoothing import SmoothedClassifier
from vrs.smoothing.batchnorm_folding import fold_batchnorm
from vrs.smoothing.smoothed import image_seed


def with_random_statistics(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding has something to fold."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=gen)
            m.running_var.uniform_(0.5, 2, generator=gen)
            m.weight.data.uniform_(0.5, 2, generator=gen)
            m.bias.data.uniform_(-1, 1, generator=gen)
    return net.eval()


def count_batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_folded_networks_compute_the_same_function_without_batchnorm():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    for net in (LeNet(in_channels=1, num_classes=10, width=8, hidden=32, input_size=28),
                CifarResNet(depth=20, in_channels=1, num_classes=10, input_size=28)):
        net = with_random_statistics(net)
        folded = fold_batchnorm(net)
        assert count_batchnorms(net) > 0 and count_batchnorms(folded) == 0
        with torch.no_grad():
            ref, out = net(x), folded(x)
        # float32: the folded weights round differently; 1e-4 of the logits' scale
        assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
        assert count_batchnorms(net) > 0  # the network itself is left as it was (a copy is folded)


class DataDependentBranch(nn.Module):
    """Control flow on the input's values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y.flatten(1) if y.sum() > 0 else -y.flatten(1)


def test_networks_that_cannot_be_traced_or_have_no_batchnorm_run_as_they_are():
    untraceable = DataDependentBranch().eval()
    assert fold_batchnorm(untraceable) is untraceable
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert fold_batchnorm(plain) is plain


def test_the_engine_certifies_the_same_with_and_without_folding():
    torch.manual_seed(0)
    net = with_random_statistics(LeNet(in_channels=1, num_classes=10, width=8, hidden=32, input_size=28))
    x = torch.rand(3, 1, 28, 28)
    seeds = [image_seed(0, i) for i in range(3)]
    runs = [SmoothedClassifier(net, 10, 0.25, fold_batchnorm=fold).certify(x, 50, 500, 0.001, 256, seeds=seeds)
            for fold in (False, True)]
    # same noise (seeded per image); a count may differ only where a sample's logits are within rounding of a tie
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.allclose(runs[0][1], runs[1][1], atol=0.02)


def test_certify_option_folds_where_nothing_else_does():
    def options(*overrides):
        return resolve_options(compose_config("ckpt_path=x.ckpt", "certify.device=cpu", *overrides,
                                              config_name="certify", output_dir="/nonexistent/run").certify)

    auto = options()
    assert auto.fold_batchnorm is True and auto.channels_last is True  # auto on a CPU: not compiled, not fused
    assert options("certify.compile=true").fold_batchnorm is False  # compile's freezing folds already
    assert options("certify.fold_batchnorm=false").fold_batchnorm is False
