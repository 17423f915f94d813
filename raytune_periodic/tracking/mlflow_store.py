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

import csv
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.protocol.mlflow_layout import (
    CONFIG_ARTIFACT,
    PBT_EVENTS_ARTIFACT,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_LAST_DONOR,
    TAG_METHOD,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_TRIAL,
    tag_filter,
)
from raytune_periodic.tracking import (
    SUMMARY_KEYS,
    default_tracking_uri,
    flatten,
    metric_key,
    schedule_csv,
    sqlite_path,
    summarize,
    yaml_text,
)
from raytune_periodic.tracking.delivery import (
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
    DeliveryMixin,
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
TRIAL_STATUSES = {"ok": "FINISHED", "diverged": "FINISHED", "error": "FAILED"}
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


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------- the store
class MlflowStore(DeliveryMixin):
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
        if self.tracking_uri.startswith(("http://", "https://")):
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
        found = []
        if search:
            filt = [tag_filter({TAG_KIND: key[0], TAG_INVOCATION: key[1]})]
            if len(key) > 2:
                filt.append(tag_filter({_ID_TAG[key[0]]: key[2]}))
            found = self.client.search_runs(
                [self.experiment_id],
                " and ".join(filt),
                max_results=1,
                order_by=["start_time ASC"],
            )
        if found:
            run = found[0]
            run_id = run.info.run_id
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
        ts = _now_ms()
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

    def log_exploit(self, run_id: str, step: int, donor_trial_id: str, donor_period: int) -> None:
        """A PBT exploit at ``step``: metrics ``exploited``/``exploit_donor_period``, tag
        ``rp.last_donor`` and a row of the ``pbt_events.csv`` artifact."""
        ts, step = _now_ms(), int(step)
        metrics = [
            ["exploited", 1.0, ts, step],
            ["exploit_donor_period", float(donor_period), ts, step],
        ]
        tags = {TAG_LAST_DONOR: str(donor_trial_id)}
        self._log_metrics({"op": "log_batch", "run": run_id, "metrics": metrics, "tags": tags})
        self._exploits[run_id] = self._exploits.get(run_id, 0) + 1
        self._fresh.discard(run_id)
        row = [str(step), str(donor_trial_id), str(donor_period)]
        self.flush(strict=False)
        self._submit({"op": "exploit_event", "run": run_id, "row": row})

    def _exploit_event(self, run_id: str, row: list[str]) -> None:
        """Append a row to the run's ``pbt_events.csv`` artifact (once: replays are no-ops)."""
        if run_id not in self._events:
            self._events[run_id] = self._read_events(run_id)
        if row in self._events[run_id]:
            return
        self._events[run_id].append(row)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [["step", "donor_trial_id", "donor_period"], *self._events[run_id]]
        )
        self.client.log_text(run_id, buf.getvalue(), PBT_EVENTS_ARTIFACT)

    def _read_events(self, run_id: str) -> list[list[str]]:
        if not self._has_artifact(run_id, PBT_EVENTS_ARTIFACT):
            return []
        path = self.client.download_artifacts(run_id, PBT_EVENTS_ARTIFACT)
        rows = list(csv.reader(Path(path).read_text().splitlines()))
        return rows[1:]

    def __enter__(self) -> MlflowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ finishing
    def history_records(self, run_id: str) -> list[dict[str, float]]:
        """Per-step metric dicts (with ``step``) rebuilt from the run's metric histories."""
        if run_id in self._fresh:
            return []  # created by this store and nothing logged to it yet
        self.flush(strict=False)
        if is_placeholder(run_id) and self.spool.resolve(run_id) is None:
            return []
        if not self._online():
            _log.warning("MLflow unreachable: history of run %s not read", run_id)
            return []
        run_id = self._real(run_id)
        by_step: dict[int, dict[str, float]] = {}
        try:  # the server may go down between the check above and these reads
            metrics = self.client.get_run(run_id).data.metrics
            for key in [k for k in metrics if k not in SUMMARY_KEYS]:
                for m in self.client.get_metric_history(run_id, key):
                    by_step.setdefault(m.step, {"step": float(m.step)})[key] = m.value
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._went_offline(exc)
            _log.warning("MLflow unreachable: history of run %s not read", run_id)
            return []
        return [by_step[s] for s in sorted(by_step)]

    def finish_trial(
        self, run_id: str, records: Sequence[Mapping[str, float]] | None, status: str
    ) -> dict[str, float]:
        """Log the summary metrics and ``schedule.csv``, set ``rp.status`` and end the run.

        ``records`` are the per-step metric dicts (each with ``step``); None reads them back
        from MLflow. ``status``: ok | diverged (run FINISHED) | error (run FAILED). Queued in
        order behind the run's steps (``flush()`` before reading the run with another client);
        returns the summary computed locally.
        """
        if status not in TRIAL_STATUSES:
            raise ValueError(
                f"trial status must be one of {sorted(TRIAL_STATUSES)}, got {status!r}"
            )
        if records is None:
            self.flush(strict=False)
            recs = self.history_records(run_id)
        else:
            recs = list(records)
        op = {"op": "finish_trial", "run": run_id, "records": recs, "status": status}
        # in order after the run's queued steps, off the caller's (Tune's) thread
        self._log_metrics({**op, "ts": _now_ms()})
        self._closed.add(run_id)
        if run_id in self._summaries:
            return self._summaries.pop(run_id)
        return summarize(recs, self._exploits.get(run_id, 0))  # spooled: the local view

    def _finish_trial_now(
        self, run_id: str, recs: Sequence[Mapping[str, float]], status: str, ts: int
    ) -> None:
        n_exploits = len(self.client.get_metric_history(run_id, "exploited"))
        summary = summarize(recs, n_exploits)
        self._summaries[run_id] = summary
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in summary.items()],
            tags=[RunTag(TAG_STATUS, status)],
            synchronous=True,
        )
        self.client.log_text(run_id, schedule_csv(recs), "schedule.csv")
        self.client.set_terminated(run_id, TRIAL_STATUSES[status], end_time=ts)

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End an invocation or method run (FINISHED | FAILED | KILLED)."""
        self.flush(strict=False)
        self._submit({"op": "terminate", "run": run_id, "status": status, "end_time": _now_ms()})
        self._closed.add(run_id)

    # ------------------------------------------------------------------ artifacts
    def _has_artifact(self, run_id: str, name: str) -> bool:
        """Whether the run has the top-level artifact file ``name`` (listing a file path gives
        nothing on some artifact stores, so list the root)."""
        return any(f.path == name for f in self.client.list_artifacts(run_id))

    def set_tag(self, run_id: str, key: str, value: object) -> None:
        """Set one tag (queued in order with the run's steps; spooled while unreachable)."""
        self._log_metrics({"op": "log_batch", "run": run_id, "tags": {key: str(value)[:8000]}})

    def log_artifacts_dir(self, run_id: str, local_dir: str, artifact_path: str) -> None:
        """Upload a local directory as artifacts (spooled by path while the server is down:
        the directory must still exist when the spool is delivered)."""
        self.flush(strict=False)
        op = {"op": "log_artifacts", "run": run_id, "dir": str(local_dir)}
        self._submit({**op, "path": artifact_path})

    def log_artifact_text(self, run_id: str, name: str, text: str) -> None:
        self._submit({"op": "log_text", "run": run_id, "text": text, "path": name})

    def log_artifact_file(
        self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)
