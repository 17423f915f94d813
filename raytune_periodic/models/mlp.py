"""A plain multilayer perceptron that flattens any input (tabular or image)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from raytune_periodic.validation import boolean, integer, sequence


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
    field = "model.options.hidden"
    widths = [integer(h, field, 1) for h in sequence(hidden, field, "a list of widths")]
    batchnorm = boolean(batchnorm, "model.options.batchnorm")
    return MLP(math.prod(input_shape), num_classes, tuple(widths), batchnorm)
