"""CliffReLU and AutoReLU: the dynamic noise injection of the noise-injection paper (§3.2).

**CliffReLU** (eq. 1): ``y = x`` for ``0 < x < Constant`` and ``y = 0`` for ``x ≤ 0`` or
``x ≥ Constant`` (a ReLU that "drops the value over Constant into zero"). ``value`` is the
Constant; 0 (the default of a placement) and ``inf`` mean *no cliff* (a plain ReLU), following this
package's convention that value 0 switches a regularizer off.

**AutoReLU** (eq. 2): ``y = CliffReLU(x·w) / |w|`` with a learnable ``w`` initialised in (0, 1).
With ``w > 0`` it is a CliffReLU with the cliff at ``Constant / w`` (no noise); with ``w < 0`` it
is ``ReLU(−x)`` (cliffed), i.e. exactly the sign flip after BatchNorm of Algorithm 1 followed by
the ReLU — the noise. Before every training forward step all ``w`` are re-initialised to their
mean (Step 2), so every unit of a layer switches sign together. The loss gives ``w`` no gradient
(``x·w/|w| = x·sign(w)``, which is how it is computed); ``w`` moves only by the optimizer's weight
decay, which drives it to 0 and across: "all w converge to a value close to 0" (Step 1), then
flip. Because the mean re-initialisation makes all ``w`` equal, one scalar ``w`` per module is
used.

Steps 2–3 say that after the flip "the sign remains negative for a certain period of time" and
that the process repeats, positive to negative "and vice versa". Left to weight decay, ``w``
settles at 0 instead (measured with Adam, lr 1e-4, weight decay 1e-4, init 0.5, the noise
paper's settings: ``w`` reaches 0 after ~13,300 steps, flips twice within 150 steps, then stays at
0 for good). ``reset_after_flip`` (default true, our reading of Steps 1–3) re-initialises ``w`` at
the first training step after its sign changed to ``±init`` (the magnitude every ``w`` starts
from, with the new sign), before that step's forward: the sign then holds while weight decay walks
``|w|`` back to 0 and the cycle repeats (same settings: a flip every ~12,000 steps).
``reset_after_flip: false`` is the plain drift.

Both are placed ``before_relu`` (or ``block_bn``, after the first BN of each residual block, the
paper's "single BN+ReLU unit per block"): their output is ≥ 0, so the ReLU that follows is a
no-op. Both act in train and eval mode (they are activations, not train-time noise); with
``apply_in_eval: false`` AutoReLU evaluates as if ``w > 0`` (no flip), like ``sign_flip``'s option.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raytune_periodic.regularizers._base import PeriodicRegularizer
from raytune_periodic.validation import boolean, number


def cliff_relu(x: torch.Tensor, constant: float) -> torch.Tensor:
    """``x`` where ``0 < x < constant``, else 0; ``constant`` 0 or inf: a plain ReLU."""
    if constant == 0.0 or math.isinf(constant):
        return torch.relu(x)
    keep = (x > 0) & (x < constant)
    return torch.where(keep, x, torch.zeros_like(x))


class CliffReLU(PeriodicRegularizer):
    """ReLU with a cliff: zero at and above ``value`` (the paper's Constant)."""

    kind = "cliff_relu"
    low = 0.0
    high = math.inf
    value_name = "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cliff_relu(x, self.value)


class AutoReLU(PeriodicRegularizer):
    """``CliffReLU(x·w)/|w|`` with a learnable scalar ``w`` re-set to its mean before each step."""

    kind = "auto_relu"
    low = 0.0
    high = math.inf
    value_name = "constant"

    def __init__(
        self,
        value: float = 0.0,
        init: float = 0.5,
        reset_after_flip: bool = True,
        apply_in_eval: bool = True,
    ) -> None:
        super().__init__(value)
        opt = "auto_relu.options"
        self.init = number(init, f"{opt}.init", 0.0, 1.0, low_open=True, high_open=True)
        self.reset_after_flip = boolean(reset_after_flip, f"{opt}.reset_after_flip")
        self.apply_in_eval = boolean(apply_in_eval, f"{opt}.apply_in_eval")
        self.w = nn.Parameter(torch.full((1,), self.init))
        self.register_buffer("last_sign", torch.ones(1))  # w's sign at the last training step

    @torch.no_grad()
    def _reset_if_flipped(self) -> None:
        """Steps 2–3: a ``w`` whose sign changed since the last step restarts at ``±init``."""
        sign = torch.sign(self.w)
        flipped = (sign != self.last_sign) & (sign != 0)
        self.w.copy_(torch.where(flipped, sign * self.init, self.w))
        self.last_sign.copy_(torch.where(sign != 0, sign, self.last_sign))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.reset_after_flip:
            self._reset_if_flipped()
        w = self.w.to(x.dtype)
        if not (self.training or self.apply_in_eval):
            w = w.abs()
        xw = x * w
        keep = xw > 0
        if self.value != 0.0 and not math.isinf(self.value):
            keep = keep & (xw < self.value)
        # CliffReLU(x·w)/|w| == x·sign(w) where kept: no division, and w's gradient is exactly 0
        return torch.where(keep, x * torch.sign(w), torch.zeros_like(x))

    @property
    def noisy(self) -> bool:
        """Whether the module currently injects noise (``w < 0``)."""
        return bool(self.w.detach().mean() < 0)

    def eval_state(self) -> float:
        """1.0 when an evaluation now sees the flipped (noisy) activation."""
        return float(self.noisy and self.apply_in_eval)
