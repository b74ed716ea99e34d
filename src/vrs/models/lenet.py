"""A LeNet-like CNN for small grey-scale images (28x28 Fashion-MNIST / MNIST, 8x8 digits)."""

from __future__ import annotations

from torch import nn


class LeNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: int, width: int = 32, hidden: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if input_size >= 16 else nn.Identity(),
        )
        side = input_size // 4 if input_size >= 16 else input_size // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.3), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
