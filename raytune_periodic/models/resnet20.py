"""ResNet20 for small images (He et al. 2016 §4.2; the surrogate paper's ResNet20).

Stem ``conv3×3(C→16) → BN → ReLU``, then three stages of three ``BasicBlock``s with 16, 32 and 64
filters (stride 2 at the start of stages 2 and 3), global average pooling and ``fc``. Shortcuts
that change shape are 1×1 convolutions + BN (option B; the original CIFAR ResNet used zero-padding,
option A — a parameter-free detail that changes nothing the regularizers act on).

Each block has ``bn1``, ``conv2`` and its own ``relu1``/``relu2`` modules, so the ``block_bn``
placement hits one BN+ReLU unit per block and ``before_relu`` hits each ReLU call site once.

The network is ``features`` (stem, the stages, global average pooling, flatten: image → the 64-dim
z) then ``head`` (a Sequential holding the one FC layer ``fc``), the split the surrogate paper's
methods need: its ResNet20 has one FC layer, whose input z and weight V carry the 4
hyperparameters ``(p_z, p_V, λ_z, λ_V)`` (Table 2), and its surrogate replaces ``features`` by one
convolution to the last 64×7×7 map (``(64, 6, 4, 1)`` on 28×28 faces).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from raytune_periodic.validation import integer


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """3 stages × ``blocks`` BasicBlocks (16-32-64 filters × ``width``) in ``features``; the
    classifier ``head.fc``."""

    def __init__(self, in_channels: int, num_classes: int, blocks: int = 3, width: int = 1) -> None:
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                bn1=nn.BatchNorm2d(widths[0]),
                relu=nn.ReLU(),
                layers=nn.Sequential(*layers),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
            )
        )
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(c_in, num_classes)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_resnet20(
    input_shape: tuple[int, ...], num_classes: int, blocks: int = 3, width: int = 1
) -> ResNet20:
    """ResNet20 (``blocks=3``: 6·3+2 = 20 layers) for ``(C, H, W)`` inputs, H, W ≥ 4."""
    blocks = integer(blocks, "model.options.blocks", 1)
    width = integer(width, "model.options.width", 1)
    return ResNet20(input_shape[0], num_classes, blocks, width)
