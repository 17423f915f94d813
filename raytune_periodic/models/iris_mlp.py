"""The iris survey's MLP (§C–D of its code): ``Dense(64) → ReLU → Dense(32) → ReLU → Dense(K)``.

``batchnorm: true`` adds ``BatchNormalization`` *after* each hidden ReLU, as the paper's Keras
model does (this package's generic ``mlp`` puts BN before the ReLU). Dropout as in the paper's
dropout model (after each hidden ReLU) is the ``before_relu`` placement: dropout commutes with
ReLU (``relu(m·x/(1−p)) = m·relu(x)/(1−p)``), so it is the same network. L1 is the ``l1``
model-level penalty with ``include_classifier: false`` (the paper's output layer has no
regularizer).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer, sequence


class IrisMLP(nn.Module):
    """``features`` (Flatten, fc1, relu1, [bn1], fc2, relu2, [bn2]) then ``fc``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 32),
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            if batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm1d(size)
            width = size
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_iris_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (64, 32),
    batchnorm: bool = False,
) -> IrisMLP:
    """The paper's 64-32 MLP over ``prod(input_shape)`` features."""
    field = "model.options.hidden"
    widths = [integer(h, field, 1) for h in sequence(hidden, field, "a list of widths")]
    if not widths:
        raise ConfigError(field, "needs at least one hidden width")
    batchnorm = boolean(batchnorm, "model.options.batchnorm")
    return IrisMLP(math.prod(input_shape), num_classes, tuple(widths), batchnorm)
