"""The trial-level writes of ``MlflowStore``: PBT exploits, trial summaries, run ends, tags
and artifacts (the layout is docs/MLFLOW.md). Every write goes through the delivery path
(``delivery.py``): queued in order to the writer thread or submitted now, spooled in an outage.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from raytune_periodic._imports import require
from raytune_periodic.protocol.mlflow_layout import (
    PBT_EVENTS_ARTIFACT,
    SCHEDULE_ARTIFACT,
    TAG_LAST_DONOR,
    TAG_STATUS,
)
from raytune_periodic.tracking import SUMMARY_KEYS, schedule_csv, summarize
from raytune_periodic.tracking.delivery import DeliveryMixin
from raytune_periodic.tracking.spool import is_placeholder, is_unreachable

_entities = require("mlflow.entities")
Metric = _entities.Metric
RunTag = _entities.RunTag

_log = logging.getLogger(__name__)

TRIAL_STATUSES = {"ok": "FINISHED", "diverged": "FINISHED", "error": "FAILED"}


def now_ms() -> int:
    return int(time.time() * 1000)


class RunWritesMixin(DeliveryMixin):
    """Exploit events, trial finishes, run ends, tags and artifacts (part of ``MlflowStore``,
    which provides the state below)."""

    _exploits: dict[str, int]
    _events: dict[str, list[list[str]]]
    _summaries: dict[str, dict[str, float]]
    _closed: set[str]
    _fresh: set[str]

    # ------------------------------------------------------------------ PBT exploits
    def log_exploit(self, run_id: str, step: int, donor_trial_id: str, donor_period: int) -> None:
        """A PBT exploit at ``step``: metrics ``exploited``/``exploit_donor_period``, tag
        ``rp.last_donor`` and a row of the ``pbt_events.csv`` artifact."""
        ts, step = now_ms(), int(step)
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

    def last_exploit(self, run_id: str) -> tuple[str, int, int] | None:
        """The run's last recorded PBT exploit from its ``pbt_events.csv``: (donor trial id,
        donor period, step); None without one, or while MLflow is unreachable."""
        if run_id in self._fresh or not self._online():
            return None
        if is_placeholder(run_id) and self.spool.resolve(run_id) is None:
            return None
        try:
            rows = self._read_events(self._real(run_id))
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._went_offline(exc)
            return None
        if not rows:
            return None
        step, donor, period = rows[-1]
        return donor, int(period), int(step)

    def _read_events(self, run_id: str) -> list[list[str]]:
        if not self._has_artifact(run_id, PBT_EVENTS_ARTIFACT):
            return []
        path = self.client.download_artifacts(run_id, PBT_EVENTS_ARTIFACT)
        rows = list(csv.reader(Path(path).read_text().splitlines()))
        return rows[1:]

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
        self._log_metrics({**op, "ts": now_ms()})
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
        self.client.log_text(run_id, schedule_csv(recs), SCHEDULE_ARTIFACT)
        self.client.set_terminated(run_id, TRIAL_STATUSES[status], end_time=ts)

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End an invocation or method run (FINISHED | FAILED | KILLED)."""
        self.flush(strict=False)
        self._submit({"op": "terminate", "run": run_id, "status": status, "end_time": now_ms()})
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
