"""CIFAR ResNets (He et al. 2016, depth 6n+2: 20, 56, 110 - the randomized-smoothing standard), ImageNet
ResNets (He et al. 2016: 18, 34, 50, 101, 152; ResNet-50 is the ImageNet standard of randomized smoothing) and
Wide ResNets (Zagoruyko & Komodakis 2016, depth 6n+4 with widening factor k).

All work for any input size (global average pooling) and channel count. The CIFAR and ImageNet ResNets
record `stage_blocks` (blocks per stage): `layers` is one flat Sequential, and published checkpoints
(layer<k>.<i> per stage) are mapped onto it with it (vrs.importers).
"""

from __future__ import annotations

from torch import nn

from vrs.errors import check


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with 16/32/64 channels."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, input_size: int | None = None):
        super().__init__()
        check((depth - 2) % 6 == 0 and depth >= 8, "model.depth", depth, "6n+2 with n >= 1 (20, 56, 110, ...)")
        n = (depth - 2) // 6
        self.stage_blocks = (n, n, n)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions, 4x expansion: the stride sits on the 3x3 convolution, as in
    torchvision's ResNet-50 (the network of every randomized-smoothing ImageNet result)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


# depth -> (block, blocks per stage) of He et al. (2016), Table 1
IMAGENET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                   101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50/101/152 for 224x224 images: a 7x7 stride-2 stem with max pooling, four stages of
    64/128/256/512 (x4 for bottlenecks) channels."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, input_size: int | None = None):
        super().__init__()
        check(depth in IMAGENET_DEPTHS, "model.depth", depth, "one of " + ", ".join(map(str, IMAGENET_DEPTHS)))
        block, self.stage_blocks = IMAGENET_DEPTHS[depth]
        expansion = getattr(block, "expansion", 1)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, in_planes = [], 64
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), self.stage_blocks):
            for i in range(n):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * expansion
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


class WideBlock(nn.Module):
    """Pre-activation wide block with dropout between the convolutions."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(self.dropout(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int,
                 input_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        check((depth - 4) % 6 == 0 and depth >= 10, "model.depth", depth, "6n+4 with n >= 1 (16, 28, 40, ...)")
        check(widen_factor >= 1, "model.widen_factor", widen_factor, "an integer >= 1")
        n, widths = (depth - 4) // 6, [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(in_planes, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))
