"""How the store's writes reach MLflow: in order, off the caller's thread, spooled in an outage.

``DeliveryMixin`` is the half of ``MlflowStore`` that owns the write path: per-period batches go
through one background writer thread fed by a bounded queue (``RP_MLFLOW_QUEUE_MAX`` writes,
default 10000: a caller that gets that far ahead waits, a warning says so); ``flush`` waits for
it. Every write goes through ``_submit``, which applies it now or, while the server is
unreachable (or earlier writes are still spooled), appends it to the experiment's local spool
(``spool.py``); the spool is delivered in order on the next successful contact (at most every
``retry_s`` seconds) or by ``sync``. A write that fails for any other reason is never dropped:
it goes to the spool's failed-writes log (``raytune-periodic mlflow-sync --retry-failed`` replays
it), is logged as an error, and ``flush()``/``close()`` raise. The spool is ``fsync``-ed when
the writer goes idle and at every ``flush``. ``_apply`` is the single dispatcher of every
operation kind, live or replayed.

The writer sends consecutive queued metric batches of the same run as one ``log_batch`` (up to
MLflow's 1,000 metrics): each is one SQL transaction or HTTP request, and a trial's result
carries several periods. Each operation is still spooled or rejected on its own (a merged
write that fails for a reason other than an unreachable server is retried one by one, so only
the bad one goes to the failed-writes log).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.protocol.mlflow_layout import (  # noqa: F401  (KIND_*: re-exported)
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
    TAG_STATUS,
)
from raytune_periodic.tracking.spool import Spool, is_placeholder, is_unreachable

_entities = require("mlflow.entities")
Metric = _entities.Metric
RunTag = _entities.RunTag

_log = logging.getLogger(__name__)

#: the writer merges queued metric batches of one run up to this many metrics (MLflow's limit)
MERGE_METRICS = 1000


def _mergeable(op: dict[str, Any]) -> bool:
    """A metrics-only ``log_batch`` (tags and other operations are written alone)."""
    return op.get("op") == "log_batch" and bool(op.get("metrics")) and not op.get("tags")


QUEUE_MAX_ENV = "RP_MLFLOW_QUEUE_MAX"
DEFAULT_QUEUE_MAX = 10000


class DeliveryMixin:
    """The write path of ``MlflowStore`` (which provides the run-tree methods it calls)."""

    client: Any
    tracking_uri: str
    synchronous: bool
    spool: Spool
    retry_s: float
    _retry_at: float
    _replay_last: dict[str, int]
    _queue: queue.Queue[dict[str, Any]]
    _writer: threading.Thread | None
    _errors: list[BaseException]
    _unsaved: list[tuple[dict[str, Any], BaseException]]
    _behind_warn_at: float

    def _init_delivery(self) -> None:
        self.retry_s = float(os.environ.get("RP_MLFLOW_RETRY_S", "5"))
        self._retry_at = 0.0
        self._replay_last = {}
        maxsize = int(os.environ.get(QUEUE_MAX_ENV, DEFAULT_QUEUE_MAX))
        self._queue = queue.Queue(maxsize=max(1, maxsize))
        self._writer = None
        self._errors = []  # failures since the last strict flush (each write kept aside)
        self._unsaved = []  # failed writes the failed-writes log could not take (disk)
        self._behind_warn_at = 0.0

    # implemented by MlflowStore
    def _find_or_create(self, key: Any, tags: Any, params: Any, name: Any) -> tuple[str, bool]:
        raise NotImplementedError

    def _exploit_event(self, run_id: str, row: list[str]) -> None:
        raise NotImplementedError

    def _finish_trial_now(self, run_id: str, records: Any, status: str, ts: int) -> None:
        raise NotImplementedError

    def _persisted_last_step(self, run_id: str) -> int:
        raise NotImplementedError

    def _dedupe(self, run_id: str, key: tuple[str, ...]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ outage handling
    def _went_offline(self, exc: BaseException) -> None:
        if time.monotonic() >= self._retry_at:
            _log.warning(
                "MLflow server %s unreachable, spooling to %s: %s",
                self.tracking_uri,
                self.spool.path,
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
            )
        self._retry_at = time.monotonic() + self.retry_s

    def _online(self, force: bool = False) -> bool:
        """Whether the server may be contacted now: nothing spooled, or the spool delivered.

        Constant time while something is spooled and the retry time has not come (a long
        outage does not slow each write down)."""
        with self.spool.lock:
            if not self.spool.has_pending():
                return True
            if not force and time.monotonic() < self._retry_at:
                return False
            self._replay_last = {}
            try:
                n = self.spool.drain(lambda op: self._apply(op, replay=True))
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._went_offline(exc)
                return False
            if n:
                _log.warning(
                    "MLflow %s back: delivered %d spooled operations", self.tracking_uri, n
                )
            return not self.spool.has_pending()

    def sync(self) -> int:
        """Deliver this experiment's spool now; returns how many operations remain spooled."""
        self.flush(strict=False)
        self._online(force=True)
        self.spool.tidy()
        return self.spool.pending()

    def _deliverable(self) -> bool:
        """Online with nothing spooled before (delivering the spool first if it can)."""
        try:
            return self._online()
        except Exception as exc:  # the spool could not be delivered (e.g. a full disk)
            _log.error("delivering the MLflow spool %s failed: %s", self.spool.path, exc)
            self._errors.append(exc)
            return False

    def _submit(self, op: dict[str, Any]) -> None:
        """Apply one write now, or spool it (server unreachable, or earlier writes spooled);
        a write that fails otherwise goes to the failed-writes log (``_reject``)."""
        with self.spool.lock:
            if self._deliverable():
                try:
                    self._apply(op)
                    return
                except Exception as exc:
                    if not is_unreachable(exc):
                        self._reject(op, exc)
                        return
                    self._went_offline(exc)
            self.spool.append(op)  # kept in memory, with an error logged, if the disk refuses

    def _reject(self, op: dict[str, Any], exc: BaseException) -> None:
        """Keep a write that failed for a reason other than an unreachable server in the
        failed-writes log (in memory if even that fails); raise it in synchronous mode."""
        self._errors.append(exc)
        try:
            self.spool.keep_failed(op, exc)
        except Exception as disk:  # noqa: BLE001 - the disk, mostly: keep it in memory
            _log.error(
                "failed-writes log %s refused a write (%s): kept in memory",
                self.spool.failed_path,
                disk,
            )
            self._unsaved.append((op, exc))
        if self.synchronous:
            raise exc

    def _real(self, run_id: str) -> str:
        """A placeholder run id mapped to its real run (raises while it is not created)."""
        if not is_placeholder(run_id):
            return run_id
        real = self.spool.resolve(run_id)
        if real is None:
            raise KeyError(f"run {run_id} is spooled and not created in MLflow yet")
        return real

    def _apply(self, op: dict[str, Any], replay: bool = False) -> None:
        kind = op["op"]
        if kind == "create_run":
            tags = {k: self._real(v) if is_placeholder(v) else v for k, v in op["tags"].items()}
            run_id, created = self._find_or_create(tuple(op["key"]), tags, op["params"], op["name"])
            if created:  # a retried create_run may have left a twin (found ones were checked)
                self._dedupe(run_id, tuple(op["key"]))
            self.spool.set_id(op["ref"], run_id)
            return
        run_id = self._real(op["run"])
        if kind == "log_batch":
            step = op.get("step")
            if replay and step is not None:
                if run_id not in self._replay_last:
                    self._replay_last[run_id] = self._persisted_last_step(run_id)
                if step <= self._replay_last[run_id]:
                    return  # delivered before (a sync interrupted after this batch)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, st) for k, v, ts, st in op.get("metrics", [])],
                tags=[RunTag(k, v) for k, v in op.get("tags", {}).items()],
                synchronous=True,
            )
            if replay and step is not None:
                self._replay_last[run_id] = step
        elif kind == "log_artifacts":
            self.client.log_artifacts(run_id, op["dir"], op["path"])
        elif kind == "log_text":
            self.client.log_text(run_id, op["text"], op["path"])
        elif kind == "dedupe":
            self._dedupe(run_id, tuple(op["key"]))
        elif kind == "log_models":  # tracking/models.py: a trial's weights as MLflow models
            from raytune_periodic.tracking.models import apply_log_models

            apply_log_models(self.client, run_id, op)
        elif kind == "exploit_event":
            self._exploit_event(run_id, [str(x) for x in op["row"]])
        elif kind == "finish_trial":
            self._finish_trial_now(run_id, op["records"], op["status"], op["ts"])
        elif kind == "terminate":
            self.client.set_terminated(run_id, op["status"], end_time=op["end_time"])
        elif kind == "reopen":
            self.client.update_run(run_id, status="RUNNING")
            if op["kind"] == KIND_TRIAL:
                self.client.set_tag(run_id, TAG_STATUS, "running")
        else:
            raise ValueError(f"unknown spooled operation {kind!r}")

    # ------------------------------------------------------------------ background writer
    def _log_metrics(self, op: dict[str, Any]) -> None:
        """Queue a write for the writer thread (in order; waits while the queue is full)."""
        if self.synchronous:
            self._submit(op)
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="rp-mlflow", daemon=True)
            self._writer.start()
            atexit.register(self.flush, strict=False)
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            if time.monotonic() >= self._behind_warn_at:
                _log.warning(
                    "MLflow writer is %d writes behind (%s): waiting for it",
                    self._queue.maxsize,
                    self.tracking_uri,
                )
                self._behind_warn_at = time.monotonic() + 60
            self._queue.put(op)  # back-pressure: the caller waits for room

    def _write_loop(self) -> None:
        carry: dict[str, Any] | None = None
        while True:
            op = carry if carry is not None else self._queue.get()
            group, carry = self._take_group(op)
            try:
                self._submit_group(group)
            except Exception as exc:  # noqa: BLE001 - nothing is dropped: kept aside
                for one in group:
                    self._reject(one, exc)
            finally:
                if carry is None and self._queue.empty():  # idle: spool made durable
                    with contextlib.suppress(OSError):
                        self.spool.fsync()
                for _ in group:
                    self._queue.task_done()

    def _take_group(self, op: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        """``op`` and the metric batches of its run queued right behind it (one ``log_batch``
        of at most ``MERGE_METRICS``); the first queued op that does not join is returned to
        be written next, in order."""
        group = [op]
        if not _mergeable(op):
            return group, None
        size = len(op["metrics"])
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return group, None
            if (
                not _mergeable(nxt)
                or nxt["run"] != op["run"]
                or size + len(nxt["metrics"]) > MERGE_METRICS
            ):
                return group, nxt
            group.append(nxt)
            size += len(nxt["metrics"])

    def _submit_group(self, group: list[dict[str, Any]]) -> None:
        if len(group) == 1:
            self._submit(group[0])
            return
        with self.spool.lock:
            if self._deliverable():
                merged = [m for one in group for m in one["metrics"]]
                try:
                    self._apply({"op": "log_batch", "run": group[0]["run"], "metrics": merged})
                    return
                except Exception as exc:
                    if not is_unreachable(exc):  # one by one: only a bad write is kept aside
                        for one in group:
                            self._submit(one)
                        return
                    self._went_offline(exc)
            for one in group:  # each spooled with its own step (replay skips delivered steps)
                self.spool.append(one)

    def _retry_unsaved(self) -> None:
        while self._unsaved:
            op, exc = self._unsaved[0]
            try:
                self.spool.keep_failed(op, exc)
            except Exception:  # noqa: BLE001 - still refused: kept for the next flush
                return
            self._unsaved.pop(0)

    def flush(self, strict: bool = True) -> None:
        """Wait until every queued write is done (applied, spooled or kept aside), then
        ``fsync`` the spool.

        ``strict``: raise if any write failed since the last strict flush (each is in the
        failed-writes log) or if writes are still only in memory (the disk refused them);
        the store's own reads and ``finish_*`` flush non-strictly.
        """
        self._queue.join()
        with self.spool.lock:
            self._retry_unsaved()
            try:
                self.spool.fsync()
            except OSError as exc:
                _log.error("fsync of the MLflow spool %s failed: %s", self.spool.path, exc)
            if strict and self.spool.memory:
                with contextlib.suppress(Exception):
                    self._online(force=True)  # the server may take what the disk refused
        if not strict:
            return
        problems = []
        if self._errors:
            errors, self._errors = self._errors, []
            problems.append(
                f"{len(errors)} MLflow write(s) failed (first: {errors[0]}); kept in "
                f"{self.spool.failed_path}: `raytune-periodic mlflow-sync --retry-failed` "
                "replays them"
            )
        if self.spool.memory or self._unsaved:
            problems.append(
                f"{len(self.spool.memory) + len(self._unsaved)} MLflow write(s) could not be "
                f"written to {self.spool.path.parent} (disk full?) and are only in memory"
            )
        if problems:
            raise RuntimeError("; ".join(problems))

    def close(self) -> None:
        """Flush pending logging (call before the process exits); raise if any write failed
        or is still only in memory."""
        self.flush()
