"""Search methods: how one ``methods.<name>`` entry becomes Ray Tune searches.

One small base class, ``SearchMethod``; each subclass validates its entry without Ray
(``check``) and builds the Tune pieces (``param_space``, ``tune_config``) lazily. Every method
gets the same budget per seed: ``budget.trials`` trials of ``budget.periods`` periods.

=============  ==========================================================================
search         what it runs
=============  ==========================================================================
controller     an in-trial controller (constant, periodic_random, toggle, schedule, ppo);
               ``trials`` replicates per seed differing in model initialisation
grid           ``tune.grid_search`` over constant values (the grid has exactly ``trials``
               points)
random         Tune's random search (``tune.uniform`` / ``tune.loguniform``) of constant values
optuna         Optuna's TPE sampler through ``OptunaSearch``, one search per seed
pbt            ``PopulationBasedTraining``: a population of ``trials`` per seed whose values
               are mutated every ``perturbation_interval`` iterations, weights exploited
pb2            ``PB2`` (GP-bandit explore, scikit-learn), same shape as pbt
=============  ==========================================================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry


def _space_entry(
    value: Any, fld: str, bounds: Mapping[str, tuple[float, float]] | None, group: str
) -> tuple[float, float, bool]:
    """``[low, high]`` or ``{low, high, log}`` → (low, high, log); checked against bounds."""
    log = False
    if isinstance(value, Mapping):
        extra = set(value) - {"low", "high", "log"}
        if extra:
            raise ConfigError(f"{fld}.{sorted(extra)[0]}", "unknown key; valid: high, log, low")
        if "low" not in value or "high" not in value:
            raise ConfigError(fld, "needs low and high")
        low, high, log = value["low"], value["high"], bool(value.get("log", False))
    elif isinstance(value, list | tuple) and len(value) == 2:
        low, high = value
    else:
        raise ConfigError(fld, f"expected [low, high] or {{low, high, log}}, got {value!r}")
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(fld, f"bounds must be finite numbers, got {value!r}")
    if low >= high:
        raise ConfigError(fld, f"low must be < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ConfigError(fld, f"log scale needs low > 0, got {low}")
    if bounds is not None:
        if group not in bounds:
            raise ConfigError(fld, f"no regularizer group {group!r}; groups: {sorted(bounds)}")
        lo, hi = bounds[group]
        if low < lo or high > hi:
            raise ConfigError(fld, f"range [{low}, {high}] outside valid [{lo}, {hi}]")
    return float(low), float(high), log


class SearchMethod:
    """Base class: one method of an experiment, run once per seed.

    ``check`` is called during config validation (no Ray); ``param_space(seed)``/
    ``tune_config(seed, metric)`` are called by the runner when the method's Tuner is built.
    ``per_seed`` says whether the runner builds one Tuner per seed (searchers and schedulers
    whose state must not mix seeds) or one Tuner with a grid over the seeds.
    """

    search: ClassVar[str] = ""
    keys: ClassVar[set[str]] = set()
    per_seed: ClassVar[bool] = False

    def __init__(self, name: str, entry: Mapping[str, Any], trials: int) -> None:
        self.name = name
        self.entry = dict(entry)
        self.trials = trials

    @classmethod
    def check(
        cls,
        name: str,
        entry: Mapping[str, Any],
        trials: int,
        periods: int,
        bounds: Mapping[str, tuple[float, float]] | None,
    ) -> None:
        fld = f"methods.{name}"
        for key in entry:
            if key not in cls.keys | {"search", "base"}:
                valid = ", ".join(sorted(cls.keys | {"search", "base"}))
                raise ConfigError(
                    f"{fld}.{key}", f"unknown key for search {cls.search}; valid: {valid}"
                )

    @classmethod
    def check_base(
        cls,
        name: str,
        entry: Mapping[str, Any],
        base: Mapping[str, Any],
        input_shape: tuple[int, ...] | None,
    ) -> None:
        """Checks needing the method's run spec and the data's input shape (None: no data)."""

    def controller(self) -> dict[str, Any]:
        """The in-trial controller spec (value searches: ``constant`` fed by the trial config)."""
        return {"type": "constant"}

    def values_space(self, seed: int) -> dict[str, Any] | None:
        """Tune domains of the searched values (``config["values"]``), or None."""
        return None

    def tune_config(self, seed: int, metric: str) -> dict[str, Any]:
        """Keyword arguments for ``tune.TuneConfig`` beyond metric/mode."""
        return {"num_samples": 1}

    def trials_per_seed(self) -> int:
        """How many trials this method runs per seed (``validate`` prints the total)."""
        return self.trials

    def static_params(self) -> dict[str, Any]:
        """Method options logged once as MLflow params of the method run."""
        return {k: v for k, v in self.entry.items()}

    def trainable(self, resources: Mapping[str, float]) -> Any:
        """The Tune trainable (with its resources) that runs this method's trials.

        ``resources`` is ``tune.resources`` of the config (``cpu``, ``gpu`` per trial). Methods
        whose trials launch Ray tasks of their own return a placement group factory that
        reserves those tasks' bundles too.
        """
        from ray import tune

        from raytune_periodic.tuning.trainable import PeriodTrainable

        return tune.with_resources(
            PeriodTrainable, {k: float(v) for k, v in resources.items() if v}
        )

    def extra_rp(self) -> dict[str, Any]:
        """Method-specific entries added to every trial's ``config["rp"]``."""
        return {}


