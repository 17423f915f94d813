"""Durable local files (standard library only).

Two primitives for state that must survive a crash of the process or of the machine:

- ``atomic_write_text(path, text)``: the file holds either the old or the new text, never a
  mix, and the new text is on disk when the call returns (temp file in the same directory,
  ``fsync``, ``os.replace``, ``fsync`` of the directory so the rename itself is durable).
- ``append_line(path, line)``: one line added with a single ``write`` on an ``O_APPEND``
  descriptor, so concurrent appenders (threads or processes) never interleave inside a line;
  a write cut short (full disk) is rolled back to the previous end of the file.

A process that is killed loses nothing that was written (the page cache outlives it); ``fsync``
protects against the machine going down. Readers of appended files must still survive a torn
last line (a power cut during the write): ``split_complete`` separates it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["append_bytes", "append_line", "atomic_write_text", "fsync_dir", "split_complete"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory entry changes in ``path`` (a created, renamed or removed file)
    durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``text`` atomically and durably (temp, fsync, replace, fsync dir)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            _write_all(fd, text.encode())
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def append_bytes(path: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> int:
    """Append ``data`` with one ``O_APPEND`` write (creating the file); returns the file's
    size before the write. A short or failed write is truncated away and raises ``OSError``.
    ``sync``: ``fsync`` before returning (and the directory when the file was created)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    existed = os.path.exists(path)
    fd = os.open(path, flags, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # no torn line left behind
            raise
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync and not existed:
        fsync_dir(Path(path).parent)
    return start


def append_line(path: str | os.PathLike[str], line: str, *, sync: bool = True) -> None:
    """Append ``line`` (one line: no newline inside) plus ``\\n`` as one ``O_APPEND`` write;
    durable on return unless ``sync=False``."""
    if "\n" in line or "\r" in line:
        raise ValueError("append_line takes a single line (no newline characters)")
    append_bytes(path, (line + "\n").encode(), sync=sync)


def split_complete(data: bytes) -> tuple[list[bytes], bytes]:
    """``data`` read from an appended file → (its complete lines, the torn tail after the
    last newline: ``b""`` when the file ends with a newline)."""
    head, sep, tail = data.rpartition(b"\n")
    if not sep:
        return [], tail
    return head.split(b"\n"), tail


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` call; a regular file only writes less when the disk fills up, and then
    the rest is attempted so the error (ENOSPC) surfaces instead of a silent short write."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file does not return 0 for a non-empty write
            raise OSError("write returned 0")
        view = view[n:]
