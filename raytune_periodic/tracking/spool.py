"""Local spool of MLflow writes made while the tracking server is unreachable.

One JSONL file per exact (tracking URI, experiment) under the spool directory
(``$RP_MLFLOW_SPOOL`` or ``~/.cache/raytune_periodic/spool``), named by readable slugs plus a
hash of the exact strings (``spool_io.spool_path``)::

    <spool>/<uri-slug>-<hash>/<experiment-slug>-<hash>.jsonl   header line, then one op a line
    ....done          {"id": <the spool file's id>, "offset": <bytes delivered>}
    ....ids.json      placeholder run id → real run id
    ....failed.jsonl  header line, then the writes the server rejected (each with its error)
    ....torn          bytes set aside: a torn last line (crash mid-write), unparseable lines
    ....lock          ``flock`` target (a driver and ``mlflow-sync`` may race)

Crash safety: an operation is one ``write`` on an ``O_APPEND`` descriptor under the lock
(never interleaved; a short write is truncated away); ``fsync`` is batched (:meth:`Spool.fsync`:
the store's ``flush`` and its writer going idle). The file is created with its header
atomically; the id map and the done marker are replaced atomically and durably
(``raytune_periodic.durable``). A torn last line (or a file without a readable header) is set
aside before the next append or delivery: it never blocks the spool or ``mlflow-sync``. The
pending check reads the header and the done marker, whatever the spool's length.

A write that cannot be spooled (full disk, I/O error) is logged as an error and kept in memory,
in order, behind the file's operations: written to the file as soon as the disk takes it, or
delivered from memory when the server answers; the store's ``flush()``/``close()`` raise while
any is left (it is lost if the process then exits).

Delivery (:meth:`Spool.drain`, by the store on its next successful contact or by
``raytune-periodic mlflow-sync``) is in file order and exactly once, because every operation is
idempotent when replayed: runs are found by their ``rp.*`` tags before being created, step
batches at or below the run's stored last step are skipped, metrics carry the timestamp they
were spooled with (MLflow ignores an identical metric row), artifacts are overwritten and
terminations repeat harmlessly. So the done marker is only saved every ``SAVE_EVERY``
operations and at the end of a delivery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from raytune_periodic.durable import append_bytes, atomic_write_text, fsync_dir
from raytune_periodic.tracking.spool_io import (  # noqa: F401  (re-exported)
    SPOOL_ENV,
    FileLock,
    count_ops,
    cut_torn_tail,
    default_spool_dir,
    encode_line,
    is_header,
    is_unreachable,
    offset_after,
    set_aside,
    slug,
    spool_path,
)

_log = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "rp-spool-"
SAVE_EVERY = 256  #: operations delivered between two saves of the done marker
_SIDE_NAMES = (".failed.jsonl", ".retry.jsonl")  # JSONL files that are not spools themselves

Apply = Callable[[dict[str, Any]], None]


def new_placeholder() -> str:
    return PLACEHOLDER_PREFIX + uuid.uuid4().hex


def is_placeholder(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX)


class Spool:
    """The spool file of one (tracking URI, experiment); one instance per file and process.

    ``stem`` (default: ``path`` without ``.jsonl``) names the files shared with the main spool:
    the id map, the failed-writes log, ``.torn`` and the lock (the retry spool of the
    failed-writes log has its own ``path`` and done marker and the main spool's ``stem``).
    """

    _instances: dict[Path, Spool] = {}
    _instances_lock = threading.Lock()

    def __init__(
        self, path: Path, tracking_uri: str, experiment: str, stem: Path | None = None
    ) -> None:
        self.path = Path(path).absolute()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        base = self.path.with_name(self.path.name.removesuffix(".jsonl"))
        self.stem = stem if stem is not None else base
        self.done_path = base.with_name(base.name + ".done")
        self._filelock = FileLock.of(self._side(".lock"))
        #: the thread lock of this spool's files (the store holds it around each write)
        self.lock = self._filelock.rlock
        self._ids: dict[str, str] | None = None
        self._dirty = False
        #: operations the disk refused (full disk), in order, as encoded lines
        self.memory: list[bytes] = []

    @classmethod
    def for_experiment(
        cls, tracking_uri: str, experiment: str, spool_dir: str | os.PathLike[str] | None = None
    ) -> Spool:
        root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        path = spool_path(root, tracking_uri, experiment).absolute()
        with cls._instances_lock:
            if path not in cls._instances:
                cls._instances[path] = cls(path, tracking_uri, experiment)
            return cls._instances[path]

    @staticmethod
    def files(spool_dir: str | os.PathLike[str] | None = None) -> list[Path]:
        """Every spool file under ``spool_dir`` (default: the default spool directory)."""
        root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        return sorted(p for p in root.glob("*/*.jsonl") if not p.name.endswith(_SIDE_NAMES))

    @staticmethod
    def failed_files(spool_dir: str | os.PathLike[str] | None = None) -> list[Path]:
        """Every failed-writes log and interrupted retry of one under ``spool_dir``."""
        root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        return sorted(p for p in root.glob("*/*.jsonl") if p.name.endswith(_SIDE_NAMES))

    @staticmethod
    def header(path: Path) -> dict[str, Any]:
        """The header line of a spool or failed-writes log (``ValueError`` if it has none)."""
        with path.open("rb") as fh:
            first = fh.readline()
        if not is_header(first):
            raise ValueError(f"{path}: no spool header line")
        return dict(json.loads(first))

    def retry_spool(self) -> Spool:
        """The spool that replays this spool's failed-writes log (``--retry-failed``)."""
        path = self._side(".retry.jsonl")
        return Spool(path, self.tracking_uri, self.experiment, stem=self.stem)

    def _side(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._filelock.held():
            yield

    # ------------------------------------------------------------------ the file
    def _new_header(self) -> str:
        head = {"rp_spool": 1, "tracking_uri": self.tracking_uri, "experiment": self.experiment}
        return encode_line({**head, "id": uuid.uuid4().hex}).decode()

    def _open_head(self, create: bool) -> tuple[str | None, int] | None:
        """(file id, header size) of the spool file after setting a torn tail aside; with
        ``create`` a missing file is created (header only, atomically). Lock held."""
        if not cut_torn_tail(self.path, self._side(".torn")):
            if not create:
                return None
            atomic_write_text(self.path, self._new_header())
        with self.path.open("rb") as fh:
            first = fh.readline()
        if not is_header(first):  # never block on it: move the whole file aside
            aside = self._side(f".unreadable-{uuid.uuid4().hex[:8]}")
            _log.error("%s has no readable header: moved to %s", self.path, aside)
            os.replace(self.path, aside)
            return self._open_head(create)
        head = json.loads(first)
        if (head.get("tracking_uri"), head.get("experiment")) != (
            self.tracking_uri,
            self.experiment,
        ):
            raise ValueError(
                f"{self.path} spools {head.get('experiment')!r} on {head.get('tracking_uri')!r}"
                f", not {self.experiment!r} on {self.tracking_uri!r}"
            )
        return head.get("id"), len(first)

    def _start(self, file_id: str | None, header_size: int) -> int:
        """The byte offset up to which the file was delivered (from its done marker)."""
        try:
            done = json.loads(self.done_path.read_text() or "0")
        except (FileNotFoundError, ValueError):
            return header_size
        if isinstance(done, int):  # an older version's marker: operations delivered
            return offset_after(self.path, header_size, done) if file_id is None else header_size
        if not isinstance(done, dict) or done.get("id") != file_id:
            return header_size  # the marker of an earlier file at this path
        return max(header_size, int(done.get("offset", header_size)))

    def _save_done(self, file_id: str | None, offset: int) -> None:
        atomic_write_text(self.done_path, json.dumps({"id": file_id, "offset": offset}))

    def has_pending(self) -> bool:
        """Whether anything waits for delivery: a ``stat``, the header and the done marker
        (constant time, whatever the spool's length)."""
        if self.memory:
            return True
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return False
        with self._locked():
            head = self._open_head(create=False)
            return head is not None and size > self._start(*head)

    def pending(self) -> int:
        """How many operations wait for delivery (reads the undelivered part of the file)."""
        with self._locked():
            head = self._open_head(create=False)
            if head is None:
                return len(self.memory)
            with self.path.open("rb") as fh:
                fh.seek(self._start(*head))
                return len(self.memory) + sum(1 for line in fh if line.endswith(b"\n"))

    def append(self, op: dict[str, Any]) -> bool:
        """Spool one operation (one ``O_APPEND`` write, behind any kept in memory); False when
        the disk refused it: it is then kept in memory, in order, and an error is logged."""
        with self._locked():
            self.memory.append(encode_line(op))
            try:
                self._write_memory()
            except OSError as exc:
                n = len(self.memory)
                if n == 1 or n % 100 == 0:
                    _log.error(
                        "cannot spool MLflow writes to %s (%s): %d write(s) kept in memory "
                        "only, lost if this process ends before the disk or the server is back",
                        self.path,
                        exc,
                        n,
                    )
                return False
            return True

    def _write_memory(self) -> None:
        if self.memory:
            self._open_head(create=True)
            append_bytes(self.path, b"".join(self.memory))
            self.memory.clear()
            self._dirty = True

    def tidy(self) -> None:
        """Remove a spool file that holds nothing to deliver (a header left by a failed
        first append)."""
        with self._locked():
            if not self.memory and self.path.exists() and not self.has_pending():
                self.path.unlink()
                fsync_dir(self.path.parent)
                self.done_path.unlink(missing_ok=True)

    def fsync(self) -> None:
        """Make what was appended so far durable (one ``fsync`` for the batch); first tries
        to write operations kept in memory."""
        with self._locked():
            with contextlib.suppress(OSError):
                self._write_memory()
            if not self._dirty:
                return
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._dirty = False

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
        """Record a placeholder's real run, atomically and durably (before it is used)."""
        with self._locked():
            self._ids = None  # merge with what another process may have recorded
            ids = self._load_ids()
            ids[ref] = run_id
            atomic_write_text(self._side(".ids.json"), json.dumps(ids))

    # ------------------------------------------------------------------ rejected writes
    @property
    def failed_path(self) -> Path:
        return self._side(".failed.jsonl")

    def keep_failed(self, op: dict[str, Any], exc: BaseException) -> None:
        """Append a rejected operation to the failed-writes log, durably (``OSError`` when the
        disk refuses: the caller keeps the operation)."""
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
        _log.error(
            "MLflow write %s (run %s) failed, kept in %s for `raytune-periodic mlflow-sync "
            "--retry-failed`: %s",
            op.get("op"),
            op.get("run", "-"),
            self.failed_path,
            first,
        )
        with self._locked():
            if not self.failed_path.exists():
                atomic_write_text(self.failed_path, self._new_header())
            line = {k: v for k, v in op.items() if k != "error"}
            append_bytes(
                self.failed_path, encode_line({**line, "error": str(exc)[:2000]}), sync=True
            )

    def take_failed(self) -> Spool | None:
        """The spool that replays the failed writes: an interrupted retry if there is one,
        else the failed-writes log moved to it (None: nothing failed)."""
        retry = self.retry_spool()
        with self._locked():
            if not retry.path.exists():
                if not self.failed_path.exists():
                    return None
                os.replace(self.failed_path, retry.path)
                fsync_dir(retry.path.parent)
        return retry

    def failed_count(self) -> int:
        """Operations waiting in the failed-writes log (and an interrupted retry of it)."""
        return count_ops(self.failed_path) + count_ops(self._side(".retry.jsonl"))

    # ------------------------------------------------------------------ delivery
    def _deliver(self, op: dict[str, Any], apply: Apply) -> None:
        try:
            apply(op)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            self.keep_failed(op, exc)

    def drain(self, apply: Apply) -> int:
        """Deliver the pending operations in order; returns how many were delivered.

        Stops and re-raises at the first operation that fails because the server is
        unreachable (the rest stay spooled). An operation that fails otherwise goes to the
        failed-writes log and is skipped, so one bad operation cannot block the rest; the
        position moves past an operation only once it is delivered or durably kept there.
        A delivered file is removed; operations kept in memory are delivered last.
        """
        with self._locked():
            delivered = self._drain_file(apply)
            while self.memory:
                self._deliver(json.loads(self.memory[0]), apply)
                self.memory.pop(0)
                delivered += 1
        return delivered

    def _drain_file(self, apply: Apply) -> int:
        head = self._open_head(create=False)
        if head is None:
            return 0
        file_id, start = head[0], self._start(*head)
        pos, delivered, unsaved = start, 0, 0
        try:
            with self.path.open("rb") as fh:
                fh.seek(start)
                for raw in fh:
                    try:
                        op = json.loads(raw)
                    except ValueError:
                        set_aside(self._side(".torn"), raw, self.path, "unparseable line")
                    else:
                        self._deliver(op, apply)
                    pos += len(raw)
                    delivered += 1
                    unsaved += 1
                    if unsaved >= SAVE_EVERY:
                        self._save_done(file_id, pos)
                        unsaved = 0
        finally:
            if pos >= os.stat(self.path).st_size:
                self.path.unlink()  # all delivered; the next file gets a new id
                fsync_dir(self.path.parent)
                self.done_path.unlink(missing_ok=True)
            elif unsaved:
                self._save_done(file_id, pos)
        return delivered
