"""Synchronous PBT / PB2 that cannot deadlock at a barrier nobody else will reach.

Ray Tune 2.60's synchronous PBT pauses every trial that reaches the next perturbation time
(``_next_perturbation_sync``) until all live trials have reached it, and
``choose_trial_to_run`` only resumes paused trials that are *behind* that time. If the trials
it waits for end without reporting there (one finished early because an exploit gave it a
donor checkpoint that was further along, or it errored), the paused trials wait forever:
``No trial is running and no new trial has been started within the last 60 seconds``, and the
experiment never ends. We saw exactly this in CI (a PBT trial PAUSED at iteration 4, the other
TERMINATED at 6) — see docs/ARCHITECTURE.md, "PBT".

The fix is the smallest one that keeps Ray's semantics: when no trial is running and every
unfinished trial is waiting at or past the barrier, move the barrier to one perturbation
interval past the earliest waiting trial, so that trial runs and the population re-synchronises
at the next barrier (where the usual exploit/explore happens).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

_log = logging.getLogger(__name__)


class _BarrierRelease:
    """Mixin for ``PopulationBasedTraining`` subclasses (synchronous mode only)."""

    _synch: bool
    _next_perturbation_sync: float
    _perturbation_interval: float
    _trial_state: dict[Trial, Any]

    #: how many times the barrier was moved (debug_string and tests)
    barrier_releases: int = 0

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trial = super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        if trial is not None or not self._synch:
            return trial
        trials = tune_controller.get_trials()
        if any(t.status == Trial.RUNNING for t in trials):
            return None  # a running trial will reach the barrier and release the others
        waiting = [t for t in trials if t.status in (Trial.PENDING, Trial.PAUSED)]
        if not waiting:
            return None
        earliest = min(self._trial_state[t].last_train_time for t in waiting)
        new_sync = max(self._next_perturbation_sync, earliest + self._perturbation_interval)
        _log.warning(
            "synchronous PBT: every unfinished trial waits at iteration >= %s for trials that "
            "ended; moving the next perturbation to %s",
            self._next_perturbation_sync,
            new_sync,
        )
        self._next_perturbation_sync = new_sync
        self.barrier_releases += 1
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]


class SyncSafePBT(_BarrierRelease, PopulationBasedTraining):
    """``PopulationBasedTraining`` whose synchronous mode releases an orphaned barrier."""


class SyncSafePB2(_BarrierRelease, PB2):
    """``PB2`` whose synchronous mode releases an orphaned barrier."""
