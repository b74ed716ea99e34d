"""A multilayer perceptron on the flattened image: the cheapest base classifier for CPU experiments.

On 2 CPU cores it classifies ~7x more noisy 28x28 samples a second than the width-8 LeNet (docs/performance.md),
which is what randomized smoothing's Monte Carlo pays for. On Fashion-MNIST, at the same training budget, it was
about as accurate under noise as that LeNet (docs/results.md, issue 18); a wider CNN trained longer beats both.
"""

from __future__ import annotations

from torch import nn

from vrs.errors import check


class MLP(nn.Module):
    """Flatten -> `depth` x (Linear(hidden) -> ReLU) -> Dropout -> Linear(num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, hidden: int = 256, depth: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        check(isinstance(depth, int) and depth >= 1, "model.depth", depth, "an integer >= 1")
        check(isinstance(hidden, int) and hidden >= 1, "model.hidden", hidden, "an integer >= 1")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
