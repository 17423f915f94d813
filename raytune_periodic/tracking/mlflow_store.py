"""MLflow store: invocation → method → trial runs, per-period step metrics, trial summaries.

Everything goes through one ``MlflowClient`` (no fluent ``mlflow.start_run`` global state: the
store is driven from a driver-side Tune callback). The layout is the contract in docs/MLFLOW.md.

Per-period metrics are written off the caller's thread by default: one background thread
makes the (synchronous) ``log_batch`` calls in order, ~0.1 ms for the caller instead of ~6-10 ms
on SQLite. ``flush()`` waits for them; every read and ``finish_*`` flushes first. MLflow's own
``synchronous=False`` mode is not used: with its queue active, every ``set_terminated`` (the end
of each trial run) blocks ~1 s (its logging loop polls with a 1 s timeout), and it drops queued
batches at interpreter shutdown (docs/MLFLOW.md).

Tracking-server outages: a write that fails because the server is unreachable is appended to a
local spool (``tracking/spool.py``) instead, and so is every later write until the spool has been
delivered, in order, on the next successful contact (tried at most every ``RP_MLFLOW_RETRY_S``
seconds, default 5) or by ``raytune-periodic mlflow-sync``. Runs started during an outage get a
placeholder id that is mapped to the real run when the spool is delivered. For ``http(s)`` URIs
the store sets short MLflow HTTP retry/timeout defaults (unless already set) so a down server
costs the caller seconds, not minutes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.protocol.mlflow_layout import (
    CONFIG_ARTIFACT,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_METHOD,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_TRIAL,
    tag_filter,
)
from raytune_periodic.tracking import (
    default_tracking_uri,
    flatten,
    metric_key,
    sqlite_path,
    yaml_text,
)
from raytune_periodic.tracking.delivery import (
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
)
from raytune_periodic.tracking.run_writes import (  # noqa: F401  (TRIAL_STATUSES re-exported)
    TRIAL_STATUSES,
    RunWritesMixin,
    now_ms,
)
from raytune_periodic.tracking.spool import (
    Spool,
    is_placeholder,
    is_unreachable,
    new_placeholder,
)

mlflow = require("mlflow")
_entities = require("mlflow.entities")
Metric = _entities.Metric
Param = _entities.Param
RunTag = _entities.RunTag

_log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
_ID_TAG = {KIND_METHOD: TAG_METHOD, KIND_TRIAL: TAG_TRIAL}
# MLflow's defaults retry a refused connection 7 times with exponential backoff (minutes).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def _rp_tags(tags: Mapping[str, object] | None) -> dict[str, str]:
    """Tags with the ``rp.`` prefix added to bare keys (``seed`` → ``rp.seed``)."""
    out = {}
    for key, val in (tags or {}).items():
        full = key if key.startswith(("rp.", "mlflow.")) else f"rp.{key}"
        out[full] = str(val)[:8000]
    return out


# ----------------------------------------------------------------------------- the store
class MlflowStore(RunWritesMixin):
    """Writes the invocation/method/trial run tree of one MLflow experiment.

    ``start_*`` are idempotent (re-attach by tags after a crash or ``--resume``), params are
    write-once (a re-attach only logs keys the run lacks), and ``log_step`` logs each step of a
    run once (steps at or below the run's last logged step are skipped).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        *,
        synchronous: bool = False,
        artifact_location: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        new_invocation: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment_name = experiment_name
        self.synchronous = synchronous
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        #: look for an empty twin of each created run: over HTTP, MLflow retries a
        #: ``create_run`` whose response was lost, and the server may have created both
        self.dedupe_creates = self.tracking_uri.startswith(("http://", "https://"))
        if self.dedupe_creates:
            for key, val in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, val)
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.spool = Spool.for_experiment(self.tracking_uri, experiment_name, spool_dir)
        self._init_delivery()
        self._artifact_location = artifact_location
        if artifact_location is None and db is not None:
            self._artifact_location = str(db.parent / "mlartifacts" / metric_key(experiment_name))
        self._experiment_id: str | None = None
        try:
            self._experiment_id = self.experiment_id
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._went_offline(exc)
        self._runs: dict[tuple[str, ...], str] = {}
        self._last: dict[str, int] = {}
        self._exploits: dict[str, int] = {}
        self._events: dict[str, list[list[str]]] = {}
        self._summaries: dict[str, dict[str, float]] = {}
        self._closed: set[str] = set()
        #: every run this store starts belongs to an invocation begun in this process (not a
        #: --resume or a driver restart): create runs without searching for one to re-attach,
        #: and know they hold no steps yet (a trial start costs one create_run + log_params)
        self.new_invocation = new_invocation
        self._fresh: set[str] = set()

    @property
    def experiment_id(self) -> str:
        """The experiment's id (created on first contact with the server)."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=self._artifact_location
                )
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    # ------------------------------------------------------------------ run tree
    def start_invocation(
        self,
        invocation_id: str,
        config: Mapping[str, Any] | str,
        params: Mapping[str, Any],
        tags: Mapping[str, object] | None = None,
    ) -> str:
        """The invocation run (re-attached, status RUNNING again, if ``invocation_id`` exists)."""
        all_tags = {**_rp_tags(tags), TAG_KIND: KIND_INVOCATION, TAG_INVOCATION: invocation_id}
        run_id, created = self._get_or_create(
            (KIND_INVOCATION, invocation_id), all_tags, params, f"invocation-{invocation_id[:8]}"
        )
        if created or is_placeholder(run_id) or not self._has_artifact(run_id, CONFIG_ARTIFACT):
            text = config if isinstance(config, str) else yaml_text(config)
            self._submit({"op": "log_text", "run": run_id, "text": text, "path": CONFIG_ARTIFACT})
        return run_id

    def start_method(
        self,
        invocation_run_id: str,
        invocation_id: str,
        method: str,
        search: str,
        params: Mapping[str, Any],
    ) -> str:
        """The method run, a child of the invocation run; idempotent by (invocation, method)."""
        tags = {
            PARENT_TAG: invocation_run_id,
            TAG_KIND: KIND_METHOD,
            TAG_METHOD: method,
            TAG_INVOCATION: invocation_id,
            TAG_SEARCH: search,
        }
        return self._get_or_create((KIND_METHOD, invocation_id, method), tags, params, method)[0]

    def start_trial(
        self,
        method_run_id: str,
        invocation_id: str,
        method: str,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, object] | None = None,
    ) -> str:
        """The trial run, a child of the method run; idempotent by (invocation, trial id).

        ``tags`` carry controller/dataset/model/seed (bare keys get the ``rp.`` prefix).
        """
        all_tags = {
            **_rp_tags(tags),
            PARENT_TAG: method_run_id,
            TAG_KIND: KIND_TRIAL,
            TAG_METHOD: method,
            TAG_TRIAL: trial_id,
            TAG_INVOCATION: invocation_id,
            TAG_STATUS: "running",
        }
        key = (KIND_TRIAL, invocation_id, trial_id)
        return self._get_or_create(key, all_tags, params, f"{method}-{trial_id}")[0]

    def _get_or_create(
        self, key: tuple[str, ...], tags: dict[str, str], params: Mapping[str, Any], name: str
    ) -> tuple[str, bool]:
        if key in self._runs:
            run_id = self._runs[key]
            if run_id in self._closed:  # started again after finish (a retried trial)
                self._reopen(run_id, key[0])
            return run_id, False
        flat = flatten(params)
        if self._online():
            try:
                run_id, created = self._find_or_create(
                    key, tags, flat, name, search=not self.new_invocation
                )
                self._runs[key] = run_id
                if created:
                    self._fresh.add(run_id)
                    self._last[run_id] = -1
                    if self.dedupe_creates:  # off the caller's thread (one search per run)
                        self._log_metrics({"op": "dedupe", "run": run_id, "key": list(key)})
                return run_id, created
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._went_offline(exc)
        ref = new_placeholder()  # created when the spool is delivered
        op = {"op": "create_run", "ref": ref, "key": list(key), "tags": tags, "params": flat}
        self.spool.append({**op, "name": name})  # in memory, logged, if the disk refuses
        self._runs[key] = ref
        return ref, True

    def _find_or_create(
        self,
        key: tuple[str, ...],
        tags: dict[str, str],
        flat: dict[str, str],
        name: str,
        search: bool = True,
    ) -> tuple[str, bool]:
        """Re-attach to the run with ``key``'s tags (reopened, missing params added), or create
        it (``search=False``: create, the caller knows it cannot exist)."""
        found = self._same_identity(key) if search else []
        if found:
            # the earliest run holding metrics (else the earliest): a retried create_run may
            # have left an empty twin, which goes
            run = next((r for r in found if r.data.metrics), found[0])
            run_id = run.info.run_id
            self._drop_twins(run_id, found)
            missing = {k: v for k, v in flat.items() if k not in run.data.params}
            changed = [k for k, v in flat.items() if run.data.params.get(k, v) != v]
            if changed:
                _log.warning(
                    "run %s: params are write-once, kept old values of %s", run_id, changed
                )
            self._log_params(run_id, missing)
            if run.info.status != "RUNNING":
                self._apply({"op": "reopen", "run": run_id, "kind": key[0]})
            created = False
        else:
            run_id = self.client.create_run(
                self.experiment_id, tags=tags, run_name=name
            ).info.run_id
            self._log_params(run_id, flat)
            created = True
        return run_id, created

    def _same_identity(self, key: tuple[str, ...]) -> list[Any]:
        """The runs carrying ``key``'s identity tags, oldest first."""
        filt = [tag_filter({TAG_KIND: key[0], TAG_INVOCATION: key[1]})]
        if len(key) > 2:
            filt.append(tag_filter({_ID_TAG[key[0]]: key[2]}))
        return list(
            self.client.search_runs(
                [self.experiment_id],
                " and ".join(filt),
                max_results=50,
                order_by=["start_time ASC"],
            )
        )

    def _dedupe(self, run_id: str, key: tuple[str, ...]) -> None:
        """Delete empty twins of the run just created with ``key``'s identity: MLflow's HTTP
        client retries a POST whose response was lost (read timeout, 5xx), so one
        ``create_run`` can create two runs, and a later re-attach would pick the empty one."""
        self._drop_twins(run_id, self._same_identity(key))

    def _drop_twins(self, keep: str, runs: list[Any]) -> None:
        for run in runs:
            twin = run.info.run_id
            if twin == keep:
                continue
            if run.data.metrics:  # never delete data: say so and keep it
                _log.warning("runs %s and %s share one identity and both hold metrics", keep, twin)
                continue
            self.client.delete_run(twin)
            _log.warning(
                "deleted run %s: an empty twin of run %s (a retried create_run)", twin, keep
            )

    def _reopen(self, run_id: str, kind: str) -> None:
        self._submit({"op": "reopen", "run": run_id, "kind": kind})
        self._closed.discard(run_id)

    def _log_params(self, run_id: str, flat: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100], synchronous=True)

    # ------------------------------------------------------------------ per-period logging
    def last_step(self, run_id: str) -> int:
        """The largest step of metric ``period`` logged to the run (−1 when none)."""
        self.flush(strict=False)
        return max(self._persisted_last_step(run_id), self._last.get(run_id, -1))

    def _persisted_last_step(self, run_id: str) -> int:
        """The run's stored last step; −1 for a spooled run or while the server is unreachable
        (spooled steps are checked again against the stored ones when delivered)."""
        if is_placeholder(run_id) and self.spool.resolve(run_id) is None:
            return -1
        if time.monotonic() < self._retry_at:  # offline: don't wait on the server again
            return -1
        try:
            history = self.client.get_metric_history(self._real(run_id), "period")
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._went_offline(exc)
            return -1
        return max((m.step for m in history), default=-1)

    def log_step(self, run_id: str, step: int, metrics: Mapping[str, float | None]) -> bool:
        """Log one period's metrics at ``step`` in one ``log_batch``; False if already logged.

        NaN is stored as NaN and ±inf as ±float max (MLflow's own conversion); a ``step`` key
        is ignored; None and non-numeric values are skipped (a warning names them).
        """
        step = int(step)
        if run_id not in self._last:  # first step this process logs: what is stored already?
            self._last[run_id] = self._persisted_last_step(run_id)
        if step <= self._last[run_id]:
            return False
        ts = now_ms()
        batch, skipped = [], []
        for key, val in metrics.items():
            if key == "step":
                continue
            try:
                batch.append([metric_key(key), float(val), ts, step])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                if val is not None:
                    skipped.append(key)
        if skipped:
            _log.warning("run %s step %d: skipped non-numeric metrics %s", run_id, step, skipped)
        self._log_metrics({"op": "log_batch", "run": run_id, "metrics": batch, "step": step})
        self._last[run_id] = step
        self._fresh.discard(run_id)  # has history now
        return True

    def __enter__(self) -> MlflowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ named series
    def log_series(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """One ``log_batch`` at ``step`` with no per-run step bookkeeping: for series the caller
        de-duplicates itself (a shared PPO agent's updates, one series per seed on the method
        run), read back with :meth:`series_last_step`."""
        batch = [[metric_key(k), float(v), now_ms(), int(step)] for k, v in metrics.items()]
        self._log_metrics({"op": "log_batch", "run": run_id, "metrics": batch, "step": int(step)})

    def series_last_step(self, run_id: str, metric: str) -> int:
        """The largest stored step of ``metric`` on the run (−1: none, or unreadable now)."""
        self.flush(strict=False)
        if is_placeholder(run_id) and self.spool.resolve(run_id) is None:
            return -1
        try:
            history = self.client.get_metric_history(self._real(run_id), metric_key(metric))
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            return -1
        return max((m.step for m in history), default=-1)
