"""``controller``: an in-trial controller; ``trials`` replicates per seed (different init)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.tuning.methods._base import SearchMethod


class ControllerMethod(SearchMethod):
    """Constant, periodic random, toggle, schedule, PPO or a plugin controller, run as
    ``budget.trials`` replicates per seed that differ in model initialisation."""

    search = "controller"
    keys = {"controller", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        ctrl = entry.get("controller")
        if not isinstance(ctrl, Mapping) or "type" not in ctrl:
            raise ConfigError(f"methods.{name}.controller", "needs a mapping with a 'type'")

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        """The controller's own shrink (``Controller.smoke_options``), e.g. PPO batch sizes."""
        from raytune_periodic.controllers import CONTROLLERS

        ctrl = entry.get("controller")
        if isinstance(ctrl, dict) and ctrl.get("type") in CONTROLLERS:
            shrink = getattr(CONTROLLERS.get(ctrl["type"]), "smoke_options", None)
            if shrink is not None:
                shrink(ctrl)

    def controller(self) -> dict[str, Any]:
        return dict(self.entry["controller"])

    def replicates(self) -> int:
        return self.trials
