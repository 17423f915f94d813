"""File mechanics of the MLflow spool (``spool.py``): names, the lock, torn lines, and
which errors mean an unreachable server.

Standard library only; the durability primitives are ``raytune_periodic.durable``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raytune_periodic.durable import append_bytes, fsync_dir

_log = logging.getLogger(__name__)

SPOOL_ENV = "RP_MLFLOW_SPOOL"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def default_spool_dir() -> Path:
    env = os.environ.get(SPOOL_ENV)
    return Path(env) if env else Path.home() / ".cache" / "raytune_periodic" / "spool"


def slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "_"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def spool_path(root: Path, tracking_uri: str, experiment: str) -> Path:
    """The spool file of exactly (``tracking_uri``, ``experiment``) under ``root``: readable
    slugs plus a hash of the exact strings (two names with one slug never share a file)."""
    folder = f"{slug(tracking_uri)[:80]}-{_digest(tracking_uri)[:8]}"
    name = f"{slug(experiment)[:80]}-{_digest(tracking_uri, experiment)[:16]}.jsonl"
    return root / folder / name


def encode_line(obj: dict[str, Any]) -> bytes:
    """One JSON line, newline included (what one append writes)."""
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def is_header(line: bytes) -> bool:
    try:
        head = json.loads(line)
    except ValueError:
        return False
    return isinstance(head, dict) and "rp_spool" in head


def count_ops(path: Path) -> int:
    """Complete operation lines of a spool or failed-writes log (0 without the file)."""
    try:
        with path.open("rb") as fh:
            lines = [line for line in fh if line.endswith(b"\n")]
    except FileNotFoundError:
        return 0
    return len(lines) - (1 if lines and is_header(lines[0]) else 0)


def offset_after(path: Path, start: int, n: int) -> int:
    """The byte offset after the first ``n`` complete lines of ``path`` from ``start``."""
    with path.open("rb") as fh:
        fh.seek(start)
        for _ in range(n):
            line = fh.readline()
            if not line.endswith(b"\n"):
                break
            start += len(line)
    return start


def set_aside(torn_file: Path, data: bytes, source: Path, why: str) -> None:
    """Append bytes that cannot be delivered (a torn or unparseable line) to ``torn_file``."""
    _log.error("%s: %s (%d bytes) set aside in %s", source, why, len(data), torn_file)
    append_bytes(torn_file, data.rstrip(b"\n") + b"\n", sync=True)


def cut_torn_tail(path: Path, torn_file: Path) -> bool:
    """Move the bytes after the last newline of ``path`` (a write cut short by a crash) to
    ``torn_file``; a file without any complete line is removed. False when no file is left.
    The caller holds the spool's lock (no append can be under way)."""
    try:
        fh = path.open("rb+")
    except FileNotFoundError:
        return False
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size:
            fh.seek(size - 1)
        if not size or fh.read(1) == b"\n":
            return bool(size) or _remove(path)
        pos = size
        while pos > 0:  # the last newline, reading backwards 64 KiB at a time
            start = max(0, pos - 65536)
            fh.seek(start)
            cut = fh.read(pos - start).rfind(b"\n")
            if cut >= 0:
                pos = start + cut + 1
                break
            pos = start
        fh.seek(pos)
        set_aside(torn_file, fh.read(), path, "torn last line")
        if pos:
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())
            return True
    return _remove(path)  # not even a complete header line


def _remove(path: Path) -> bool:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return False


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


class FileLock:
    """A thread lock plus an exclusive ``flock`` on ``path``, reentrant within the process
    (one instance per lock file: a second ``flock`` through another descriptor of the same
    file would wait for the first forever)."""

    _all: dict[Path, FileLock] = {}
    _all_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @classmethod
    def of(cls, path: Path) -> FileLock:
        with cls._all_lock:
            return cls._all.setdefault(path, cls(path))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.rlock:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None
