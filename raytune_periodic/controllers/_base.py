"""Base class of controllers: the per-period policy that sets regularization values.

Lifecycle, as the engine calls it::

    controller.bind(bounds)            # once, before training: names and valid ranges
    for each period t:
        values = controller.decide(state)   # at the period's start (state.last = period t-1)
        ... N training passes with ``values`` in force, then a few validation batches ...
        controller.observe(record)          # at the period's end, with what was measured

``state_dict()``/``load_state_dict()`` capture everything needed to continue bit-for-bit
(RNG states included). Controllers never see Ray, MLflow or the engine itself.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord, PeriodState
from raytune_periodic.validation import bounded_range

T = TypeVar("T")


class Controller(ABC):
    """Decides the values of named regularizer groups for each period."""

    name: ClassVar[str] = ""

    @classmethod
    def smoke_options(cls, spec: dict[str, Any]) -> None:
        """Shrink the options ``spec`` in place so a ``--smoke`` run (2 periods) takes seconds
        and still exercises the controller (e.g. an interval of 1). Default: no change."""
        return

    def __init__(self) -> None:
        self.bounds: dict[str, tuple[float, float]] = {}

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        """Called once with the model's regularizer groups and their valid ranges.

        Subclasses check that every name they control exists and their ranges fit the bounds.
        """
        self.bounds = dict(bounds)
        for name in self.controlled():
            if name not in self.bounds:
                raise ConfigError(
                    f"{field}.{name}",
                    f"no regularizer group {name!r} in the model; groups: {sorted(self.bounds)}",
                )

    def controlled(self) -> list[str]:
        """Names of the groups this controller sets (others keep their placement value)."""
        return []

    @abstractmethod
    def decide(self, state: PeriodState) -> dict[str, float]:
        """Values for the period ``state.period``; called at the period's start."""

    def observe(self, record: PeriodRecord) -> None:  # noqa: B027 - optional hook
        """Called at the period's end with its record (metrics measured under the values)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (agents, processes); called when the run ends."""


def expand_groups(values: Mapping[str, T], bounds: Mapping[str, Any]) -> dict[str, T]:
    """``values`` keyed by group: a key that is no group but whose per-layer groups
    ``<key>_0, <key>_1, ...`` exist (a ``per_layer`` placement) stands for each of them; a
    group named explicitly wins over its prefix. Other keys are kept (``bind`` reports them)."""
    out = {k: v for k, v in values.items() if k in bounds}
    for key, value in values.items():
        if key in bounds:
            continue
        layers = [g for g in bounds if re.fullmatch(rf"{re.escape(key)}_\d+", g)]
        for group in sorted(layers, key=lambda g: int(g.rsplit("_", 1)[1])) or [key]:
            out.setdefault(group, value)
    return out


def check_range(
    field: str, lo: float, hi: float, bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Validate a ``[lo, hi]`` range (lo ≤ hi, finite, inside ``bounds``); one-line errors."""
    return bounded_range((lo, hi), field, bounds)
