"""Periodic Gaussian noise injection: additive N(0, std²) noise on activations in train mode."""

from __future__ import annotations

import math

import torch

from raytune_periodic.regularizers._base import PeriodicRegularizer


class GaussianNoise(PeriodicRegularizer):
    """Adds zero-mean Gaussian noise with standard deviation ``value`` while training."""

    kind = "gaussian_noise"
    low = 0.0
    high = math.inf
    value_name = "std"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.value == 0.0:
            return x
        return x + torch.randn_like(x) * self.value
