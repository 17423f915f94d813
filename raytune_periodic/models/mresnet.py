"""M-ResNet, the surrogate paper's "original" network (Fig. 3), as read from its caption.

Fig. 3 is an image; its caption gives the parts: *CoPr* = convolution + PReLU, *Pool* = max-pool,
*ResBl* = residual block ``out = PoolOutput + CoPr(CoPr(PoolOutput))``, each replicated
*#Replications* times with *#Filt* maps, then two FC layers (z → x → #class). This module builds
``[CoPr(3×3, filters[i]) → MaxPool(2) → ResBl × reps[i]]`` per stage (the first CoPr with stride
``stem_stride``), an adaptive average pool to ``head_side``², then ``fc1`` (512, PReLU) and
``fc``. The figure's numbers are not in the text, so the defaults are chosen to match the
complexity §3 states for it at 227×227: filters 32-64-128-256 with replications 1-2-4-1 (the
face-recognition ResNet pattern of [18]) and a stride-2 first CoPr give ≈ 7.2·10⁸ multiply-adds in
the convolutions (paper: T_conv ≈ 7.8·10⁸ "FLOPs", counted as multiply-adds), and 256·6·6 → 512 →
K gives ≈ 4.7·10⁶ for the two FC layers (paper: ≈ 5·10⁶). Every number is an option.

``batchnorm: true`` inserts BN between each conv and its PReLU (giving ``after_bn``/``block_bn``
targets: each ResBl then has ``bn1`` and ``conv2``). Regularizers can always use ``head`` and
``before_linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer, sequence


class CoPr(nn.Sequential):
    """``conv3×3 → (BN) → PReLU``."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool, stride: int = 1) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.PReLU(c_out))
        super().__init__(*layers)


class ResBl(nn.Module):
    """``x + CoPr(CoPr(x))``; with BN its first unit exposes ``bn1`` and the second ``conv2``."""

    def __init__(self, channels: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not batchnorm)
        self.bn1: nn.Module = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.act1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not batchnorm)
        self.bn2: nn.Module = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.act2 = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return x + self.act2(self.bn2(self.conv2(out)))


class MResNet(nn.Module):
    """Stages of CoPr → Pool → ResBl×r; then ``fc1`` (+PReLU) and the classifier ``fc``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: Sequence[int],
        reps: Sequence[int],
        hidden: int,
        head_side: int,
        batchnorm: bool,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, (c_out, r) in enumerate(zip(filters, reps, strict=True)):
            stride = stem_stride if i == 0 else 1
            stages += [CoPr(c_in, c_out, batchnorm, stride), nn.MaxPool2d(2, ceil_mode=True)]
            stages += [ResBl(c_out, batchnorm) for _ in range(r)]
            c_in = c_out
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(head_side), nn.Flatten())
        self.fc1 = nn.Linear(c_in * head_side * head_side, hidden)
        self.act = nn.PReLU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(self.features(x))))


def _ints(key: str, val: object) -> list[int]:
    field = f"model.options.{key}"
    ints = [integer(v, field, 0) for v in sequence(val, field, "a list of integers")]
    if not ints:
        raise ConfigError(field, "expected a non-empty list of integers, got []")
    return ints


def build_mresnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128, 256),
    reps: Sequence[int] = (1, 2, 4, 1),
    hidden: int = 512,
    head_side: int = 6,
    batchnorm: bool = False,
    stem_stride: int | None = None,
) -> MResNet:
    """M-ResNet for ``(C, H, W)`` inputs (the paper: 227×227).

    ``stem_stride`` None: 2 for inputs ≥ 112 px (the paper's 227×227 faces), 1 below.
    """
    f, r = _ints("filters", filters), _ints("reps", reps)
    if len(f) != len(r) or 0 in f:
        raise ConfigError("model.options.reps", "needs one replication count per filter width > 0")
    if stem_stride is None:
        stem_stride = 2 if min(input_shape[1:]) >= 112 else 1
    hidden = integer(hidden, "model.options.hidden", 1)
    head_side = integer(head_side, "model.options.head_side", 1)
    stem_stride = integer(stem_stride, "model.options.stem_stride", 1)
    batchnorm = boolean(batchnorm, "model.options.batchnorm")
    return MResNet(input_shape[0], num_classes, f, r, hidden, head_side, batchnorm, stem_stride)
