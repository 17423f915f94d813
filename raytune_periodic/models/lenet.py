"""LeNet-5-style convolutional net for small images (8×8 digits up to 48×48 faces)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from raytune_periodic.validation import boolean


def _conv_block(c_in: int, c_out: int, batchnorm: bool) -> list[nn.Module]:
    # padding=2 keeps H, W through the 5×5 conv, so an 8×8 input survives both poolings.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=5, padding=2, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return layers


class LeNet(nn.Module):
    """``conv(c→20, 5) → ReLU → pool → conv(20→50, 5) → ReLU → pool → flatten`` then a 2-FC head.

    ``self.features`` (conv part incl. Flatten) maps an image to the flat vector z;
    ``self.head`` is ``fc1 (→500) → relu → fc2 (→num_classes)``, named ``head.fc1``,
    ``head.relu``, ``head.fc2``; ``head.fc2`` is the classifier.
    """

    def __init__(
        self, in_channels: int, height: int, width: int, num_classes: int, batchnorm: bool = False
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 20, batchnorm),
            *_conv_block(20, 50, batchnorm),
            nn.Flatten(),
        )
        flat = 50 * (height // 4) * (width // 4)
        self.head = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(flat, 500),
                relu=nn.ReLU(),
                fc2=nn.Linear(500, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_lenet(input_shape: tuple[int, ...], num_classes: int, batchnorm: bool = False) -> LeNet:
    """LeNet for ``(C, H, W)`` inputs with H, W ≥ 8; ``batchnorm`` adds BN after each conv."""
    batchnorm = boolean(batchnorm, "model.options.batchnorm")
    channels, height, width = input_shape
    return LeNet(channels, height, width, num_classes, batchnorm)