METHODS: Registry[type[SearchMethod]] = Registry("search")


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    METHODS.add(cls.search, cls)
    return cls


@register
class ControllerMethod(SearchMethod):
    """An in-trial controller; ``trials`` replicates per seed (different initialisation)."""

    search = "controller"
    keys = {"controller", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        ctrl = entry.get("controller")
        if not isinstance(ctrl, Mapping) or "type" not in ctrl:
            raise ConfigError(f"methods.{name}.controller", "needs a mapping with a 'type'")

    def controller(self) -> dict[str, Any]:
        return dict(self.entry["controller"])

    def tune_config(self, seed: int, metric: str) -> dict[str, Any]:
        return {"num_samples": self.trials}


class _ValueSearch(SearchMethod):
    keys = {"space", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        space = entry.get("space")
        if not isinstance(space, Mapping) or not space:
            raise ConfigError(f"methods.{name}.space", "needs {group: [low, high]} entries")
        for group, value in space.items():
            _space_entry(value, f"methods.{name}.space.{group}", bounds, group)

    def _domains(self) -> dict[str, Any]:
        from ray import tune

        out = {}
        for group, value in self.entry["space"].items():
            low, high, log = _space_entry(value, "", None, group)
            out[group] = tune.loguniform(low, high) if log else tune.uniform(low, high)
        return out


@register
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
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{fld}.{group}", f"expected a non-empty list, got {values!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ConfigError(f"{fld}.{group}", f"values must be finite numbers, got {v!r}")
                if bounds is not None:
                    if group not in bounds:
                        raise ConfigError(
                            f"{fld}.{group}",
                            f"no regularizer group {group!r}; groups: {sorted(bounds)}",
                        )
                    lo, hi = bounds[group]
                    if not lo <= v <= hi:
                        raise ConfigError(f"{fld}.{group}", f"value {v} outside valid [{lo}, {hi}]")
            size *= len(values)
        if size != trials:
            raise ConfigError(
                fld, f"has {size} points but budget.trials is {trials}: a fair budget needs equal"
            )

    def values_space(self, seed: int) -> dict[str, Any]:
        from ray import tune

        return {g: tune.grid_search(list(v)) for g, v in self.entry["grid"].items()}

    def points(self) -> list[dict[str, float]]:
        grid = self.entry["grid"]
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


@register
class RandomMethod(_ValueSearch):
    """Tune's random search: ``trials`` samples per seed from uniform/log-uniform ranges."""

    search = "random"

    def values_space(self, seed: int) -> dict[str, Any]:
        return self._domains()

    def tune_config(self, seed: int, metric: str) -> dict[str, Any]:
        return {"num_samples": self.trials}


@register
class OptunaMethod(_ValueSearch):
    """Optuna's TPE sampler (seeded per seed) through Tune's ``OptunaSearch``."""

    search = "optuna"
    keys = _ValueSearch.keys | {"n_startup_trials"}
    per_seed = True

    def values_space(self, seed: int) -> dict[str, Any]:
        return self._domains()

    def tune_config(self, seed: int, metric: str) -> dict[str, Any]:
        from raytune_periodic._imports import require

        require("optuna")
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=int(self.entry.get("n_startup_trials", 2))
        )
        searcher = OptunaSearch(sampler=sampler)  # metric/mode come from TuneConfig
        return {"num_samples": self.trials, "search_alg": searcher}


@register
class PBTMethod(_ValueSearch):
    """Population Based Training over the values: exploit weights, explore values."""

    search = "pbt"
    keys = _ValueSearch.keys | {
        "perturbation_interval",
        "quantile_fraction",
        "resample_probability",
        "synch",
    }
    per_seed = True

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        fld = f"methods.{name}"
        interval = entry.get("perturbation_interval", 5)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(
                f"{fld}.perturbation_interval", f"must be an integer >= 1, got {interval!r}"
            )
        for key in ("quantile_fraction", "resample_probability"):
            if key in entry:
                val = entry[key]
                if isinstance(val, bool) or not isinstance(val, int | float) or not 0 <= val <= 1:
                    raise ConfigError(f"{fld}.{key}", f"must be in [0, 1], got {val!r}")
        if entry.get("quantile_fraction", 0.25) > 0.5:
            raise ConfigError(f"{fld}.quantile_fraction", "must be <= 0.5")
        if trials < 2:
            raise ConfigError(
                "budget.trials", f"{cls.search} needs a population >= 2, got {trials}"
            )

    def values_space(self, seed: int) -> dict[str, Any]:
        return self._domains()

    def scheduler(self, seed: int, metric: str) -> Any:
        from raytune_periodic.tuning.pbt_sync import SyncSafePBT

        return SyncSafePBT(
            time_attr="training_iteration",  # metric/mode come from TuneConfig
            perturbation_interval=int(self.entry.get("perturbation_interval", 5)),
            hyperparam_mutations={"values": self._domains()},
            quantile_fraction=float(self.entry.get("quantile_fraction", 0.25)),
            resample_probability=float(self.entry.get("resample_probability", 0.25)),
            # synchronous by default: every trial then runs exactly budget.periods periods
            # (async PBT can clone a donor's older checkpoint and re-run periods)
            synch=bool(self.entry.get("synch", True)),
        )

    def tune_config(self, seed: int, metric: str) -> dict[str, Any]:
        return {"num_samples": self.trials, "scheduler": self.scheduler(seed, metric)}


@register
class PB2Method(PBTMethod):
    """PB2 (GP-bandit explore; Ray's PB2 fits its Gaussian process with scikit-learn)."""

    search = "pb2"

    def scheduler(self, seed: int, metric: str) -> Any:
        from raytune_periodic.tuning.pbt_sync import SyncSafePB2

        bounds = {
            group: list(_space_entry(value, "", None, group)[:2])
            for group, value in self.entry["space"].items()
        }
        return SyncSafePB2(
            time_attr="training_iteration",  # metric/mode come from TuneConfig
            perturbation_interval=int(self.entry.get("perturbation_interval", 5)),
            hyperparam_bounds={"values": bounds},
            synch=bool(self.entry.get("synch", True)),
            quantile_fraction=float(self.entry.get("quantile_fraction", 0.25)),
        )


def method_search(name: str, entry: Mapping[str, Any]) -> str:
    """The search kind of an entry: explicit ``search``, else ``controller`` if one is given."""
    search = entry.get("search")
    if search is None:
        if "controller" not in entry:
            raise ConfigError(f"methods.{name}", "needs a 'controller' or a 'search'")
        return "controller"
    return search


def check_method(
    name: str,
    entry: Mapping[str, Any],
    trials: int,
    periods: int,
    bounds: Mapping[str, tuple[float, float]] | None,
) -> None:
    """Validate one method entry (no Ray import)."""
    search = method_search(name, entry)
    cls = METHODS.get(search, field=f"methods.{name}.search")
    cls.check(name, entry, trials, periods, bounds)


def build_method(name: str, entry: Mapping[str, Any], trials: int) -> SearchMethod:
    return METHODS.get(method_search(name, entry), field=f"methods.{name}.search")(
        name, entry, trials
    )


from raytune_periodic.tuning import surrogate_method as _surrogate_method  # noqa: E402,F401  (registers surrogate searches)
