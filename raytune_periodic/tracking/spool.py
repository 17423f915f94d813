"""Local spool of MLflow writes made while the tracking server is unreachable.

One JSONL file per (tracking URI, experiment) under the spool directory
(``$RP_MLFLOW_SPOOL`` or ``~/.cache/raytune_periodic/spool``)::

    <spool>/<uri-slug>/<experiment-slug>.jsonl        header line, then one operation a line
    <spool>/<uri-slug>/<experiment-slug>.done         how many operations were delivered
    <spool>/<uri-slug>/<experiment-slug>.ids.json     placeholder run id → real run id
    <spool>/<uri-slug>/<experiment-slug>.failed.jsonl operations the server rejected

Operations are delivered in file order by :meth:`Spool.drain` (the store does it on its next
successful contact; ``raytune-periodic mlflow-sync`` does it by hand). Delivery is exactly once
because every operation is idempotent when replayed: runs are found by their ``rp.*`` tags before
being created, step batches at or below the run's stored last step are skipped, metrics carry
the timestamp they were spooled with (MLflow ignores an identical metric row), artifacts are
overwritten and terminations repeat harmlessly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "rp-spool-"
SPOOL_ENV = "RP_MLFLOW_SPOOL"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def default_spool_dir() -> Path:
    env = os.environ.get(SPOOL_ENV)
    return Path(env) if env else Path.home() / ".cache" / "raytune_periodic" / "spool"


def slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "_"


def new_placeholder() -> str:
    return PLACEHOLDER_PREFIX + uuid.uuid4().hex


def is_placeholder(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server could not be reached (connection refused,
    timeout, retries exhausted on 5xx), as opposed to the server rejecting the request."""
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return type(exc).__name__ == "MlflowException" and str(exc).startswith("API request to")


class Spool:
    """The spool file of one (tracking URI, experiment); one instance per file and process."""

    _instances: dict[Path, Spool] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: Path, tracking_uri: str, experiment: str) -> None:
        self.path = path
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.lock = threading.RLock()
        self._ids: dict[str, str] | None = None

    @classmethod
    def for_experiment(
        cls, tracking_uri: str, experiment: str, spool_dir: str | os.PathLike[str] | None = None
    ) -> Spool:
        root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        path = (root / slug(tracking_uri) / f"{slug(experiment)}.jsonl").absolute()
        with cls._instances_lock:
            if path not in cls._instances:
                cls._instances[path] = cls(path, tracking_uri, experiment)
            return cls._instances[path]

    @staticmethod
    def files(spool_dir: str | os.PathLike[str] | None = None) -> list[Path]:
        """Every spool file under ``spool_dir`` (default: the default spool directory)."""
        root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        return sorted(p for p in root.glob("*/*.jsonl") if not p.name.endswith(".failed.jsonl"))

    @staticmethod
    def header(path: Path) -> dict[str, Any]:
        with path.open() as fh:
            return json.loads(fh.readline())

    # ------------------------------------------------------------------ files
    def _side(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name[: -len(".jsonl")] + suffix)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The thread lock and an exclusive ``flock`` (a driver and ``mlflow-sync`` may race)."""
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._side(".lock").open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _done(self) -> int:
        try:
            return int(self._side(".done").read_text() or 0)
        except FileNotFoundError:
            return 0

    def _ops(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines[1:] if line.strip()]

    def pending(self) -> int:
        """How many spooled operations wait for delivery (0 without a file: no I/O beyond stat)."""
        if not self.path.exists():
            return 0
        with self._locked():
            return max(0, len(self._ops()) - self._done())

    def append(self, op: dict[str, Any]) -> None:
        line = json.dumps(op, separators=(",", ":"))
        with self._locked():
            new = not self.path.exists()
            with self.path.open("a") as fh:
                if new:
                    head = {"rp_spool": 1, "tracking_uri": self.tracking_uri}
                    fh.write(json.dumps({**head, "experiment": self.experiment}) + "\n")
                fh.write(line + "\n")

    # ------------------------------------------------------------------ placeholder ids
    def _load_ids(self) -> dict[str, str]:
        if self._ids is None:
            path = self._side(".ids.json")
            self._ids = json.loads(path.read_text()) if path.exists() else {}
        return self._ids

    def resolve(self, ref: str) -> str | None:
        """The real run id of a placeholder (None while its run is not created yet)."""
        with self.lock:
            ids = self._load_ids()
            if ref not in ids:
                self._ids = None  # another process (mlflow-sync) may have created it
                ids = self._load_ids()
            return ids.get(ref)

    def set_id(self, ref: str, run_id: str) -> None:
        with self.lock:
            ids = self._load_ids()
            ids[ref] = run_id
            path = self._side(".ids.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ids))
            os.replace(tmp, path)

    # ------------------------------------------------------------------ delivery
    def drain(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """Deliver the pending operations in order; returns how many were delivered.

        Stops and re-raises at the first operation that fails because the server is
        unreachable (the rest stay spooled). An operation the server rejects is written to
        ``*.failed.jsonl`` with the error and skipped, so one bad operation cannot block the
        rest forever. When everything is delivered the spool file is removed.
        """
        if not self.path.exists():
            return 0
        delivered = 0
        with self._locked():
            ops = self._ops()
            done = self._done()
            try:
                for i in range(done, len(ops)):
                    try:
                        apply(ops[i])
                    except Exception as exc:
                        if is_unreachable(exc):
                            raise
                        _log.error("spooled MLflow operation rejected, kept aside: %s", exc)
                        with self._side(".failed.jsonl").open("a") as fh:
                            fh.write(json.dumps({**ops[i], "error": str(exc)[:2000]}) + "\n")
                    delivered += 1
                    self._side(".done").write_text(str(i + 1))
            finally:
                if done + delivered >= len(ops):
                    self.path.unlink(missing_ok=True)
                    self._side(".done").unlink(missing_ok=True)
        return delivered
