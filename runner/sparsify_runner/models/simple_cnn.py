"""Small CNNs registered next to torchvision's architectures (tests, tiny edge models)."""

from __future__ import annotations

from torch import nn


class SimpleCNN(nn.Module):
    """conv-bn-relu blocks (stride 2 after the first) + global pooling + linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(depth):
            out = width * (2 ** min(i, 2))
            layers += [
                nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


EXTRA_ARCHS = {
    "simple_cnn": lambda num_classes=10: SimpleCNN(num_classes),
    "simple_cnn_wide": lambda num_classes=10: SimpleCNN(num_classes, width=32, depth=4),
}
