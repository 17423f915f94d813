"""Rewards of a learning controller: one number per period from that period's record.

Registry ``REWARDS`` (plugins by import path or entry point group ``raytune_periodic.rewards``):

- ``gap`` — the periodic paper's ``−(train F1 − val F1)`` with train F1 as the paper means it:
  measured in eval mode (regularizers off) on a fixed, seeded training subset at the period's end
  (``record.eval_gap``; the engine evaluates the subset whenever the controller's reward needs
  it). It cannot be gamed by regularizing harder: dropout/noise do not act on that measurement.
- ``gap_train_mode`` — the same gap with train F1 averaged over the period's training passes, in
  train mode under the very dropout/noise the agent chose: the largest rate closes it, so an
  agent learns to over-regularize. Kept for comparison.
- ``val_f1``, ``val_f1_delta`` (improvement over the previous period), ``val_f1_minus_gap``
  (``val F1 − λ·gap_train_mode``, the digits configs' reward).

A reward is a small class: ``__init__(gap_lambda)``, ``__call__(record) -> float``,
``needs_train_eval`` (True: the engine must evaluate the training subset), and ``state_dict`` /
``load_state_dict`` when it keeps state across periods (exact restore).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord
from raytune_periodic.registry import Registry
from raytune_periodic.validation import number


class Reward:
    """A period's reward from its record; may keep state (see ``val_f1_delta``)."""

    name = ""
    needs_train_eval = False  #: reads ``record.train_eval_f1`` (the engine then measures it)

    def __init__(self, gap_lambda: float = 0.5) -> None:
        self.gap_lambda = gap_lambda

    def __call__(self, record: PeriodRecord) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned."""


class GapReward(Reward):
    """The paper's: −(train F1 − val F1), train F1 in eval mode on a fixed training subset."""

    name = "gap"
    needs_train_eval = True

    def __call__(self, record: PeriodRecord) -> float:
        return -record.eval_gap


class TrainModeGapReward(Reward):
    """−(train F1 − val F1) with the period's train-mode F1: gamed by over-regularizing."""

    name = "gap_train_mode"

    def __call__(self, record: PeriodRecord) -> float:
        return -record.gap


class ValF1Reward(Reward):
    """Val F1 of the period's end-of-period validation mini-batches."""

    name = "val_f1"

    def __call__(self, record: PeriodRecord) -> float:
        return record.val_f1


class ValF1DeltaReward(Reward):
    """Improvement of val F1 over the previous period (0 for the first)."""

    name = "val_f1_delta"

    def __init__(self, gap_lambda: float = 0.5) -> None:
        super().__init__(gap_lambda)
        self.previous: float | None = None

    def __call__(self, record: PeriodRecord) -> float:
        prev, self.previous = self.previous, record.val_f1
        return 0.0 if prev is None else record.val_f1 - prev

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous = state.get("previous")


class ValF1MinusGapReward(Reward):
    """Val F1 − λ·gap: rewards generalisation without paying for underfitting."""

    name = "val_f1_minus_gap"

    def __call__(self, record: PeriodRecord) -> float:
        return record.val_f1 - self.gap_lambda * record.gap


REWARDS: Registry[type[Reward]] = Registry("reward")
for _cls in (GapReward, TrainModeGapReward, ValF1Reward, ValF1DeltaReward, ValF1MinusGapReward):
    REWARDS.add(_cls.name, _cls)


def make_reward(name: str, gap_lambda: float = 0.5, field: str = "controller") -> Reward:
    """Build a reward by name; unknown names and bad λ are one-line ConfigErrors."""
    lam = number(gap_lambda, f"{field}.gap_lambda", 0.0)
    reward = REWARDS.build(name, None, f"{field}.reward", lam)
    if not callable(reward):
        raise ConfigError(
            f"{field}.reward", f"{name!r} built a non-callable {type(reward).__name__}"
        )
    return reward
