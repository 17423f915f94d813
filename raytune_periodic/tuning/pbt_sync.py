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

When the whole population runs at once (no member pending or paused: a population that fits the
cluster; not the quickstart's 4 members on 2 CPUs), even that round trip goes
(``_HoldAtBarrier``): a member that reaches the barrier first waits in its running actor (Tune
gets ``NOOP`` and schedules no ``train``; nothing is saved, stopped or restored), and when the
last member arrives, PBT's own ``_checkpoint_or_exploit`` runs as in Ray, except that the
exploit of a running trial is not a pause: the clone's actor gets ``rp_exploit(donor checkpoint,
explored config)`` (the trainable's ``restore`` + ``reset_config``, in the actor's task order
before its next ``train``), so an exploit costs the checkpoint load. Tune's records stay Ray's:
the trial's config, tag, policy log and latest checkpoint (the donor's, for crash recovery) are
set by Ray's ``_exploit``. Held trials are resumed by scheduling their ``train`` (after a
donor's save completes, through Tune's cached-decision path), released when the members they
wait for end, and turned into ordinary pauses when a member needs resources they may keep from
it: a member pending or paused without an actor placed on acquired resources. Tune *requests*
actors for pending trials whether or not resources are free (4 members on 2 CPUs: two requests
wait for the CPUs the two held members keep), so only an actor the resource manager has started
counts; such a member, still booting (the search's first barrier can come before every worker is
up; a member restarted after a crash), is waited for. This uses the controller's
``_schedule_trial_task``, ``_schedule_trial_train``, ``_cached_trial_decisions``,
``_trial_to_actor`` and ``_actor_manager`` of the pinned Ray 2.60;
``tests/tuning/test_pbt_sync.py`` runs it on a real Tune search, so a Ray upgrade that changes
them fails there.

Two more guards against a hang seen after a crash: a trial Tune retries after a failure keeps
its PBT state (``_KeepStateOnRetry``; Ray's restarts it at time 0, so the restored member
perturbed the population at period 3 of an interval of 2 and moved the barrier to 6), and if
every live member waits below a barrier none of them would reach (both members held at 5), the
last arrival perturbs them where they are (``_HoldAtBarrier._perturb_now``).
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


class _KeepStateOnRetry:
    """Mixin: Tune re-adds a trial it retries after a failure (``on_trial_add``), and
    ``PopulationBasedTraining`` then starts that trial's state afresh, as if it had last been
    perturbed at time 0. The restored trial then perturbs the whole synchronous population at
    its next result, off the interval's grid (seen: a perturbation at period 3 of an interval of
    2, after which both members waited at period 5 for a barrier at 6). A retried trial keeps
    its state and resumes its own schedule."""

    _trial_state: dict[Trial, Any]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        state = self._trial_state.get(trial)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
        if state is not None:
            self._trial_state[trial] = state


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
        in_actor = isinstance(tune_controller, _InActorExploits)
        if trial.status != Trial.PAUSED and not in_actor:  # asynchronous mode pauses it here
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


#: the trainable method that restores a donor inside the running actor (``PeriodTrainable``)
IN_ACTOR_EXPLOIT = "rp_exploit"


def _controller(tune_controller: Any) -> Any:
    """Tune's controller behind the wrapper schedulers are given."""
    return getattr(tune_controller, "_tune_controller", tune_controller)


def _holds_resources(controller: Any, trial: Trial) -> bool:
    """Running, or pending with its actor created on acquired resources (still booting). An
    actor only *requested* (Tune requests them for pending trials whatever is free) does not
    count: it may wait for resources a held member keeps."""
    if trial.status == Trial.RUNNING:
        return True
    if trial.status != Trial.PENDING:
        return False
    tracked = getattr(controller, "_trial_to_actor", {}).get(trial)
    manager = getattr(controller, "_actor_manager", None)
    return tracked is not None and manager is not None and manager.is_actor_started(tracked)


