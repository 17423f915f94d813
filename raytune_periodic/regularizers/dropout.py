"""Periodic dropout: ``F.dropout`` with a drop rate that changes between periods."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from raytune_periodic.regularizers._base import PeriodicRegularizer


class PeriodicDropout(PeriodicRegularizer):
    """Dropout whose rate ``value`` (= p) is set in place each period; identity in eval mode."""

    kind = "dropout"
    low = 0.0
    high = 1.0
    value_name = "p"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.value == 0.0:
            return x
        return F.dropout(x, self.value, True)
