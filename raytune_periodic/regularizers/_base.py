"""Base class of periodic regularizers: a module whose strength is a plain attribute.

The engine changes ``value`` in place at every period boundary (``set_value``); the model and the
optimizer are never rebuilt. With a value that never changes, the same module is the vanilla
baseline (BL/D/GNI).
"""

from __future__ import annotations

import math
from typing import ClassVar

from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import is_number, number


class PeriodicRegularizer(nn.Module):
    """A regularizer with one scalar strength ``value`` in ``[low, high]``.

    Subclasses define ``kind``, ``low``/``high`` and ``forward``; they must read ``self.value`` at
    call time (never cache derived tensors), so an in-place change takes effect on the next pass.
    """

    kind: ClassVar[str] = ""
    low: ClassVar[float] = 0.0
    high: ClassVar[float] = math.inf
    value_name: ClassVar[str] = "value"

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = self.check(value, f"{self.kind}.{self.value_name}")

    @classmethod
    def check(cls, value: float, field: str) -> float:
        """Validate one value for this kind; one-line ConfigError naming ``field`` if bad."""
        if math.isinf(cls.high) and is_number(value) and float(value) == math.inf:
            v = math.inf  # an unbounded kind accepts +inf (e.g. a cliff that never cuts)
        else:
            v = number(value, field)
        if v < cls.low or v > cls.high:
            raise ConfigError(
                field, f"{cls.kind} {cls.value_name} must be in [{cls.low}, {cls.high}], got {v}"
            )
        return v

    def set_value(self, value: float) -> None:
        self.value = self.check(value, f"{self.kind}.{self.value_name}")

    def eval_state(self) -> float | None:
        """What this module does to an evaluation, for kinds whose noise can act in eval mode
        (1.0 = it acts now, 0.0 = it does not); None for kinds that are off in eval mode."""
        return None

    def extra_repr(self) -> str:
        return f"{self.value_name}={self.value:g}"
