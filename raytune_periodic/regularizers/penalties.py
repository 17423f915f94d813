"""Weight penalties (L1, L2, the adaptive penalty) and the max-norm constraint, model-level.

All act on the *weights*: parameters with two or more dimensions (Linear and Conv kernels), not
biases or BatchNorm affine parameters, as Keras' ``kernel_regularizer`` does in the iris and
Tiny-ImageNet papers. ``include_classifier: false`` leaves out the last ``nn.Linear``'s weight.
Penalties are added to the *training* loss only (validation/test losses stay plain cross-entropy,
so they are comparable across methods); ``value`` is their coefficient and 0 turns them off.

- ``l1``: ``value · Σ|w|``;
- ``l2``: ``value · Σw²`` (Keras' ``regularizers.l2``; no ½), on top of the optimizer's weight
  decay (set ``train.weight_decay: 0`` for a pure L2 run);
- ``adaptive_penalty``: ``value · Σ w²/(w0² + w²)`` (iris survey, eq. for h(w_k²)): near-L2 for
  |w| ≪ w0, saturating at ``value`` per weight for |w| ≫ w0 (weight elimination);
- ``max_norm``: after every optimizer step, each unit's incoming weight vector (a row of a Linear
  weight, one output filter of a Conv) is rescaled to norm ≤ ``value`` (Keras ``MaxNorm``);
  0 turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from raytune_periodic.regularizers.model_level import ModelRegularizer
from raytune_periodic.validation import boolean, number


def penalised_weights(model: nn.Module, include_classifier: bool = True) -> list[nn.Parameter]:
    """Parameters with ``ndim >= 2`` (kernels), optionally without the classifier's weight."""
    skip = None
    if not include_classifier:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        skip = linears[-1].weight if linears else None
    return [p for p in model.parameters() if p.ndim >= 2 and p is not skip]


class _WeightRegularizer(ModelRegularizer):
    def __init__(self, value: float = 0.0, include_classifier: bool = True) -> None:
        super().__init__(value)
        field = f"{self.kind}.options.include_classifier"
        self.include_classifier = boolean(include_classifier, field)
        self._weights: list[nn.Parameter] | None = None

    def setup(self, model: nn.Module, info: Mapping[str, Any]) -> None:
        self._weights = penalised_weights(model, self.include_classifier)

    def weights(self, model: nn.Module) -> list[nn.Parameter]:
        if self._weights is None:
            self._weights = penalised_weights(model, self.include_classifier)
        return self._weights


class _Penalty(_WeightRegularizer):
    has_penalty = True

    def term(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        weights = self.weights(model)
        if not model.training or self.value == 0.0 or not weights:
            device = weights[0].device if weights else None
            return torch.zeros((), device=device)
        total = torch.stack([self.term(w) for w in weights]).sum()
        return self.value * total


class L1Penalty(_Penalty):
    """``value · Σ|w|`` over the weights."""

    kind = "l1"
    value_name = "lambda"

    def term(self, w: torch.Tensor) -> torch.Tensor:
        return w.abs().sum()


class L2Penalty(_Penalty):
    """``value · Σw²`` over the weights."""

    kind = "l2"
    value_name = "lambda"

    def term(self, w: torch.Tensor) -> torch.Tensor:
        return w.square().sum()


class AdaptivePenalty(_Penalty):
    """``value · Σ w²/(w0² + w²)`` over the weights; ``w0`` (option, default 1) is the scale."""

    kind = "adaptive_penalty"
    value_name = "lambda"

    def __init__(self, value: float = 0.0, w0: float = 1.0, include_classifier: bool = True):
        super().__init__(value, include_classifier)
        self.w0 = number(w0, f"{self.kind}.options.w0", 0.0, low_open=True)

    def term(self, w: torch.Tensor) -> torch.Tensor:
        sq = w.square()
        return (sq / (self.w0**2 + sq)).sum()


class MaxNorm(_WeightRegularizer):
    """After each optimizer step, clamp every unit's incoming weight norm to ``value`` (0: off)."""

    kind = "max_norm"
    value_name = "max"

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if self.value == 0.0 or math.isinf(self.value):
            return
        for w in self.weights(model):
            norms = w.flatten(1).norm(dim=1).clamp(min=1e-12)
            scale = (self.value / norms).clamp(max=1.0)
            w.mul_(scale.view(-1, *([1] * (w.ndim - 1))))
