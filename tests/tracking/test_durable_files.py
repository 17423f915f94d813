"""raytune_periodic.durable: atomic + durable replacement, single-write O_APPEND lines."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path

import pytest

from raytune_periodic import durable
from raytune_periodic.durable import append_line, atomic_write_text, split_complete


def _spy_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each ``os.fsync`` call flushed (a file or a directory)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_atomic_write_text_replaces_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state" / "rp_state.json"
    atomic_write_text(target, '{"a": 1}')
    synced = _spy_fsync(monkeypatch)
    atomic_write_text(target, '{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert os.listdir(target.parent) == ["rp_state.json"]  # no temp file left
    # the new content (through its temp file) and then the directory entry were fsync-ed
    assert len(synced) == 2 and synced[-1] == str(target.parent), synced
    assert synced[0].startswith(str(target.parent / ".rp_state.json."))


def test_atomic_write_text_keeps_old_content_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ids.json"
    atomic_write_text(target, "old")

    def crash(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["ids.json"]


def test_append_line_is_one_o_append_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    opened: list[int] = []
    writes: list[int] = []
    real_open, real_write = os.open, os.write

    def spy_open(p: object, flags: int, *a: object) -> int:
        fd = real_open(p, flags, *a)
        if str(p) == str(path):
            opened.append(flags)
        return fd

    def spy_write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "write", spy_write)
    big = "x" * 1_000_000  # far above any stdio buffer: one syscall all the same
    append_line(path, big)
    append_line(path, "second")
    assert all(flags & os.O_APPEND for flags in opened) and len(opened) == 2
    assert writes == [len(big) + 1, len("second") + 1]
    assert path.read_text() == big + "\nsecond\n"
    with pytest.raises(ValueError):
        append_line(path, "two\nlines")


def test_short_write_on_full_disk_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.jsonl"
    append_line(path, "kept")
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # the disk took 5 bytes ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... and then no more

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as info:
        append_line(path, "this line does not fit")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == b"kept\n"  # no torn line left behind


def _appender(path: str, tag: int, n: int, size: int) -> None:
    for i in range(n):
        durable.append_line(path, f"{tag}:{i}:" + chr(65 + tag) * size, sync=False)


def test_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    """Four processes append 256 KiB lines to one file at once: every line stays whole."""
    path = tmp_path / "shared.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(str(path), t, 25, 256 * 1024)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines, torn = split_complete(path.read_bytes())
    assert torn == b"" and len(lines) == 100
    for line in lines:
        tag, _, body = line.split(b":", 2)
        assert body == bytes([65 + int(tag)]) * (256 * 1024)


def test_split_complete() -> None:
    assert split_complete(b"a\nb\n") == ([b"a", b"b"], b"")
    assert split_complete(b'a\nb\n{"op":') == ([b"a", b"b"], b'{"op":')
    assert split_complete(b"torn") == ([], b"torn")
