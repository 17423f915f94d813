"""The Tiny-ImageNet paper's custom CNN (§2.4), AlexNet-shaped.

``conv11×11(64, stride s) → ReLU → LRN → pool → conv5×5(192) → ReLU → LRN → pool →
conv3×3(384) → ReLU → conv3×3(384) → ReLU → conv3×3(256) → ReLU → pool → flatten →
fc1(1024) → ReLU → fc2(1024) → ReLU → fc(K)`` (softmax is in the loss).

Readings where §2.4 is silent: LRN after conv1 and conv2 (as in AlexNet, "after specific
convolutional layers"); the paper's TF parameters (depth radius 5, bias 2, α 1e-4, β 0.75) become
``nn.LocalResponseNorm(size=11, alpha=11e-4, beta=0.75, k=2)`` (TF sums over 2r+1 channels and
does not divide α by the window; torch does). Pools are 3×3 stride 2 with padding 1 (so small
inputs survive); conv1's stride is 4 for inputs ≥ 64 px (64→16→8→8→4→2: 256·2·2 features) and 1
below (``stride`` option overrides); the other convs keep H, W ("same" padding).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import integer


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=11, alpha=11e-4, beta=0.75, k=2.0)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2, padding=1)


class TinyImageNetCNN(nn.Module):
    """``features`` (convs) then ``head`` (``fc1``, ``relu1``, ``fc2``, ``relu2``, ``fc``)."""

    def __init__(self, in_channels: int, side: int, num_classes: int, stride: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride, 5),
            nn.ReLU(),
            _lrn(),
            _pool(),
            nn.Conv2d(64, 192, 5, 1, 2),
            nn.ReLU(),
            _lrn(),
            _pool(),
            nn.Conv2d(192, 384, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(384, 384, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, 1, 1),
            nn.ReLU(),
            _pool(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, side, side)).shape[1]
        self.head = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(flat, 1024),
                relu1=nn.ReLU(),
                fc2=nn.Linear(1024, 1024),
                relu2=nn.ReLU(),
                fc=nn.Linear(1024, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_tiny_cnn(
    input_shape: tuple[int, ...], num_classes: int, stride: int | None = None
) -> TinyImageNetCNN:
    """The custom CNN for square-ish ``(C, H, W)`` inputs (built for H = W = 64)."""
    channels, height, width = input_shape
    if height != width:
        raise ConfigError("model.name", f"tiny_cnn needs square images, got {input_shape}")
    if stride is None:
        stride = 4 if height >= 64 else 1
    stride = integer(stride, "model.options.stride", 1, 4)
    return TinyImageNetCNN(channels, height, num_classes, stride)
