"""``pbt`` / ``pb2``: a population of ``trials`` per seed whose values are mutated every
``perturbation_interval`` periods, weights exploited from the better members.

PBT's time attribute is the trial's period count (``rp_periods``), not Tune's iteration (which
holds a varying number of periods with ``iteration_periods: auto``), and every trial gets
``rp.align`` = the interval, so no iteration crosses a perturbation boundary. A trial keeps the
checkpoints an exploit can still need (``checkpoint_keep``), not all of them.

Synchronous by default (every member runs exactly ``budget.periods`` periods; async PBT can clone
a donor's older checkpoint and re-run periods), with the deadlock guards of ``pbt_sync.py``.
Ray's PBT multiplies values by 0.8/1.2 without clipping: ``clip_explore``, passed to the
scheduler at construction, keeps them inside the method's space.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from raytune_periodic.protocol.trial_results import PERIODS
from raytune_periodic.tuning.methods.values import ValueSearch
from raytune_periodic.validation import boolean, fraction, integer


def clip_explore(
    config: dict[str, Any], bounds: Mapping[str, tuple[float, float]]
) -> dict[str, Any]:
    """PBT explore hook: keep perturbed values inside their search ranges."""
    values = config.get("values", {})
    for group, (low, high) in bounds.items():
        if group in values:
            values[group] = min(max(float(values[group]), low), high)
    return config


def make_clip_explore(bounds: Mapping[str, tuple[float, float]]) -> Any:
    return functools.partial(clip_explore, bounds=dict(bounds))


class PBTMethod(ValueSearch):
    """Population Based Training over the values: exploit weights, explore values."""

    search = "pbt"
    keys = ValueSearch.keys | {
        "perturbation_interval",
        "quantile_fraction",
        "resample_probability",
        "synch",
    }
    per_seed = True
    min_trials = 2  #: a population

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        fld = f"methods.{name}"
        integer(entry.get("perturbation_interval", 5), f"{fld}.perturbation_interval", 1)
        for key in ("quantile_fraction", "resample_probability"):
            if key in entry:
                fraction(entry[key], f"{fld}.{key}")
        if entry.get("quantile_fraction", 0.25) > 0.5:
            from raytune_periodic.errors import ConfigError

            raise ConfigError(f"{fld}.quantile_fraction", "must be <= 0.5")
        if "synch" in entry:
            boolean(entry["synch"], f"{fld}.synch")

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        entry["perturbation_interval"] = 1

    def _common(self) -> dict[str, Any]:
        return {
            "time_attr": PERIODS,  # metric/mode come from TuneConfig
            "perturbation_interval": self.interval,
            "quantile_fraction": float(self.entry.get("quantile_fraction", 0.25)),
            "synch": bool(self.entry.get("synch", True)),
            "custom_explore_fn": make_clip_explore(
                {g: (low, high) for g, (low, high, _) in self.ranges().items()}
            ),
        }

    def scheduler(self) -> Any:
        from raytune_periodic.tuning.pbt_sync import SyncSafePBT

        return SyncSafePBT(
            hyperparam_mutations={"values": self._domains()},
            resample_probability=float(self.entry.get("resample_probability", 0.25)),
            **self._common(),
        )

    @property
    def interval(self) -> int:
        """The perturbation interval, in periods."""
        return int(self.entry.get("perturbation_interval", 5))

    def extra_rp(self) -> dict[str, Any]:
        return {"align": self.interval}  # iterations end on perturbation boundaries

    def tune_config(self, seed: int) -> dict[str, Any]:
        from raytune_periodic.tuning.pbt_sync import KeepPausedActors

        scheduler = self.scheduler()
        return {
            "num_samples": self.trials,
            "scheduler": scheduler,
            "search_alg": KeepPausedActors(scheduler),
        }

    def checkpoint_keep(self, checkpoint_every: int = 0) -> int | None:
        """What an exploit can still need. A donor's exploited checkpoint is its save at a
        perturbation; before the clone restores it, the donor saves at most every checkpoint
        of one interval (``ceil(interval / checkpoint_every)``, one per iteration at most)
        plus its pause at the next barrier (synchronous PBT waits there for the clone);
        one more for its end-of-trial save."""
        periodic = -(-self.interval // checkpoint_every) if checkpoint_every > 0 else 0
        return periodic + 3


class PB2Method(PBTMethod):
    """PB2 (GP-bandit explore; Ray's PB2 fits its Gaussian process with scikit-learn)."""

    search = "pb2"

    def scheduler(self) -> Any:
        from raytune_periodic.tuning.pbt_sync import SyncSafePB2

        bounds = {g: [low, high] for g, (low, high, _) in self.ranges().items()}
        return SyncSafePB2(hyperparam_bounds={"values": bounds}, **self._common())
