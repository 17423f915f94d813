"""How the store's writes reach MLflow: in order, off the caller's thread, spooled in an outage.

``DeliveryMixin`` is the half of ``MlflowStore`` that owns the write path: per-period batches go
through one background writer thread (``flush`` waits for it); every write goes through
``_submit``, which applies it now or, while the server is unreachable (or earlier writes are
still spooled), appends it to the experiment's local spool (``spool.py``); the spool is delivered
in order on the next successful contact (at most every ``retry_s`` seconds) or by ``sync``.
``_apply`` is the single dispatcher of every operation kind, live or replayed.
"""

from __future__ import annotations

import atexit
import logging
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
    _errors: list[Exception]

    # implemented by MlflowStore
    def _find_or_create(self, key: Any, tags: Any, params: Any, name: Any) -> tuple[str, bool]:
        raise NotImplementedError

    def _exploit_event(self, run_id: str, row: list[str]) -> None:
        raise NotImplementedError

    def _finish_trial_now(self, run_id: str, records: Any, status: str, ts: int) -> None:
        raise NotImplementedError

    def _persisted_last_step(self, run_id: str) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ outage handling
    def _went_offline(self, exc: BaseException) -> None:
        if time.monotonic() >= self._retry_at:
            _log.warning(
                "MLflow server %s unreachable, spooling to %s: %s",
                self.tracking_uri,
                self.spool.path,
                str(exc).splitlines()[0][:300],
            )
        self._retry_at = time.monotonic() + self.retry_s

    def _online(self, force: bool = False) -> bool:
        """Whether the server may be contacted now: nothing spooled, or the spool delivered."""
        with self.spool.lock:
            if not self.spool.pending():
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
            _log.warning("MLflow %s back: delivered %d spooled operations", self.tracking_uri, n)
            return True

    def sync(self) -> int:
        """Deliver this experiment's spool now; returns how many operations remain spooled."""
        self.flush(strict=False)
        self._online(force=True)
        return self.spool.pending()

    def _submit(self, op: dict[str, Any]) -> None:
        """Apply one write now, or spool it (server unreachable, or earlier writes spooled)."""
        with self.spool.lock:
            if self._online():
                try:
                    self._apply(op)
                    return
                except Exception as exc:
                    if not is_unreachable(exc):
                        raise
                    self._went_offline(exc)
            self.spool.append(op)

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
            run_id, _ = self._find_or_create(tuple(op["key"]), tags, op["params"], op["name"])
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
        if self.synchronous:
            self._submit(op)
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="rp-mlflow", daemon=True)
            self._writer.start()
            atexit.register(self.flush, strict=False)
        self._queue.put(op)

    def _write_loop(self) -> None:
        while True:
            op = self._queue.get()
            try:
                self._submit(op)
            except Exception as exc:  # noqa: BLE001 - kept for flush()
                _log.error("MLflow log_batch for run %s failed: %s", op.get("run"), exc)
                self._errors.append(exc)
            finally:
                self._queue.task_done()

    def flush(self, strict: bool = True) -> None:
        """Wait until every queued ``log_batch`` is written.

        ``strict``: raise if any of them failed since the last strict flush (the store's own
        reads and ``finish_*`` flush non-strictly: failures are logged and kept for ``close``).
        """
        self._queue.join()
        if strict and self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{len(errors)} MLflow log_batch call(s) failed: {errors[0]}")

    def close(self) -> None:
        """Flush pending logging (call before the process exits); raise if any batch failed."""
        self.flush()
