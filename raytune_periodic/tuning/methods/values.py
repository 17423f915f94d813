"""Searches over constant values: ``grid`` (Tune's grid), ``random`` (Tune's random search) and
``optuna`` (Optuna's TPE through Tune's ``OptunaSearch``), each ``trials`` trials per seed."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.tuning.methods._base import SearchMethod, space_entry
from raytune_periodic.validation import integer


class ValueSearch(SearchMethod):
    """Base of searches over ``space: {group: [low, high] | {low, high, log}}``."""

    keys = {"space", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        space = entry.get("space")
        if not isinstance(space, Mapping) or not space:
            raise ConfigError(f"methods.{name}.space", "needs {group: [low, high]} entries")
        for group, value in space.items():
            space_entry(value, f"methods.{name}.space.{group}", bounds, group)

    def ranges(self) -> dict[str, tuple[float, float, bool]]:
        """``{group: (low, high, log)}`` of the searched space."""
        return {g: space_entry(v, "", None, g) for g, v in self.entry["space"].items()}

    def _domains(self) -> dict[str, Any]:
        from ray import tune

        return {
            g: tune.loguniform(low, high) if log else tune.uniform(low, high)
            for g, (low, high, log) in self.ranges().items()
        }

    def values_space(self, seed: int) -> dict[str, Any]:
        return self._domains()

    def searched_groups(self) -> list[str]:
        return list(self.entry["space"])

    def tune_config(self, seed: int) -> dict[str, Any]:
        return {"num_samples": self.trials}


class GridMethod(SearchMethod):
    """``tune.grid_search`` over constant values; the grid must have ``trials`` points."""

    search = "grid"
    keys = {"grid", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        grid = entry.get("grid")
        fld = f"methods.{name}.grid"
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError(fld, "needs {group: [values]} entries")
        size = 1
        for group, values in grid.items():
            _check_grid_values(f"{fld}.{group}", group, values, bounds)
            size *= len(values)
        if size != trials:
            raise ConfigError(
                fld, f"has {size} points but budget.trials is {trials}: a fair budget needs equal"
            )

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        """The grid cut to ``trials`` points (the first group with enough values varies)."""
        grid = entry.get("grid")
        if not isinstance(grid, Mapping):
            return
        out = {g: list(v[:1]) for g, v in grid.items()}
        if trials > 1:
            for g, values in grid.items():
                if len(values) >= trials:
                    out[g] = list(values[:trials])
                    break
        entry["grid"] = out

    def values_space(self, seed: int) -> dict[str, Any]:
        from ray import tune

        return {g: tune.grid_search(list(v)) for g, v in self.entry["grid"].items()}

    def searched_groups(self) -> list[str]:
        return list(self.entry["grid"])

    def points(self) -> list[dict[str, float]]:
        grid = self.entry["grid"]
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _check_grid_values(
    fld: str, group: str, values: Any, bounds: Mapping[str, tuple[float, float]] | None
) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(fld, f"expected a non-empty list, got {values!r}")
    if bounds is not None and group not in bounds:
        raise ConfigError(fld, f"no regularizer group {group!r}; groups: {sorted(bounds)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(fld, f"values must be finite numbers, got {v!r}")
        if bounds is not None:
            lo, hi = bounds[group]
            if not lo <= v <= hi:
                raise ConfigError(fld, f"value {v} outside valid [{lo}, {hi}]")


class RandomMethod(ValueSearch):
    """Tune's random search: ``trials`` samples per seed from uniform/log-uniform ranges."""

    search = "random"


class OptunaMethod(ValueSearch):
    """Optuna's TPE sampler (seeded per seed) through Tune's ``OptunaSearch``."""

    search = "optuna"
    keys = ValueSearch.keys | {"n_startup_trials"}
    per_seed = True

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        if "n_startup_trials" in entry:
            integer(entry["n_startup_trials"], f"methods.{name}.n_startup_trials", 1)

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        entry["n_startup_trials"] = 1

    def tune_config(self, seed: int) -> dict[str, Any]:
        from raytune_periodic._imports import require

        optuna = require("optuna")
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=int(self.entry.get("n_startup_trials", 2))
        )
        searcher = OptunaSearch(sampler=sampler)  # metric/mode come from TuneConfig
        return {"num_samples": self.trials, "search_alg": searcher}
