"""The sign flip after BatchNorm (PFR, and Algorithm 1 of the noise-injection paper).

While the flag is on, the feature after BN is multiplied by -1 (``feature *= -1``). The flag is a
value in {0, 1} set per period by a controller (``toggle``: Bernoulli(p) as in PFR, or every k
periods as in Algorithm 1). The flag in force acts in evaluation too (``apply_in_eval``, default
true): an epoch-end evaluation that falls while the flag is on sees the flipped network, the
convention every arm follows (AutoReLU with a negative ``w`` likewise; see ``training/engine.py``),
as the noise-injection paper's validation F1 drops while noise is injected (§4.3, Fig. 4).
``apply_in_eval: false`` evaluates the un-flipped network instead.
"""

from __future__ import annotations

import torch

from raytune_periodic.errors import ConfigError
from raytune_periodic.regularizers._base import PeriodicRegularizer
from raytune_periodic.validation import boolean


class SignFlip(PeriodicRegularizer):
    kind = "sign_flip"
    low = 0.0
    high = 1.0
    value_name = "flag"

    def __init__(self, value: float = 0.0, apply_in_eval: bool = True) -> None:
        super().__init__(value)
        self.apply_in_eval = boolean(apply_in_eval, f"{self.kind}.options.apply_in_eval")

    @classmethod
    def check(cls, value: float, field: str) -> float:
        v = super().check(value, field)
        if v not in (0.0, 1.0):
            raise ConfigError(field, f"sign_flip flag must be 0 or 1, got {v}")
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value and (self.training or self.apply_in_eval):
            return -x
        return x

    def eval_state(self) -> float:
        """1.0 when an evaluation now sees the flipped feature."""
        return float(bool(self.value) and self.apply_in_eval)


def algorithm1_flags(steps: int, interval: int) -> list[bool]:
    """The flag in force at each of ``steps`` training steps under Algorithm 1 (interval T).

    Transcribes the paper's loop: ``step += 1; apply if flag; if step % T == T - 1: flag = not
    flag``. Used to check the ``toggle`` controller's every-k schedule against the paper.
    """
    flag, out = False, []
    for step in range(1, steps + 1):
        out.append(flag)
        if step % interval == interval - 1:
            flag = not flag
    return out
