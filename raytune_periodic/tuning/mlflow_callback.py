"""Driver-side Tune callback that writes every trial's every period into MLflow.

Why not Ray's ``MLflowLoggerCallback``: it re-logs params (which MLflow forbids once PBT changes a
value) and makes one call per metric. Here, values are step metrics, static config is logged once
when the trial's run is created, and each period is one ``log_batch``.

Step bookkeeping (exactly once): a trial's MLflow step is its own timeline, ``step = period +
offset``. Before any exploit ``offset = 0``. A result that says it restored a donor's checkpoint
(PBT exploit) moves the offset so the trial's history continues at ``last_step + 1``; a result
whose step was already logged (a crash resumed from an older checkpoint re-runs those periods,
bit-identically) is skipped. On a driver restart the callback re-attaches to the run and reads
``last_step`` and the last ``period`` back from MLflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from raytune_periodic.protocol import trial_results as R
from raytune_periodic.protocol.mlflow_layout import (
    PARAM_METHOD,
    PARAM_SEARCH,
    PARAM_SEED,
    STATUS_ERROR,
    STATUS_RUNNING,
    TAG_CHECKPOINT_PATH,
    TAG_CONTROLLER,
    TAG_DATASET,
    TAG_MODEL,
    TAG_REPLICATE,
    TAG_SEARCH,
    TAG_SEED,
    TAG_STATUS,
)
from raytune_periodic.protocol.trial_results import AGENT_DIR
from raytune_periodic.records import STATUS_DIVERGED, STATUS_OK
from raytune_periodic.training.spec import trial_spec


@dataclass
class _TrialLog:
    run_id: str
    last_step: int = -1
    offset: int = 0
    status: str = STATUS_OK
    records: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False
    #: the last exploit recorded: (donor trial id, donor period, step of its first period)
    exploit: tuple[str, int, int] | None = None
    #: the trial restarted (Tune retried it, or this driver re-attached to its run) and has
    #: not reported since
    restarted: bool = False


class MlflowCallback(Callback):
    """Logs the trials of one method's Tuner under that method's MLflow run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        invocation_id: str,
        method_run_id: str,
        method: str,
        search: str,
        new_invocation: bool = False,
    ) -> None:
        """``new_invocation``: the invocation began in this process (not ``--resume``), so no
        trial run can exist yet: trial starts create runs without searching MLflow."""
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.invocation_id = invocation_id
        self.method_run_id = method_run_id
        self.method = method
        self.search = search
        self.new_invocation = new_invocation
        self._store: Any = None
        self._trials: dict[str, _TrialLog] = {}
        self._children: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_trials"] = {}
        state["_children"] = None
        state["new_invocation"] = False  # restored (Tuner.restore): re-attach to existing runs
        return state

    @property
    def store(self) -> Any:
        if self._store is None:
            from raytune_periodic.tracking import MlflowStore

            self._store = MlflowStore(
                self.tracking_uri, self.experiment, new_invocation=self.new_invocation
            )
        return self._store

    # ------------------------------------------------------------------ trial runs
    def _trial(self, trial: Any) -> _TrialLog:
        return self._open(trial.trial_id, trial.config)

    def _open(self, trial_id: str, config: Any) -> _TrialLog:
        """The trial run of ``trial_id`` (created, or re-attached with its logged history)."""
        log = self._trials.get(trial_id)
        if log is not None:
            return log
        rp = config["rp"]
        if rp.get("log_models", "selected") != "none":
            from raytune_periodic.tracking.models import warm_up_in_background

            warm_up_in_background()  # the first model export's imports, overlapped (#16)
        spec = trial_spec(config)
        static = {k: v for k, v in spec.items() if k != "controller" or not config.get("values")}
        params = {
            **static,
            PARAM_METHOD: self.method,
            PARAM_SEARCH: self.search,
            PARAM_SEED: rp["seed"],
        }
        tags = {
            TAG_CONTROLLER: str(spec["controller"].get("type", "constant")),
            TAG_SEARCH: self.search,
            TAG_DATASET: str(spec["dataset"]["name"]),
            TAG_MODEL: str(spec["model"]["name"]),
            TAG_SEED: str(rp["seed"]),
            TAG_REPLICATE: str(rp.get("replicate", 0)),
        }
        run_id = self.store.start_trial(
            self.method_run_id, self.invocation_id, self.method, trial_id, params, tags
        )
        log = _TrialLog(run_id=run_id)
        history = self.store.history_records(run_id)
        if history:
            log.records = history
            log.last_step = int(history[-1]["step"])
            log.offset = log.last_step - int(history[-1]["period"])
            log.restarted = True
            if any("exploited" in rec for rec in history):
                log.exploit = self.store.last_exploit(run_id)
        self._trials[trial_id] = log
        return log

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not is_shared(trial):  # a shared agent's children are opened with their results
            self._trial(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if is_shared(trial):
            self.children.on_result(trial, result)
            return
        self._log_records(self._trial(trial), result)

    def _log_records(self, log: _TrialLog, result: dict) -> None:
        records = json.loads(result.get(R.RECORDS) or "[]")
        donor = result.get(R.DONOR_TRIAL)
        for i, rec in enumerate(records):
            period = int(rec["period"])
            if donor is not None and i == 0:
                self._exploited(log, str(donor), int(result[R.DONOR_PERIOD]), period)
            step = period + log.offset
            if step <= log.last_step:
                continue  # already logged before a crash-restore re-ran this period
            self.store.log_step(log.run_id, step, rec)
            log.last_step = step
            log.records.append({**rec, "step": float(step)})
        log.restarted = False
        if result.get(R.STATUS) == STATUS_DIVERGED:
            log.status = STATUS_DIVERGED

    def _exploited(self, log: _TrialLog, donor: str, donor_period: int, period: int) -> None:
        """A result that starts from a donor's checkpoint (its first period ``period``): a new
        exploit (steps go on after the last one; an ``exploited`` event) or, first thing after
        a restart, the trial re-running from the exploit it last recorded — Tune restores a
        trial to its latest checkpoint, which stays the donor's until the trial saves its own.
        Then its periods keep that exploit's steps, so those already logged are skipped as
        after any crash-restore, and no second event is logged."""
        if log.restarted and log.exploit is not None and log.exploit[:2] == (donor, donor_period):
            log.offset = log.exploit[2] - period
            return
        step = log.last_step + 1
        log.offset = step - period
        self.store.log_exploit(log.run_id, step, donor, donor_period)
        log.exploit = (donor, donor_period, step)

    @property
    def children(self) -> Any:
        """The ``ppo_shared`` side: child trial runs and the agent's series (built lazily)."""
        if self._children is None:
            from raytune_periodic.tuning.shared_logging import SharedAgentLogging

            self._children = SharedAgentLogging(self)
        return self._children

    def _finish(self, trial: Any, status: str) -> None:
        if is_shared(trial):
            self.children.finish(trial, status)
            return
        log = self._trial(trial)
        if log.finished:
            return
        final = log.status if status == STATUS_OK else status
        checkpoint = getattr(getattr(trial, "checkpoint", None), "path", None)
        if checkpoint is not None:  # informational: reports read the models from MLflow
            self.store.set_tag(log.run_id, TAG_CHECKPOINT_PATH, str(checkpoint))
        self._log_agent(trial, log.run_id)
        from raytune_periodic.tracking.models import log_trial_models  # spec + weights (#16)

        rp = trial.config["rp"]
        log_trial_models(
            self.store, log.run_id, getattr(trial, "checkpoint", None), trial_spec(trial.config),
            mode=rp.get("log_models", "selected"), seed=rp["seed"], records=log.records,
            status=final,
        )  # fmt: skip
        self.store.finish_trial(log.run_id, log.records, final)
        log.finished = True

    def _log_agent(self, trial: Any, run_id: str) -> None:
        """A learning controller's exported agent (last checkpoint) becomes an artifact."""
        checkpoint = getattr(trial, "checkpoint", None)
        path = getattr(checkpoint, "path", None)
        if path is None:
            return
        agent = os.path.join(path, AGENT_DIR)
        if os.path.isdir(agent):
            self.store.flush(strict=False)
            self.store.log_artifacts_dir(run_id, agent, AGENT_DIR)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed trial Tune retries from its latest checkpoint (see ``_exploited``)."""
        if not is_shared(trial) and trial.trial_id in self._trials:
            self._trials[trial.trial_id].restarted = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, STATUS_OK)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, STATUS_ERROR)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Also complete trial runs whose Tune trial finished in an earlier driver that died
        before their end reached MLflow (``--resume`` restores them as finished)."""
        for trial in trials:
            if is_shared(trial):
                finished = self.children.finished(trial)
            else:
                done = self._trials.get(trial.trial_id)
                finished = done is not None and done.finished
            if trial.status in ("TERMINATED", "ERROR") and not finished:
                self._complete_from_tune(trial)
        if self._store is not None:
            self._store.flush()

    def _complete_from_tune(self, trial: Any) -> None:
        """Replay the trial's results from Tune's ``result.json`` (steps already in MLflow are
        skipped) and finish its run, unless MLflow already has its end."""
        if is_shared(trial):
            for result in _tune_results(getattr(trial, "local_path", None)):
                self.on_trial_result(0, [], trial, result)
            self._finish(trial, STATUS_OK if trial.status == "TERMINATED" else STATUS_ERROR)
            return
        log = self._trial(trial)
        if self._run_status(log.run_id) not in (None, STATUS_RUNNING):
            log.finished = True
            return
        for result in _tune_results(getattr(trial, "local_path", None)):
            self.on_trial_result(0, [], trial, result)
        self._finish(trial, STATUS_OK if trial.status == "TERMINATED" else STATUS_ERROR)

    def _run_status(self, run_id: str) -> str | None:
        """The run's ``rp.status`` tag (None when it cannot be read, e.g. during an outage)."""
        try:
            self.store.flush(strict=False)
            return self.store.client.get_run(run_id).data.tags.get(TAG_STATUS)
        except Exception:  # noqa: BLE001 - unreadable now: treat as unknown, finish it
            return None


def is_shared(trial: Any) -> bool:
    """A ``ppo_shared`` trial: an agent and its children, each child a trial run."""
    return "shared" in trial.config.get("rp", {})


def _tune_results(trial_dir: str | None) -> list[dict[str, Any]]:
    """The results Tune wrote for a trial (``result.json``, one JSON object a line; a torn last
    line, from a killed driver, is skipped)."""
    if not trial_dir or not os.path.isfile(os.path.join(trial_dir, "result.json")):
        return []
    out = []
    with open(os.path.join(trial_dir, "result.json")) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
