"""The controllers that need no learning: constant, periodic_random, toggle and schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raytune_periodic.controllers._base import Controller, check_range, expand_groups
from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodState
from raytune_periodic.validation import (
    boolean,
    bounded_range,
    choice,
    fraction,
    integer,
    mapping,
    number,
    sequence,
    string,
)


def _values(values: object, field: str) -> dict[str, float]:
    """``{group: number}``, each value checked under ``field.group``."""
    return {k: number(v, f"{field}.{k}") for k, v in mapping(values, field).items()}


def _numbers(values: object, field: str) -> list[float]:
    return [number(v, field) for v in sequence(values, field)]


class ConstantController(Controller):
    """The same values every period: the vanilla baselines (BL, D, GNI)."""

    name = "constant"

    def __init__(self, values: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.values = _values(values or {}, "controller.values")

    def controlled(self) -> list[str]:
        return list(self.values)

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        self.values = expand_groups(self.values, bounds)  # ``noise``: every ``noise_<i>``
        super().bind(bounds, field)
        for name, v in self.values.items():
            check_range(f"{field}.values.{name}", v, v, self.bounds[name])

    def decide(self, state: PeriodState) -> dict[str, float]:
        return dict(self.values)


class PeriodicRandomController(Controller):
    """A fresh value per group every ``every`` periods, drawn from a seeded distribution.

    The periodic paper's PD (periodic dropout) and PNI (periodic noise injection):
    ``distribution="uniform"`` draws from ``ranges[name] = [low, high]``; ``"choice"`` picks one of
    ``choices[name]``. A ``name`` whose placement is ``per_layer`` (groups ``name_0, name_1, ...``)
    draws an independent value for each injection layer (the paper: "the standard deviation of
    each injection layer periodically changes").
    """

    name = "periodic_random"

    @classmethod
    def smoke_options(cls, spec: dict[str, Any]) -> None:
        if "every" in spec:
            spec["every"] = 1  # a 2-period smoke run still draws / toggles

    def __init__(
        self,
        ranges: Mapping[str, Sequence[float]] | None = None,
        choices: Mapping[str, Sequence[float]] | None = None,
        distribution: str = "uniform",
        every: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.distribution = choice(distribution, "controller.distribution", ("uniform", "choice"))
        self.every = integer(every, "controller.every", 1)
        self.ranges = {
            k: bounded_range(v, f"controller.ranges.{k}")
            for k, v in mapping(ranges or {}, "controller.ranges").items()
        }
        self.choices = {
            k: _numbers(v, f"controller.choices.{k}")
            for k, v in mapping(choices or {}, "controller.choices").items()
        }
        source = self.ranges if distribution == "uniform" else self.choices
        if not source:
            key = "ranges" if distribution == "uniform" else "choices"
            raise ConfigError(f"controller.{key}", "needs at least one regularizer group")
        self.seed = integer(seed, "controller.seed")
        self.rng = np.random.default_rng(self.seed)
        self.current: dict[str, float] = {}

    def controlled(self) -> list[str]:
        return list(self.ranges if self.distribution == "uniform" else self.choices)

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        self.ranges = expand_groups(self.ranges, bounds)  # per-layer groups: one draw each
        self.choices = expand_groups(self.choices, bounds)
        super().bind(bounds, field)
        for name, (lo, hi) in self.ranges.items():
            check_range(f"{field}.ranges.{name}", lo, hi, self.bounds[name])
        for name, opts in self.choices.items():
            for v in opts:
                check_range(f"{field}.choices.{name}", v, v, self.bounds[name])

    def decide(self, state: PeriodState) -> dict[str, float]:
        if state.period % self.every == 0 or not self.current:
            if self.distribution == "uniform":
                self.current = {
                    k: float(self.rng.uniform(lo, hi)) for k, (lo, hi) in self.ranges.items()
                }
            else:
                self.current = {k: float(self.rng.choice(v)) for k, v in self.choices.items()}
        return dict(self.current)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "current": dict(self.current)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.current = dict(state["current"])


class ToggleController(Controller):
    """A two-valued flag per group: Bernoulli(p) each period (PFR) or every k periods.

    ``mode="every"`` starts at ``off`` and switches every ``every`` periods (Algorithm 1 of the
    noise-injection paper with interval T = every × period_length; the paper's first off-run is
    one step shorter, see ``algorithm1_flags``).
    """

    name = "toggle"

    @classmethod
    def smoke_options(cls, spec: dict[str, Any]) -> None:
        if "every" in spec:
            spec["every"] = 1  # a 2-period smoke run still draws / toggles

    def __init__(
        self,
        names: Sequence[str] = ("sign_flip",),
        mode: str = "bernoulli",
        p: float = 0.5,
        every: int = 1,
        on: float = 1.0,
        off: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.mode = choice(mode, "controller.mode", ("bernoulli", "every"))
        self.p = fraction(p, "controller.p")
        self.every = integer(every, "controller.every", 1)
        self.names = [string(n, "controller.names") for n in sequence(names, "controller.names")]
        if not self.names:
            raise ConfigError("controller.names", "needs at least one regularizer group")
        self.on, self.off = number(on, "controller.on"), number(off, "controller.off")
        self.seed = integer(seed, "controller.seed")
        self.rng = np.random.default_rng(self.seed)

    def controlled(self) -> list[str]:
        return list(self.names)

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        super().bind(bounds, field)
        for name in self.names:
            check_range(f"{field}.on", self.on, self.on, self.bounds[name])
            check_range(f"{field}.off", self.off, self.off, self.bounds[name])

    def flag(self, period: int) -> bool:
        """The deterministic every-k schedule: off for periods [0, k), on for [k, 2k), …"""
        return (period // self.every) % 2 == 1

    def decide(self, state: PeriodState) -> dict[str, float]:
        if self.mode == "every":
            flag = self.flag(state.period)
            return {k: self.on if flag else self.off for k in self.names}
        return {k: self.on if self.rng.random() < self.p else self.off for k in self.names}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class ScheduleController(Controller):
    """Replays a fixed per-period schedule (e.g. exported from an MLflow run).

    ``schedule`` is a list of ``{name: value}`` dicts, one per period; past its end the last entry
    is held (``hold_last=True``) or it is an error.
    """

    name = "schedule"

    def __init__(self, schedule: Sequence[Mapping[str, float]], hold_last: bool = True) -> None:
        super().__init__()
        rows = sequence(schedule, "controller.schedule")
        if not rows:
            raise ConfigError("controller.schedule", "must have at least one period")
        self.schedule = [_values(row, f"controller.schedule[{i}]") for i, row in enumerate(rows)]
        self.hold_last = boolean(hold_last, "controller.hold_last")

    def controlled(self) -> list[str]:
        return sorted({k for row in self.schedule for k in row})

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        super().bind(bounds, field)
        for i, row in enumerate(self.schedule):
            for name, v in row.items():
                check_range(f"{field}.schedule[{i}].{name}", v, v, self.bounds[name])

    def decide(self, state: PeriodState) -> dict[str, float]:
        if state.period >= len(self.schedule):
            if not self.hold_last:
                raise ConfigError(
                    "controller.schedule", f"has {len(self.schedule)} periods, run needs more"
                )
            return dict(self.schedule[-1])
        return dict(self.schedule[state.period])
