"""The MLflow side of ``ppo_shared``: every child a trial run, the agent a series and an artifact.

A shared trial's results carry ``rp_children`` (each child's periods) and ``rp_agent`` (the
agent's updates) — ``tuning/shared_trainable.py``. Here each child ``k`` of Tune trial ``t``
becomes the trial run ``t-c<k>`` (seed, replicate ``k``, params and summary exactly like another
method's trial; steps de-duplicated the same way, so a crash-restore's replays are skipped), the
agent's updates become step metrics ``agent/seed<s>/<stat>`` (step = update count) of the
method run, and at the end the agent's last checkpoint is logged as the method run's artifact
``agent/seed<s>``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from raytune_periodic.protocol import trial_results as R
from raytune_periodic.protocol.mlflow_layout import (
    AGENT_ARTIFACT,
    STATUS_ERROR,
    TAG_CHECKPOINT_PATH,
)
from raytune_periodic.records import STATUS_DIVERGED, STATUS_OK


def child_id(trial_id: str, k: int) -> str:
    return f"{trial_id}-c{k}"


def child_spec(config: dict[str, Any], k: int) -> dict[str, Any]:
    """Child ``k``'s run spec (initialised as replicate ``k``)."""
    from raytune_periodic.training.spec import trial_spec

    return trial_spec({**config, "rp": {**config["rp"], "replicate": k}})


class SharedAgentLogging:
    """Child trial runs and agent series of the shared trials of one method's Tuner."""

    def __init__(self, callback: Any) -> None:
        self.cb = callback
        self.status: dict[str, str] = {}  #: child trial id → ok | diverged
        self.count: dict[str, int] = {}  #: Tune trial id → children
        self.agent_last: dict[str, int] = {}  #: series prefix → last logged update
        self.done: set[str] = set()  #: Tune trials whose children are finished

    @property
    def store(self) -> Any:
        return self.cb.store

    def _child_log(self, trial: Any, k: int) -> Any:
        config = {**trial.config, "rp": {**trial.config["rp"], "replicate": k}}
        return self.cb._open(child_id(trial.trial_id, k), config)

    def on_result(self, trial: Any, result: dict) -> None:
        children = json.loads(result.get(R.CHILDREN) or "[]")
        self.count[trial.trial_id] = max(self.count.get(trial.trial_id, 0), len(children))
        for child in children:
            k = int(child["child"])
            log = self._child_log(trial, k)
            self.cb._log_records(log, {R.RECORDS: json.dumps(child["records"])})
            if child["status"] == STATUS_DIVERGED:
                log.status = STATUS_DIVERGED
        self._log_agent_updates(trial, json.loads(result.get(R.AGENT) or "[]"))

    def _series(self, trial: Any) -> str:
        return f"agent/seed{trial.config['rp']['seed']}"

    def _log_agent_updates(self, trial: Any, updates: list[dict[str, float]]) -> None:
        if not updates:
            return
        prefix = self._series(trial)
        run_id = self.cb.method_run_id
        if prefix not in self.agent_last:  # first update this driver sees: what is stored?
            self.agent_last[prefix] = self.store.series_last_step(run_id, f"{prefix}/updates")
        for stats in updates:
            step = int(stats["updates"])
            if step <= self.agent_last[prefix]:
                continue  # logged before a crash-restore re-ran this update
            metrics = {f"{prefix}/{k}": v for k, v in stats.items()}
            self.store.log_series(run_id, step, metrics)
            self.agent_last[prefix] = step

    def finished(self, trial: Any) -> bool:
        return trial.trial_id in self.done

    def finish(self, trial: Any, status: str) -> None:
        """End every child run of ``trial`` and log the agent (from its last checkpoint)."""
        if trial.trial_id in self.done:
            return
        checkpoint = getattr(getattr(trial, "checkpoint", None), "path", None)
        n = self.count.get(trial.trial_id) or int(trial.config["rp"]["shared"]["children"])
        from raytune_periodic.tracking.models import log_trial_models

        rp = trial.config["rp"]
        for k in range(n):
            log = self._child_log(trial, k)
            if log.finished:
                continue
            child_dir = None if checkpoint is None else os.path.join(checkpoint, f"child_{k}")
            if child_dir is not None:
                self.store.set_tag(log.run_id, TAG_CHECKPOINT_PATH, child_dir)
            final = log.status if status == STATUS_OK else STATUS_ERROR
            log_trial_models(
                self.store, log.run_id, child_dir, child_spec(trial.config, k),
                mode=rp.get("log_models", "selected"), seed=rp["seed"], records=log.records,
                status=final,
            )  # fmt: skip
            self.store.finish_trial(log.run_id, log.records, final)
            log.finished = True
        if checkpoint is not None and os.path.isdir(os.path.join(checkpoint, R.AGENT_DIR)):
            self.store.flush(strict=False)
            artifact = f"{AGENT_ARTIFACT}/seed{trial.config['rp']['seed']}"
            agent_dir = os.path.join(checkpoint, R.AGENT_DIR)
            self.store.log_artifacts_dir(self.cb.method_run_id, agent_dir, artifact)
        self.done.add(trial.trial_id)
