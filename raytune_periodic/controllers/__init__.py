"""Controllers: per-period policies. Built by name from ``CONTROLLERS``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raytune_periodic.controllers._base import Controller, check_range
from raytune_periodic.controllers.basic import (
    ConstantController,
    PeriodicRandomController,
    ScheduleController,
    ToggleController,
)
from raytune_periodic.controllers.rewards import REWARDS, Reward, make_reward
from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry

CONTROLLERS: Registry[Callable[..., Controller]] = Registry("controller")
CONTROLLERS.add("constant", ConstantController)
CONTROLLERS.add("periodic_random", PeriodicRandomController)
CONTROLLERS.add("toggle", ToggleController)
CONTROLLERS.add("schedule", ScheduleController)
# The RLlib PPO controller (PDRL/PNIRL) lives in the integration layer above the core: a lazy
# entry, imported when a config names it (importing it loads neither Ray nor gymnasium).
CONTROLLERS.add("ppo", "raytune_periodic.rl.controller:PPOController")


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
    CONTROLLERS.get(kind, field=f"{field}.type")
    try:
        ctrl = CONTROLLERS.build(kind, spec, field, defaults={"seed": seed})
    except ConfigError as exc:
        # Re-anchor errors raised with the generic "controller." prefix at the caller's field.
        if exc.field.startswith("controller") and field != "controller":
            raise ConfigError(field + exc.field[len("controller") :], exc.message) from None
        raise
    if not isinstance(ctrl, Controller):
        raise ConfigError(f"{field}.type", f"{kind!r} is not a Controller subclass")
    return ctrl


__all__ = [
    "CONTROLLERS",
    "REWARDS",
    "ConstantController",
    "Controller",
    "PeriodicRandomController",
    "Reward",
    "ScheduleController",
    "ToggleController",
    "build_controller",
    "check_range",
    "make_reward",
]
