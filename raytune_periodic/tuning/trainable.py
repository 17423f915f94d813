"""``PeriodTrainable``: a Ray Tune class trainable wrapping the period engine.

One Tune iteration runs ``iteration_periods`` periods, or with ``auto`` (the default) as many
periods as fit in ``ITERATION_SECONDS`` (Tune's ~0.1 s round trip per iteration is then paid
once a second, not once a period). No iteration crosses a multiple of ``rp.align`` (PBT's
perturbation interval, in periods) or the budget's end; every result reports ``rp_periods``
(periods done), PBT's time attribute, and asks Tune for a checkpoint (``should_checkpoint``)
each time it passes a multiple of ``rp.checkpoint_every`` periods. Checkpoints carry the
engine's exact state plus the id of the trial that wrote them, so a restore can tell a
crash-resume (own checkpoint) from a PBT exploit (a donor's checkpoint) and report the latter
to the MLflow callback. The per-period metrics are not in the checkpoints: each save writes the
periods since the previous one as a segment beside them (``history_log.py``).
``reset_config`` applies new values in place (PBT explore with ``reuse_actors=True``) and rebuilds
the engine only when the static part of the trial changes (an actor reused for another trial);
``rp_exploit`` is PBT's exploit inside the running actor (``pbt_sync.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from ray import tune

from raytune_periodic.protocol import trial_results as R
from raytune_periodic.protocol.trial_results import (  # noqa: F401  (FAULT_ENV: re-exported)
    AGENT_DIR,
    ENGINE_FILE,
    FAULT_ENV,
    META_FILE,
)
from raytune_periodic.records import STATUS_OK
from raytune_periodic.tracking import best_weights
from raytune_periodic.training import PeriodEngine, build_engine, load_state
from raytune_periodic.training.process import prepare_process
from raytune_periodic.training.spec import trial_spec
from raytune_periodic.tuning.history_log import HistorySegments

_log = logging.getLogger(__name__)

#: ``iteration_periods: auto``: a Tune iteration runs periods until it has lasted this long
ITERATION_SECONDS = 1.0
SHOULD_CHECKPOINT = "should_checkpoint"  #: Tune's result key that asks for a checkpoint now


def _static(config: Mapping[str, Any]) -> dict[str, Any]:
    rp = dict(config["rp"])
    rp.pop("replicate", None)  # PBT clones change it; irrelevant once weights are restored
    return rp


class PeriodTrainable(tune.Trainable):
    """Trains one trial's engine; each ``step`` = ``iteration_periods`` periods."""

    engine: PeriodEngine
    engine_trial_id: str
    #: ``tuners.py``: Tune's ``checkpoint_frequency`` stays 0; the trainable asks every
    #: ``rp.checkpoint_every`` periods (an iteration holds a varying number of periods)
    checkpoints_by_period = True

    def setup(self, config: dict[str, Any]) -> None:
        prepare_process(config["rp"].get("threads", 1))
        self._build(config)

    def _build(self, config: Mapping[str, Any]) -> None:
        self.engine = build_engine(trial_spec(config))
        self.engine_trial_id = self.trial_id
        rp = config["rp"]
        batch = rp.get("iteration_periods", 1)
        self.iteration_periods: int | None = None if batch == "auto" else int(batch)
        self.align = int(rp.get("align") or 0)  # no iteration crosses a multiple (PBT)
        self.checkpoint_every = int(rp.get("checkpoint_every") or 0)
        self.saved_period = 0  # the engine's period at the last checkpoint
        self.restore_period: int | None = None  # the period Tune restores to (its result)
        self.full_val_last: float | None = None
        self.donor: tuple[str, int] | None = None
        # every period's metrics, saved in segments beside the checkpoints and re-sent after a
        # restore from an own checkpoint, so periods whose MLflow logging was lost with a
        # killed driver are delivered (the callback skips steps it already has)
        self.history = HistorySegments()
        self.replay: list[dict[str, float]] = []
        self.restored = (0.0, 0.0)  #: (wall clock, seconds) of the last checkpoint load
        self.in_actor = False  #: the pending donor came by ``rp_exploit`` (no Tune pause)

    def _apply_values(self, config: Mapping[str, Any]) -> None:
        values = config.get("values")
        if values:
            self.engine.controller.values = {k: float(v) for k, v in values.items()}

    def _maybe_inject_fault(self) -> None:
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return
        period, _, marker = spec.partition(":")
        if self.engine.period < int(period):  # the first step at or after it (auto batching)
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(self.trial_id).encode())
        os.close(fd)
        os._exit(1)  # the worker process dies as if killed

    def _run_periods(self) -> list[Any]:
        """This iteration's periods: ``iteration_periods`` of them or, with ``auto``, until
        ``ITERATION_SECONDS`` have passed; never past a multiple of ``align`` or the budget."""
        engine = self.engine
        limit = engine.options.periods - engine.period
        if self.align:
            limit = min(limit, self.align - engine.period % self.align)
        if self.iteration_periods is not None:
            return engine.run(max(1, min(limit, self.iteration_periods)))
        start = time.perf_counter()
        records = [engine.step_period()]
        while (
            len(records) < limit
            and records[-1].status == STATUS_OK
            and time.perf_counter() - start < ITERATION_SECONDS
        ):
            records.append(engine.step_period())
        return records

    def step(self) -> dict[str, Any]:
        self._maybe_inject_fault()
        best_weights.track(self)  # best-validation-epoch weights (tracking/best_weights.py)
        records = self._run_periods()
        for rec in records:
            if rec.full_val_f1 is not None:
                self.full_val_last = rec.full_val_f1
        metrics = [r.metrics() for r in records]
        self.history.add(metrics)
        last = records[-1]
        result: dict[str, Any] = dict(metrics[-1])
        finite = math.isfinite(last.val_f1)
        result[R.FULL_VAL_LAST] = self.full_val_last if self.full_val_last is not None else 0.0
        result[R.OBJECTIVE] = (
            self.full_val_last
            if self.full_val_last is not None
            else (last.val_f1 if finite else 0.0)
        )
        result[R.STATUS] = last.status
        result[R.WALL] = time.time()  # end of this step (benchmarks measure gaps between steps)
        # every period of the iteration, as JSON text (Tune loggers skip strings)
        result[R.RECORDS] = json.dumps(self.replay + metrics)
        self.replay = []
        if self.donor is not None:
            result[R.DONOR_TRIAL], result[R.DONOR_PERIOD] = self.donor
            result[R.RESTORE_START], result[R.RESTORE_SECONDS] = self.restored
            result[R.IN_ACTOR] = int(self.in_actor)
            self.donor, self.in_actor = None, False
        result[R.PERIODS] = self.engine.period
        every = self.checkpoint_every
        if self.engine.done:
            result[R.DONE] = True
        elif every and self.engine.period // every > self.saved_period // every:
            result[SHOULD_CHECKPOINT] = True
        if last.status != STATUS_OK:  # diverged: ranked by no stale or NaN score
            result.update(dict.fromkeys(R.RANKED_METRICS, R.WORST_SCORE))
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = self.engine.state_dict()
        state[R.STATE_TRIAL_ID] = self.trial_id
        state[R.STATE_FULL_VAL_LAST] = self.full_val_last
        torch.save(state, os.path.join(checkpoint_dir, ENGINE_FILE))
        best_weights.save(self, checkpoint_dir)  # best/last weights, weights-only loadable
        self.history.save(self._storage, int(state["period"]))
        self.saved_period = int(state["period"])
        meta = {"trial_id": self.trial_id, "period": int(state["period"])}
        with open(os.path.join(checkpoint_dir, META_FILE), "w") as f:
            json.dump(meta, f)
        export = getattr(self.engine.controller, "export_agent", None)
        if export is not None:  # e.g. PPO: the agent on its own, loadable for inference
            export(os.path.join(checkpoint_dir, AGENT_DIR))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        assert isinstance(checkpoint, str)
        began, start = time.time(), time.perf_counter()
        self._load_checkpoint(checkpoint)
        self.restored = (began, time.perf_counter() - start)  # reported with an exploit

    def _load_checkpoint(self, checkpoint: str) -> None:
        checkpoint = self._exploit_checkpoint(checkpoint)
        state = load_state(os.path.join(checkpoint, ENGINE_FILE))
        period = int(state["period"])
        owner = state.get(R.STATE_TRIAL_ID)
        if owner is not None and owner != self.trial_id:  # PBT exploit: keep our own periods
            self.history.save(self._storage, self.engine.period)
            self.donor = (str(owner), period - 1)
            self.replay = []
        else:  # crash-restore: re-send what MLflow may have lost (older checkpoints: inline)
            self.replay = list(
                state.get(R.STATE_HISTORY) or self.history.load(self._storage, period)
            )
        self.engine.load_state_dict(state)
        best_weights.restore(self, checkpoint)  # the trial's best weights (own checkpoint)
        self.full_val_last = state.get(R.STATE_FULL_VAL_LAST)
        self.saved_period = period
        self._apply_values(self.config)

    def restore(self, checkpoint_path: Any) -> Any:
        # the result Tune restores to (a PBT donor's, for an exploit): its period count
        metrics = getattr(checkpoint_path, "metrics", None) or {}
        self.restore_period = metrics.get(R.PERIODS)
        if self.restore_period is None and self.iteration_periods is not None:
            iteration = metrics.get("training_iteration", 0)
            self.restore_period = int(iteration) * self.iteration_periods
        return super().restore(checkpoint_path)

    def _exploit_checkpoint(self, checkpoint: str) -> str:
        """The donor checkpoint at the iteration Tune restores to (PBT exploit safeguard).

        ``restore`` takes ``restore_period`` from the donor's result (``rp_periods``) before
        calling ``load_checkpoint``; the checkpoint must hold that many periods. Ray 2.60's
        synchronous PBT was seen handing a clone the donor's *later* checkpoint (the clone then
        skipped periods and finished early). If so, take the donor's checkpoint with the right
        period from the same trial directory; if there is none, keep the given one and say so.
        """
        meta_path = os.path.join(checkpoint, META_FILE)
        expected = self.restore_period
        if not os.path.exists(meta_path) or not expected:
            return checkpoint
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["trial_id"] == self.trial_id or meta["period"] == expected:
            return checkpoint
        parent = os.path.dirname(os.path.normpath(checkpoint))
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name, META_FILE)
            if name.startswith("checkpoint_") and os.path.exists(path):
                with open(path) as f:
                    other = json.load(f)
                if other["trial_id"] == meta["trial_id"] and other["period"] == expected:
                    _log.warning(
                        "trial %s: exploit checkpoint %s holds period %d, Tune restores "
                        "period %d; using %s",
                        self.trial_id, checkpoint, meta["period"], expected, name,
                    )  # fmt: skip
                    return os.path.join(parent, name)
        _log.warning(
            "trial %s: exploit checkpoint %s holds period %d but Tune restores period %d "
            "and no donor checkpoint has that period",
            self.trial_id, checkpoint, meta["period"], expected,
        )  # fmt: skip
        return checkpoint

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # Tune has already switched ``trial_id`` when the actor is reused for another trial
        if self.trial_id != self.engine_trial_id or _static(new_config) != _static(self.config):
            self.engine.controller.close()
            self._build(new_config)
        else:
            self._apply_values(new_config)
        self.config = new_config
        return True

    def rp_exploit(self, checkpoint: Any, config: dict[str, Any]) -> None:
        """PBT's exploit inside this running actor (``tuning/pbt_sync.py``, ``_HoldAtBarrier``):
        the explored config, then the donor's checkpoint (a ``_TrainingResult``, what Tune's
        restore gets). The actor runs it before its next ``train``; the next result reports the
        donor and the load's time, as after Tune's own reset + restore."""
        self.reset_config(config)
        self.restore(checkpoint)
        self.in_actor = self.donor is not None

    def cleanup(self) -> None:
        self.engine.controller.close()
