"""Controllers: per-period policies. Built by name from ``CONTROLLERS``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from raytune_periodic.controllers._base import Controller, check_range
from raytune_periodic.controllers.basic import (
    ConstantController,
    PeriodicRandomController,
    ScheduleController,
    ToggleController,
)
from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry

CONTROLLERS: Registry[Callable[..., Controller]] = Registry("controller")
CONTROLLERS.add("constant", ConstantController)
CONTROLLERS.add("periodic_random", PeriodicRandomController)
CONTROLLERS.add("toggle", ToggleController)
CONTROLLERS.add("schedule", ScheduleController)


def build_controller(
    spec: Mapping[str, Any], seed: int = 0, field: str = "controller"
) -> Controller:
    """Build a controller from ``{"type": name, **options}``; ``seed`` is the default seed.

    Unknown types or options are one-line ConfigErrors naming the field.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind is None:
        raise ConfigError(f"{field}.type", f"missing; valid: {', '.join(CONTROLLERS.names())}")
    builder = CONTROLLERS.get(kind, field=f"{field}.type")
    params = inspect.signature(builder).parameters
    for key in spec:
        if key not in params:
            valid = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"{field}.{key}", f"unknown option for {kind}; valid: {valid}")
    if "seed" in params and "seed" not in spec:
        spec["seed"] = seed
    try:
        return builder(**spec)
    except ConfigError as exc:
        # Re-anchor errors raised with the generic "controller." prefix at the caller's field.
        if exc.field.startswith("controller") and field != "controller":
            raise ConfigError(field + exc.field[len("controller") :], exc.message) from None
        raise


__all__ = [
    "CONTROLLERS",
    "ConstantController",
    "Controller",
    "PeriodicRandomController",
    "ScheduleController",
    "ToggleController",
    "build_controller",
    "check_range",
]

# The RLlib PPO controller (PDRL/PNIRL): importing it loads neither Ray nor gymnasium; RLlib is
# imported when the controller is bound to a model.
from raytune_periodic.rl.controller import PPOController  # noqa: E402

CONTROLLERS.add("ppo", PPOController)
__all__ += ["PPOController"]
