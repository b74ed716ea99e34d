"""Fold each eval-mode BatchNorm into the convolution before it, for inference (certify.fold_batchnorm).

In eval mode a BatchNorm is an affine map per channel, y = gamma (z - mu) / sqrt(var + eps) + beta, so after a
convolution z = W x + b it can be merged into that convolution's weights and bias:
    W' = W * gamma / sqrt(var + eps),    b' = (b - mu) * gamma / sqrt(var + eps) + beta.
The network computes the same function up to floating-point rounding, with one pass over memory less per layer.
That matters where memory bandwidth, not arithmetic, bounds the forward pass: small networks on a CPU run about
1.5-2x faster (docs/performance.md, "Certification on a CPU"). torch.compile's freezing does this already, so the
engine folds only networks it does not compile. The certificate holds for the network as computed, as for
`precision`.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

log = logging.getLogger(__name__)


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy of `network` (in eval mode) with every Conv -> BatchNorm pair merged into one convolution (torch.fx's
    `fuse`); the network itself if it has no BatchNorm, or (with a log line) if torch.fx cannot trace it."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        return network
    from torch.fx.experimental.optimization import fuse  # deferred: torch.fx is only needed here
    from torch.fx.proxy import TraceError

    try:
        return fuse(copy.deepcopy(network).eval(), inplace=True)
    # what torch.fx raises on a network it cannot trace symbolically: control flow on tensor values (TraceError),
    # Python operations on a proxy (TypeError), modules without a traceable forward (NotImplementedError, RuntimeError)
    except (TraceError, TypeError, NotImplementedError, RuntimeError) as exc:
        log.info("fold_batchnorm: %s cannot be traced by torch.fx (%s); it runs unfolded",
                 type(network).__name__, exc)
        return network
