"""Every network class prunekit defines, in one place: reference networks from the pruning literature,
the architecture of the pretrained MNIST CNN, and the small models of the benchmarks and contract tests.

Classes, with where they come from and what they are built by:

* :class:`DigitCNN`: the architecture of ccexam's pretrained MNIST CNN (``prunekit:mnist-cnn``).
* :class:`LeNet300100`, :class:`LeNet5`: LeCun et al. 1998, as used by Han et al. 2015
  (``prunekit:lenet-300-100``, ``prunekit:lenet5``).
* :class:`SmallResNet` and its :class:`BasicBlock`: He et al. 2016, the CIFAR-style ResNet
  (``prunekit:resnet-small``).
* :class:`MLP`, :class:`SmallCNN`: the benchmark grid's ``bench:mlp``, ``bench:mlp-wide`` and ``bench:cnn``
  (:mod:`prunekit.bench.execute`).
* :class:`TinyCNN`: the convolutional model of the composability contract (:mod:`prunekit.bench.composability`).

Only torch is imported here, so any module can use these classes without import cycles.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MLP", "BasicBlock", "DigitCNN", "LeNet5", "LeNet300100", "SmallCNN", "SmallResNet", "TinyCNN"]


class DigitCNN(nn.Module):
    """Small CNN for grayscale digits: two conv-ReLU-maxpool stages, then a 128-unit MLP head.

    Input ``[N, in_channels, input_size, input_size]`` (default ``[N, 1, 28, 28]``; ``input_size`` a
    multiple of 4), output logits ``[N, num_classes]``. The architecture of ccexam's pretrained MNIST
    classifier (PyPI ccexam; state-dict keys ``features.0``, ``features.3``, ``classifier.0``,
    ``classifier.2``), defined here so that prunekit never runs third-party model code and can rebuild the
    model from its name and arguments. ``example_input_shape``: the shape of one input batch of 1.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 28, in_channels: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels
        self.example_input_shape: tuple[int, ...] = (1, in_channels, input_size, input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of images ``x`` ``[N, in_channels, input_size, input_size]``."""
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 with ReLU: LeNet-300-100 (LeCun et al. 1998; Han et al. 2015).

    Input ``[N, ...]`` with ``in_features`` values per sample (default ``[N, 1, 28, 28]``, flattened),
    output logits ``[N, num_classes]``. ``example_input_shape``: the shape of one input batch of 1 (an MNIST
    image for the default ``in_features``, else a flat vector).
    """

    def __init__(self, num_classes: int = 10, in_features: int = 28 * 28):
        super().__init__()
        self.example_input_shape: tuple[int, ...] = (1, 1, 28, 28) if in_features == 28 * 28 else (1, in_features)
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of ``x`` ``[N, ...]`` (``in_features`` values per sample, flattened)."""
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5-style CNN (LeCun et al. 1998): conv(6) - pool - conv(16) - pool - fc 120 - fc 84 - fc 10, ReLU.

    Input ``[N, in_channels, 28, 28]`` (the head expects 16x5x5 features), output logits ``[N, num_classes]``.
    ``example_input_shape``: the shape of one input batch of 1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.example_input_shape: tuple[int, ...] = (1, in_channels, 28, 28)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of images ``x`` ``[N, in_channels, 28, 28]``."""
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut: ResNet's basic block (He et al. 2016).

    Input ``[N, cin, H, W]``, output ``[N, cout, ceil(H / stride), ceil(W / stride)]``.
    """

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
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``: ``[N, cin, H, W]`` -> ``[N, cout, H', W']``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016) for 28x28 inputs: a stem and three stages of ``blocks`` basic blocks
    with ``width``, 2x and 4x channels (ResNet-8 with the defaults: 1 block per stage, width 16).

    Input ``[N, in_channels, H, W]`` (28x28 for MNIST; any size works, the head pools globally), output
    logits ``[N, num_classes]``. ``example_input_shape``: the shape of one input batch of 1 (28x28).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks: int = 1):
        super().__init__()
        self.example_input_shape: tuple[int, ...] = (1, in_channels, 28, 28)
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
        """Logits ``[N, num_classes]`` of images ``x`` ``[N, in_channels, H, W]`` (globally pooled)."""
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """Flatten, then Linear-ReLU for each width in ``hidden``, then a linear head: the benchmark grid's MLP.

    Input ``[N, ...]`` with ``in_features`` values per sample, output logits ``[N, classes]``. Built by
    :mod:`prunekit.bench.execute` for ``bench:mlp`` (hidden 256, 128) and ``bench:mlp-wide`` (1024, 1024).
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], classes: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` of ``x`` ``[N, ...]`` (``in_features`` values per sample, flattened)."""
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers (``width``, 2x, 4x channels; the last two with stride 2), global average
    pooling and a linear head: the benchmark grid's ``bench:cnn`` (:mod:`prunekit.bench.execute`).

    Input ``[N, in_channels, H, W]``, output logits ``[N, classes]``.
    """

    def __init__(self, in_channels: int, classes: int, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2)
        )
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` of images ``x`` ``[N, in_channels, H, W]`` (globally pooled)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


class _Block(nn.Module):
    """A residual conv block ``x + bn2(conv2(relu(bn1(conv1(x)))))``: removable as a whole layer.

    Input and output ``[N, c, H, W]``. Part of :class:`TinyCNN`; the composability contract recognises it
    by its class name ``_Block`` when it counts removable blocks.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TinyCNN(nn.Module):
    """conv 4->16 + BN + ReLU, two residual blocks, conv 16->32, pooled, Linear 32->32, classifier 32->3.

    Input ``[N, 4, H, W]``, output logits ``[N, 3]``. The convolutional model of the composability contract
    (:mod:`prunekit.bench.composability`), with channels to cut and two residual blocks to remove.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(_Block(16), _Block(16))
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, 3]`` of ``x`` ``[N, 4, H, W]``."""
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc(x)))
