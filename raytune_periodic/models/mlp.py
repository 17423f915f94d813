"""A plain multilayer perceptron that flattens any input (tabular or image)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from raytune_periodic.errors import ConfigError


class MLP(nn.Module):
    """``Flatten → [Linear → (BatchNorm1d) → ReLU] × len(hidden) → fc``.

    The hidden stack is ``self.features``; the classifier is ``self.fc``, the last child. Every
    ReLU is its own module, so regularizers can be placed after any one of them.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 512),
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batchnorm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (512, 512),
    batchnorm: bool = False,
) -> MLP:
    """An MLP over ``prod(input_shape)`` inputs; ``hidden`` lists the hidden widths."""
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        raise ConfigError("model.options.hidden", f"expected a list of widths, got {hidden!r}")
    for size in hidden:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(
                "model.options.hidden", f"widths must be positive integers, got {list(hidden)!r}"
            )
    if not isinstance(batchnorm, bool):
        raise ConfigError("model.options.batchnorm", f"expected true/false, got {batchnorm!r}")
    return MLP(math.prod(input_shape), num_classes, tuple(hidden), batchnorm)
