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

Paused trials keep their worker (``_KeepPausedActors``). Tune 2.60 caches the actor of a paused
trial only while the searcher can still produce trials or some trial is staged
(``TuneController._maybe_cache_trial_actor``), and then only as many as staged trials need.
Once every trial of the population exists, neither holds, so each pause (every trial at every
synchronous barrier, and every exploit) terminated the actor and the trial later waited 2-12 s
for a new worker process (an interpreter importing torch). Here a trial PBT pauses counts as
demand for an actor of its resources until PBT chooses it to run again, and the searcher
(``KeepPausedActors``) reports "not finished" while such demand exists, so Tune caches the actor
and the trial resumes in it: reset_config + the checkpoint load.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator

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


class _KeepPausedActors:
    """Mixin: the actor of a trial PBT pauses stays cached until the trial runs again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reserved: dict[str, tuple[Any, Any]] = {}  #: trial id -> (actor cache, resources)

    @property
    def holds_paused(self) -> bool:
        """Some paused trial will need its actor again (``KeepPausedActors.is_finished``)."""
        return bool(self.__dict__.get("_reserved"))

    def _reserve(self, tune_controller: Any, trial: Trial) -> None:
        reserved = self.__dict__.setdefault("_reserved", {})
        # schedulers get a wrapper of Tune's controller; the actor cache is the controller's
        controller = getattr(tune_controller, "_tune_controller", tune_controller)
        cache = getattr(controller, "_actor_cache", None)
        if cache is None or trial.trial_id in reserved:
            return
        cache.increase_max(trial.placement_group_factory)
        reserved[trial.trial_id] = (cache, trial.placement_group_factory)

    def _release(self, trial: Trial) -> None:
        entry = self.__dict__.get("_reserved", {}).pop(trial.trial_id, None)
        if entry is not None:
            cache, resources = entry
            cache.decrease_max(resources)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        if decision == TrialScheduler.PAUSE or trial.status == Trial.PAUSED:
            self._reserve(tune_controller, trial)
        return decision

    def _exploit(self, tune_controller: Any, trial: Trial, trial_to_clone: Trial) -> None:
        if trial.status != Trial.PAUSED:  # asynchronous mode pauses it here
            self._reserve(tune_controller, trial)
        super()._exploit(tune_controller, trial, trial_to_clone)  # type: ignore[misc]

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trial = super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        if trial is not None:  # Tune stages it now and takes the cached actor
            self._release(trial)
        return trial

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._release(trial)
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._release(trial)
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._release(trial)
        super().on_trial_remove(tune_controller, trial)  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reserved"] = {}  # the actor cache belongs to the run that pickles us
        return state


class SyncSafePBT(_KeepPausedActors, _BarrierRelease, PopulationBasedTraining):
    """``PopulationBasedTraining``: orphaned barriers released, paused trials keep their actor."""


class SyncSafePB2(_KeepPausedActors, _BarrierRelease, PB2):
    """``PB2``: orphaned barriers released, paused trials keep their actor."""


class KeepPausedActors(BasicVariantGenerator):
    """Tune's default searcher, "not finished" while its scheduler holds paused trials that
    will run again (else Tune terminates their actors: see the module doc)."""

    def __init__(self, scheduler: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scheduler = scheduler

    def is_finished(self) -> bool:
        return super().is_finished() and not getattr(self.scheduler, "holds_paused", False)

    def get_state(self) -> Any:
        state = super().get_state()
        if isinstance(state, dict):
            state.pop("scheduler", None)  # saved with every experiment snapshot: keep it small
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        scheduler = self.scheduler
        super().set_state(state)
        self.scheduler = scheduler
