"""``SearchMethod``: the one protocol every experiment method implements.

The runner and ``--smoke`` call only these hooks; they name no method or family. Adding a method
is one module with a subclass plus one ``METHODS`` entry (in-tree: ``methods/__init__.py``; a
plugin: an import path in YAML, ``search: "mypkg.methods:MySearch"``, or an entry point of group
``raytune_periodic.methods``).

When each hook is called:

- ``check`` / ``check_base`` (classmethods) — during config validation, before Ray starts. No Ray
  import; raise ``ConfigError`` naming the field.
- ``smoke_entry`` (classmethod) — ``--smoke`` rewrites the entry to run in seconds.
- ``__init__(name, entry, trials)`` — once per method, in the driver (validate and run).
- ``trials_per_seed`` / ``static_params`` — ``validate``'s count, the method run's MLflow params.
- ``param_space(rp, seeds)`` — the Tuner's ``param_space``: ``rp`` is the trial's static part
  (spec, seed, budget) that the runner prepared; the method adds replicates and searched values.
- ``tune_config(seed)`` — keyword arguments of ``tune.TuneConfig`` beyond metric/mode: samples,
  searcher, scheduler (built here, explore clipping included).
- ``checkpoint_keep()`` / ``reporter_columns()`` / ``trainable(resources)`` — the Tuner's
  checkpoint retention, progress columns, and the Tune trainable with its resources.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import known_keys


def space_entry(
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
        low, high, log = value["low"], value["high"], value.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{fld}.log", f"expected true or false, got {log!r}")
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
    """Base class: one method of an experiment, run once per seed (see the module doc).

    ``per_seed``: the runner builds one Tuner per seed (searchers and schedulers whose state
    must not mix seeds) instead of one Tuner with a grid over the seeds. ``min_trials``: the
    smallest ``budget.trials`` the method can run (``--smoke`` uses it). ``runs_engine``: the
    trials run the period engine, so ``base.train`` and ``tune.metric`` checks apply.
    """

    search: ClassVar[str] = ""
    keys: ClassVar[set[str]] = set()
    per_seed: ClassVar[bool] = False
    min_trials: ClassVar[int] = 1
    runs_engine: ClassVar[bool] = True  #: trials run the period engine (``train`` applies)

    def __init__(self, name: str, entry: Mapping[str, Any], trials: int) -> None:
        self.name = name
        self.entry = dict(entry)
        self.trials = trials

    # ------------------------------------------------------------------ validation (no Ray)
    @classmethod
    def check(
        cls,
        name: str,
        entry: Mapping[str, Any],
        trials: int,
        periods: int,
        bounds: Mapping[str, tuple[float, float]] | None,
    ) -> None:
        """Validate the entry; ``bounds``: the regularizer groups' valid ranges (None: no data)."""
        known_keys(entry, cls.keys | {"search", "base"}, f"methods.{name}")
        if trials < cls.min_trials:
            msg = f"{cls.search} needs budget.trials >= {cls.min_trials}, got {trials}"
            raise ConfigError("budget.trials", msg)

    @classmethod
    def check_base(
        cls,
        name: str,
        entry: Mapping[str, Any],
        base: Mapping[str, Any],
        input_shape: tuple[int, ...] | None,
    ) -> None:
        """Checks needing the method's run spec and the data's input shape (None: no data)."""

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        """Shrink the entry in place so that a ``--smoke`` run takes seconds."""

    # ------------------------------------------------------------------ the Tuner's pieces
    def controller(self) -> dict[str, Any]:
        """The in-trial controller spec (value searches: ``constant`` fed by the trial config)."""
        return {"type": "constant"}

    def replicates(self) -> int | None:
        """Trials per seed that differ only in initialisation (a grid over ``rp.replicate``)."""
        return None

    def values_space(self, seed: int) -> dict[str, Any] | None:
        """Tune domains of the searched values (``config["values"]``), or None."""
        return None

    def extra_rp(self) -> dict[str, Any]:
        """Method-specific entries added to every trial's ``config["rp"]``."""
        return {}

    def param_space(self, rp: Mapping[str, Any], seeds: list[int]) -> dict[str, Any]:
        """The Tuner's ``param_space``: ``{"rp": ..., "values": ...}``."""
        from ray import tune

        trial_rp = {**rp, **self.extra_rp()}
        trial_rp["seed"] = seeds[0] if len(seeds) == 1 else tune.grid_search(list(seeds))
        reps = self.replicates()
        if reps is not None:
            trial_rp["replicate"] = tune.grid_search(list(range(reps)))
        space: dict[str, Any] = {"rp": trial_rp}
        values = self.values_space(seeds[0])
        if values is not None:
            space["values"] = values
        return space

    def tune_config(self, seed: int) -> dict[str, Any]:
        """Keyword arguments for ``tune.TuneConfig`` beyond metric/mode."""
        return {"num_samples": 1}

    def checkpoint_keep(self, checkpoint_every: int = 0) -> int | None:
        """``CheckpointConfig.num_to_keep`` (``checkpoint_every``: ``tune.checkpoint_every``)."""
        return 2

    def searched_groups(self) -> list[str]:
        """The regularizer groups this method searches (progress columns)."""
        return []

    def reporter_columns(self, seeds: list[int]) -> dict[str, str]:
        """Progress-table parameter columns: config path → header."""
        cols = {"rp/seed": "seed"} if len(seeds) > 1 else {}
        if self.replicates() is not None:
            cols["rp/replicate"] = "replicate"
        cols.update({f"values/{g}": g for g in self.searched_groups()})
        return cols

    def trials_per_seed(self) -> int:
        """How many trials this method runs per seed (``validate`` prints the total)."""
        return self.trials

    def static_params(self) -> dict[str, Any]:
        """Method options logged once as MLflow params of the method run."""
        return dict(self.entry)

    def resource_demand(self, resources: Mapping[str, float]) -> dict[str, float]:
        """Resources one trial reserves beyond Tune's usual check (``{"CPU": n, "GPU": g}``);
        the runner refuses a method whose one trial needs more than the cluster has, before
        Ray starts on a laptop. Empty: nothing to check."""
        return {}

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
