"""LeNet-5-style convolutional net for small images (8×8 digits up to 48×48 faces).

``padding`` 2 (the default) keeps H, W through each 5×5 convolution, so 8×8 digits survive both
poolings (28×28 → a 50×7×7 map). ``padding: 0`` is Caffe's LeNet, the surrogate paper's: valid
convolutions, 28→24→12→8→4, a 50×4×4 map and a z of 800 units, the map Table 2's surrogate
convolution ``(50, 7, 7, 0)`` reaches in one step (needs H, W ≥ 16). Caffe's example LeNet has no
ReLU after its convolutions; this one keeps them (its ``head`` is Caffe's ``ip1 → relu1 → ip2``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer


def _conv_block(c_in: int, c_out: int, batchnorm: bool, padding: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel_size=5, padding=padding, bias=not batchnorm)
    layers: list[nn.Module] = [conv]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return layers


def _map_side(side: int, padding: int) -> int:
    """H (or W) of the last map: two (5×5 conv with ``padding`` → 2×2 max-pool) steps."""
    for _ in range(2):
        side = (side + 2 * padding - 4) // 2
    return side


class LeNet(nn.Module):
    """``conv(c→20, 5) → ReLU → pool → conv(20→50, 5) → ReLU → pool → flatten`` then a 2-FC head.

    ``self.features`` (conv part incl. Flatten) maps an image to the flat vector z;
    ``self.head`` is ``fc1 (→500) → relu → fc2 (→num_classes)``, named ``head.fc1``,
    ``head.relu``, ``head.fc2``; ``head.fc2`` is the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int,
        batchnorm: bool = False,
        padding: int = 2,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 20, batchnorm, padding),
            *_conv_block(20, 50, batchnorm, padding),
            nn.Flatten(),
        )
        flat = 50 * _map_side(height, padding) * _map_side(width, padding)
        self.head = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(flat, 500),
                relu=nn.ReLU(),
                fc2=nn.Linear(500, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_lenet(
    input_shape: tuple[int, ...], num_classes: int, batchnorm: bool = False, padding: int = 2
) -> LeNet:
    """LeNet for ``(C, H, W)`` inputs; ``batchnorm`` adds BN after each conv; ``padding`` 0 is
    Caffe's valid LeNet (H, W ≥ 16)."""
    batchnorm = boolean(batchnorm, "model.options.batchnorm")
    padding = integer(padding, "model.options.padding", 0, 2)
    channels, height, width = input_shape
    if min(_map_side(height, padding), _map_side(width, padding)) < 1:
        raise ConfigError(
            "model.options.padding",
            f"padding {padding} leaves no map for a {height}×{width} input (0 needs H, W >= 16)",
        )
    return LeNet(channels, height, width, num_classes, batchnorm, padding)