class _InActorExploits:
    """The controller PBT sees in a perturbation while the population is held: pausing a
    running trial with ``should_checkpoint=False`` (what ``_exploit`` does) is recorded, and the
    exploit is then done inside the trial's actor. Everything else goes to Tune."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.recorded: list[Trial] = []

    def pause_trial(self, trial: Trial, should_checkpoint: bool = True) -> Any:
        if trial.status == Trial.RUNNING and not should_checkpoint:
            self.recorded.append(trial)
            return None
        return self._wrapped.pause_trial(trial, should_checkpoint=should_checkpoint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class _HoldAtBarrier:
    """Mixin (synchronous mode): members wait at the barrier in their running actors and are
    exploited there, while the whole population runs at once (see the module doc)."""

    _synch: bool
    _next_perturbation_sync: float
    _perturbation_interval: float
    _trial_state: dict[Trial, Any]
    barrier_releases: int

    @property
    def _held(self) -> dict[str, Trial]:
        return self.__dict__.setdefault("_held_trials", {})

    def _may_hold(self, tune_controller: Any) -> bool:
        """Every member that has not ended holds its resources (running, or pending with its
        actor already placed) and can be exploited in its actor: then waiting in the actor
        starves nobody. A member yet to be created, waiting for resources or paused: pause as
        Ray does."""
        search = getattr(tune_controller, "search_alg", None)
        if search is not None and not search.is_finished():
            return False
        controller = _controller(tune_controller)
        live = [t for t in tune_controller.get_trials() if not t.is_finished()]
        return all(
            _holds_resources(controller, t) and hasattr(t.get_trainable_cls(), IN_ACTOR_EXPLOIT)
            for t in live
        )

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if not self._synch:
            return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        hold = self._may_hold(tune_controller)
        proxy = _InActorExploits(tune_controller) if hold else tune_controller
        barrier = self._next_perturbation_sync
        decision = super().on_trial_result(proxy, trial, result)  # type: ignore[misc]
        if hold and decision == TrialScheduler.PAUSE:
            self._release(trial)  # type: ignore[attr-defined]  # not paused: no cached actor
        if self._next_perturbation_sync == barrier:  # no perturbation in this call
            if hold and decision == TrialScheduler.PAUSE:  # at the barrier, others are not
                self._held[trial.trial_id] = trial
                if all(t.trial_id in self._held for t in tune_controller.get_live_trials()):
                    return self._perturb_now(tune_controller, trial, result)
                return TrialScheduler.NOOP
            return decision
        controller = _controller(tune_controller)
        for clone in getattr(proxy, "recorded", []):
            self._exploit_in_actor(controller, clone)
        self._resume_held(controller, skip=trial)
        if hold and decision == TrialScheduler.PAUSE and trial.status == Trial.RUNNING:
            return TrialScheduler.CONTINUE  # after its save, if PBT asked one (a donor)
        return decision

    def _perturb_now(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        """Every live member waits in its actor for a barrier none of them has reached (one
        set off the interval's grid): none would ever arrive. The barrier is where they are,
        and this last arrival perturbs the population now."""
        del self._held[trial.trial_id]
        live = tune_controller.get_live_trials()
        barrier = min(self._trial_state[t].last_train_time for t in live)
        _log.warning(
            "synchronous PBT: every member waits below the barrier %s; perturbing at %s",
            self._next_perturbation_sync,
            barrier,
        )
        self._next_perturbation_sync = barrier
        self.barrier_releases += 1
        return self.on_trial_result(tune_controller, trial, result)

    def _exploit_in_actor(self, controller: Any, trial: Trial) -> None:
        # Ray's _exploit has set the trial's config and its latest checkpoint to the donor's
        donor = trial.latest_checkpoint_result
        controller._schedule_trial_task(
            trial,
            IN_ACTOR_EXPLOIT,
            args=(donor, trial.config),
            on_error=controller._trial_task_failure,
        )

    def _resume_held(self, controller: Any, skip: Trial | None = None) -> None:
        held, self.__dict__["_held_trials"] = self._held, {}
        for trial in held.values():
            if trial is skip or trial.status != Trial.RUNNING:
                continue  # paused by Ray's own path meanwhile: Tune resumes it
            if trial.temporary_state.saving_to is not None:  # a donor: train after the save
                controller._cached_trial_decisions[trial.trial_id] = TrialScheduler.CONTINUE
            else:
                controller._schedule_trial_train(trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self._held and self._must_pause_held(tune_controller):
            for trial in self._held.values():
                if trial.status == Trial.RUNNING:
                    self._reserve(tune_controller, trial)  # type: ignore[attr-defined]
                    tune_controller.pause_trial(trial, should_checkpoint=True)
            self.__dict__["_held_trials"] = {}
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]

    def _must_pause_held(self, tune_controller: Any) -> bool:
        """A member needs resources the held ones may keep from it: pending or paused without
        an actor placed on acquired resources."""
        controller = _controller(tune_controller)
        return any(
            t.status in (Trial.PENDING, Trial.PAUSED) and not _holds_resources(controller, t)
            for t in tune_controller.get_trials()
        )

    def _forget(self, tune_controller: Any, trial: Trial, retried: bool = False) -> None:
        self._held.pop(trial.trial_id, None)
        if not self._held or retried:  # Tune restarts it: it will reach the barrier
            return
        others = [
            t
            for t in tune_controller.get_live_trials()
            if t is not trial and t.trial_id not in self._held
        ]
        if others:
            return  # they will reach the barrier (or choose_trial_to_run pauses the held)
        earliest = min(self._trial_state[t].last_train_time for t in self._held.values())
        self._next_perturbation_sync = max(
            self._next_perturbation_sync, earliest + self._perturbation_interval
        )
        self.barrier_releases += 1
        _log.warning(
            "synchronous PBT: the members held at the barrier wait for trials that ended; "
            "moving the next perturbation to %s",
            self._next_perturbation_sync,
        )
        self._resume_held(_controller(tune_controller), skip=trial)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]
        self._forget(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]
        # Tune calls this also for a failure it retries (then the trial turns pending)
        self._forget(tune_controller, trial, retried=trial.should_recover())

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_remove(tune_controller, trial)  # type: ignore[misc]
        self._forget(tune_controller, trial)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state["_held_trials"] = {}  # a restored run restarts every trial from its checkpoint
        return state


class SyncSafePBT(
    _HoldAtBarrier, _KeepPausedActors, _KeepStateOnRetry, _BarrierRelease, PopulationBasedTraining
):
    """``PopulationBasedTraining``: orphaned barriers released, paused trials keep their actor,
    a population that runs at once waits and is exploited in its actors."""


class SyncSafePB2(_HoldAtBarrier, _KeepPausedActors, _KeepStateOnRetry, _BarrierRelease, PB2):
    """``PB2``: the same guards and in-actor exploits as ``SyncSafePBT``."""


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
