"""torchvision ResNet-18/34 (random init) with the stem adapted to the input size and channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from raytune_periodic.validation import boolean

if TYPE_CHECKING:  # imported where a ResNet is built: torchvision adds ~2 s to a trial's start
    import torchvision

SMALL_INPUT = 64  # below this H/W the ImageNet stem (7×7 stride 2 + maxpool) discards too much


def _resnet(
    arch: Callable[..., torchvision.models.ResNet],
    input_shape: tuple[int, ...],
    num_classes: int,
    small_stem: bool | None,
) -> torchvision.models.ResNet:
    if small_stem is not None:
        small_stem = boolean(small_stem, "model.options.small_stem")
    channels, height, width = input_shape
    model = arch(weights=None, num_classes=num_classes)
    small = min(height, width) < SMALL_INPUT if small_stem is None else small_stem
    if small:  # CIFAR-style stem: 3×3 stride 1, no maxpool
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:  # ImageNet stem, with the dataset's channel count
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def build_resnet18(
    input_shape: tuple[int, ...], num_classes: int, small_stem: bool | None = None
) -> torchvision.models.ResNet:
    """ResNet-18; ``small_stem`` None picks the 3×3 stem when H or W < 64. Classifier: ``fc``."""
    import torchvision

    return _resnet(torchvision.models.resnet18, input_shape, num_classes, small_stem)


def build_resnet34(
    input_shape: tuple[int, ...], num_classes: int, small_stem: bool | None = None
) -> torchvision.models.ResNet:
    """ResNet-34; ``small_stem`` None picks the 3×3 stem when H or W < 64. Classifier: ``fc``."""
    import torchvision

    return _resnet(torchvision.models.resnet34, input_shape, num_classes, small_stem)
