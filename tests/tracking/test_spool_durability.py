"""The spool file itself: one O_APPEND write per operation, torn lines set aside (also after a
real SIGKILL mid-write), state files replaced atomically and durably, stale done markers
ignored, and one file per exact (tracking URI, experiment). No MLflow, no Ray. (The pending
check's cost is tested through the store: test_store_failures.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raytune_periodic.tracking.spool import Spool, spool_path

URI, EXP = "http://127.0.0.1:5000", "exp"


def _spool(tmp: Path, uri: str = URI, exp: str = EXP) -> Spool:
    return Spool(spool_path(tmp, uri, exp), uri, exp)


def _op(i: int, pad: int = 0) -> dict[str, Any]:
    return {
        "op": "log_batch",
        "run": "r",
        "step": i,
        "metrics": [["x", 1.0, 1, i]],
        "pad": "p" * pad,
    }


def _drain(spool: Spool) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    spool.drain(got.append)
    return got


def test_each_operation_is_one_o_append_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    spool.append(_op(0))  # creates the file (header)
    flags_seen: list[int] = []
    writes: list[int] = []
    real_open, real_write = os.open, os.write

    def spy_open(path: Any, flags: int, *a: Any) -> int:
        if str(path) == str(spool.path):
            flags_seen.append(flags)
        return real_open(path, flags, *a)

    def spy_write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(spool.path):
            writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "write", spy_write)
    big = _op(1, pad=2_000_000)  # a finish_trial of a long trial is this kind of size
    assert spool.append(big)
    monkeypatch.undo()
    line = json.dumps(big, separators=(",", ":")) + "\n"
    assert writes == [len(line.encode())]  # one write syscall, the whole line
    assert flags_seen and all(f & os.O_APPEND for f in flags_seen if f & os.O_WRONLY)
    assert [op["step"] for op in _drain(spool)] == [0, 1]


def test_torn_last_line_is_set_aside_and_never_blocks(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for i in range(3):
        spool.append(_op(i))
    with spool.path.open("ab") as fh:  # a crash cut the last write short
        fh.write(b'{"op":"log_batch","run":"r","st')
    fresh = _spool(tmp_path)  # the next process
    assert fresh.pending() == 3
    fresh.append(_op(3))
    assert [op["step"] for op in _drain(fresh)] == [0, 1, 2, 3]
    assert not fresh.path.exists()
    torn = fresh.path.with_name(fresh.path.name.removesuffix(".jsonl") + ".torn")
    assert torn.read_bytes() == b'{"op":"log_batch","run":"r","st\n'


def test_unparseable_middle_line_and_unreadable_header_are_set_aside(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_op(0))
    with spool.path.open("ab") as fh:
        fh.write(b"\x00\x00garbage\n")
    spool.append(_op(1))
    assert [op["step"] for op in _drain(spool)] == [0, 1]
    spool.path.write_bytes(b"not a header\n" + json.dumps(_op(9)).encode() + b"\n")
    assert not spool.has_pending()  # moved aside, logged; the spool goes on
    spool.append(_op(2))
    assert [op["step"] for op in _drain(spool)] == [2]
    assert list(tmp_path.glob("*/*.unreadable-*"))


KILL_SCRIPT = """
import sys
from raytune_periodic.tracking.spool import Spool, spool_path
from pathlib import Path
root, uri, exp = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
spool = Spool(spool_path(root, uri, exp), uri, exp)
i = 0
while True:
    spool.append({"op": "log_batch", "run": "r", "step": i, "pad": "p" * 4_000_000})
    i += 1
"""


def test_sigkill_during_spool_writes_loses_no_complete_operation(tmp_path: Path) -> None:
    """A real driver killed while it spools 4 MB operations: every complete operation is
    delivered in order, a torn one (if the kill cut a write) is set aside, and the spool
    takes new writes. (The kill tears a write in about 2 runs of 3 here; the deterministic
    torn-line tests above cover the rest.)"""
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), URI, EXP])
    path = spool_path(tmp_path, URI, EXP)
    deadline = time.monotonic() + 60
    while not path.exists() or path.stat().st_size < 30_000_000:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    spool = _spool(tmp_path)
    spool.append({"op": "log_batch", "run": "r", "step": "after"})
    got = [op["step"] for op in _drain(spool)]
    assert got[-1] == "after" and got[:-1] == list(range(len(got) - 1)) and len(got) > 7


def _fsync_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_state_files_are_replaced_atomically_and_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    for i in range(3):
        spool.append(_op(i))
    synced = _fsync_spy(monkeypatch)
    spool.set_id("rp-spool-x", "run-1")
    folder = str(spool.path.parent)
    assert synced[-1] == folder and ".ids.json" in synced[-2], synced  # file, then directory
    assert json.loads(spool.path.with_name(spool.path.name[:-6] + ".ids.json").read_text()) == {
        "rp-spool-x": "run-1"
    }
    synced.clear()
    calls = 0

    def apply(op: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("server gone again")

    with pytest.raises(ConnectionError):
        spool.drain(apply)
    # the done marker (2 operations delivered) was written through a temp file and fsync-ed
    assert any(".done" in s for s in synced) and synced[-1] == folder, synced
    assert [op["step"] for op in _drain(spool)] == [2]
    assert [p.name for p in spool.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_done_marker_of_an_earlier_file_is_ignored(tmp_path: Path) -> None:
    """A marker left behind by an earlier spool file at the same path (a crash between removing
    the delivered file and its marker) must not skip the new file's operations."""
    spool = _spool(tmp_path)
    done = spool.path.with_name(spool.path.name.removesuffix(".jsonl") + ".done")
    done.parent.mkdir(parents=True)
    done.write_text("5")  # the earlier file had 5 operations delivered
    for i in range(3):
        spool.append(_op(i))
    assert spool.pending() == 3
    assert [op["step"] for op in _drain(spool)] == [0, 1, 2]


def test_one_file_per_exact_experiment(tmp_path: Path) -> None:
    names = ["a/b", "a_b", "a b", "a:b"]
    paths = {spool_path(tmp_path, URI, n) for n in names}
    assert len(paths) == len(names)  # one slug, four experiments, four files
    uris = ["http://h:5000", "http://h_5000", "http//h:5000"]
    assert len({spool_path(tmp_path, u, EXP) for u in uris}) == len(uris)
    wrong = Spool(spool_path(tmp_path, URI, "a/b"), URI, "a_b")  # a file of another experiment
    _spool(tmp_path, exp="a/b").append(_op(0))
    with pytest.raises(ValueError, match="spools"):
        wrong.append(_op(1))
