"""Model-level regularizers: hooks the engine calls around training, not layers in the model.

Placed with ``where: model``, they are not inserted into any layer (the model's state-dict keys
do not change); the engine finds them in the ``RegularizerSet`` and calls, in this order:

- ``setup(model, info)`` once, with the dataset's ``info`` (e.g. standardisation mean/std);
- ``period_start(model)`` after the period's values are set;
- ``transform(x)`` on every training batch (never on validation/test batches);
- ``penalty(model)`` as a loss term (training passes only: zero in eval mode);
- ``after_step(model)`` after every optimizer step (constraints such as max-norm);
- ``period_end(model)`` after the period's training passes, before its validation batches;
- ``eval_start(model)`` / ``eval_end(model)`` around an epoch-end evaluation (which can fall
  mid-period): ``eval_end`` must leave the model exactly as ``eval_start`` found it.

Every hook is a no-op by default. Like every ``PeriodicRegularizer``, the strength is ``value``,
read at call time, so controllers can set it per period.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from raytune_periodic.regularizers._base import PeriodicRegularizer


class ModelRegularizer(PeriodicRegularizer):
    """Base of regularizers that act on the whole model/batch through engine hooks."""

    has_penalty: ClassVar[bool] = False  #: whether the engine adds ``penalty`` to the loss

    def setup(self, model: nn.Module, info: Mapping[str, Any]) -> None:  # noqa: B027
        """Called once when the engine is built."""

    def period_start(self, model: nn.Module) -> None:  # noqa: B027
        """Called at each period's start, after the values are set."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Transform one training batch of inputs (identity by default)."""
        return x

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """A term added to the loss (used only by kinds with ``has_penalty = True``)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:  # noqa: B027
        """Called after each optimizer step."""

    def period_end(self, model: nn.Module) -> None:  # noqa: B027
        """Called after each period's training passes."""

    def eval_start(self, model: nn.Module) -> None:  # noqa: B027
        """Called before an epoch-end evaluation."""

    def eval_end(self, model: nn.Module) -> None:  # noqa: B027
        """Called after it; restores what ``eval_start`` changed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class WeightEWA(ModelRegularizer):
    """PFREWA's exponentially weighted average of the weights across periods (§3.5.3, eq. 2).

    ``W_pre(t+1) = α·W_post(t) + (1−α)·W_pre(t)``: the weights a period starts from are
    snapshotted at ``period_start``; at ``period_end`` the trained weights are replaced by the
    average. ``value`` is α (the paper: 0.9); α = 1 keeps the trained weights (no averaging, i.e.
    plain PFR). Only parameters are averaged (BatchNorm running statistics and the optimizer state
    are left as they are). Nothing outlives a period, so checkpoints at period boundaries need
    no extra state.
    An epoch-end evaluation inside a period sees the weights the period's end would leave,
    ``α·W + (1−α)·W_pre`` (``eval_start``), and training resumes from the exact ``W``
    (``eval_end``).
    """

    kind = "ewa"
    low = 0.0
    high = 1.0
    value_name = "alpha"

    def __init__(self, value: float = 0.9) -> None:
        super().__init__(value)
        self._pre: list[torch.Tensor] | None = None
        self._trained: list[torch.Tensor] | None = None

    def period_start(self, model: nn.Module) -> None:
        if self.value >= 1.0:
            self._pre = None
            return
        self._pre = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def period_end(self, model: nn.Module) -> None:
        pre, self._pre = self._pre, None
        if pre is None or self.value >= 1.0:
            return
        for param, before in zip(model.parameters(), pre, strict=True):
            # α·W_post + (1−α)·W_pre  ==  W_post + (1−α)·(W_pre − W_post)
            param.lerp_(before, 1.0 - self.value)

    @torch.no_grad()
    def eval_start(self, model: nn.Module) -> None:
        if self._pre is None or self.value >= 1.0:
            return
        self._trained = [p.detach().clone() for p in model.parameters()]
        for param, before in zip(model.parameters(), self._pre, strict=True):
            param.lerp_(before, 1.0 - self.value)

    @torch.no_grad()
    def eval_end(self, model: nn.Module) -> None:
        trained, self._trained = self._trained, None
        if trained is None:
            return
        for param, saved in zip(model.parameters(), trained, strict=True):
            param.copy_(saved)
