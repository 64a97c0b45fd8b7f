"""Small reference networks for 28x28 grey images (MNIST, Fashion-MNIST), as used across the pruning
literature: LeNet-300-100 (LeCun et al. 1998; Han et al. 2015), a LeNet-5-style CNN and a small ResNet
(He et al. 2016, the CIFAR-style ResNet with three stages), registered as ``prunekit:NAME`` model specs."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models import MODELS


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10."""

    def __init__(self, num_classes: int = 10, in_features: int = 28 * 28):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5-style CNN: conv(6) - pool - conv(16) - pool - fc 120 - fc 84 - fc 10, ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet for 28x28 inputs: a stem and three stages of ``blocks`` basic blocks with
    ``width``, 2x and 4x channels (ResNet-8 with the defaults: 1 block per stage, width 16)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width * mult, 2 if (b == 0 and i > 0) else 1))
                cin = width * mult
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


MODELS.add("lenet-300-100", lambda pretrained: LeNet300100(), "LeNet-300-100 MLP for 28x28 inputs (random init)")
MODELS.add("lenet5", lambda pretrained: LeNet5(), "LeNet-5-style CNN for 28x28 inputs (random init)")
MODELS.add("resnet-small", lambda pretrained: SmallResNet(), "ResNet-8 (3 stages, width 16) for 28x28 inputs (random init)")
