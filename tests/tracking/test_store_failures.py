"""MlflowStore's write path never drops a write: rejected writes go to the failed-writes log
(replayed by `mlflow-sync --retry-failed`), writes the disk refuses stay in memory until the
disk or the server takes them, the queue to the writer thread is bounded (back-pressure), and a
torn spool line does not block `mlflow-sync`. SQLite MLflow, no server process, no Ray."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from store_helpers import fill_disk_under, make_store, record, steps, tree

from raytune_periodic.tracking.sync import sync_spools


def _reject_step(store, step: int, times: int = 1) -> list[int]:  # noqa: ANN001
    """Make the server refuse the ``log_batch`` holding ``step`` ``times`` times."""
    rejected: list[int] = []

    def reject(name: str, args: tuple, kwargs: dict) -> None:
        metrics = kwargs.get("metrics") or []
        hit = name == "log_batch" and any(m.step == step for m in metrics)
        if hit and len(rejected) < times:
            rejected.append(step)
            raise RuntimeError("INTERNAL_ERROR: database is locked")

    store.client.reject = reject
    return rejected


def test_rejected_write_is_kept_and_retry_failed_replays_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _, _, trial = tree(store)
    # refused every time by this store's server (the writer's merged batch and its one-by-one
    # retry, ``delivery.py``); ``mlflow-sync`` below has its own client, which takes it
    rejected = _reject_step(store, 3, times=100)
    for step in range(6):
        store.log_step(trial, step, record(step))
    with pytest.raises(RuntimeError, match="retry-failed"):
        store.flush()  # loud, and it says where the write is and how to replay it
    assert set(rejected) == {3}
    assert steps(store, trial) == [0, 1, 2, 4, 5]  # the writer went on after the rejection
    assert store.spool.failed_count() == 1

    lines: list[str] = []
    assert sync_spools(tmp_path / "spool", out=lines.append) == 1  # counted as left
    assert any("--retry-failed" in line for line in lines), lines
    assert sync_spools(tmp_path / "spool", retry_failed=True, out=lines.append) == 0, lines
    assert steps(store, trial) == list(range(6))
    assert store.spool.failed_count() == 0
    assert not list((tmp_path / "spool").glob("*/*.failed.jsonl"))


def test_retry_failed_keeps_what_fails_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, synchronous=True)
    _, _, trial = tree(store)
    _reject_step(store, 1)
    store.log_step(trial, 0, record(0))
    with pytest.raises(RuntimeError):  # synchronous: the caller sees the failure ...
        store.log_step(trial, 1, record(1))
    assert store.spool.failed_count() == 1  # ... and the write is kept all the same
    import raytune_periodic.tracking.sync as sync_mod

    real_store = sync_mod._store

    def rejecting_store(*args: object) -> object:  # the server refuses it once more
        s = real_store(*args)
        s.client = type(store.client)(s.client)
        _reject_step(s, 1)
        return s

    monkeypatch.setattr(sync_mod, "_store", rejecting_store)
    out: list[str] = []
    assert sync_spools(tmp_path / "spool", retry_failed=True, out=out.append) == 1
    assert "1 failed again" in out[-1], out
    monkeypatch.undo()
    assert sync_spools(tmp_path / "spool", retry_failed=True, out=out.append) == 0, out
    assert steps(store, trial) == [0, 1]


def test_queue_is_bounded_and_applies_back_pressure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RP_MLFLOW_QUEUE_MAX", "4")
    store = make_store(tmp_path)
    _, _, trial = tree(store)
    gate = threading.Event()
    submit = store._submit_group  # the writer's entry point (a merged group of writes)

    def slow_submit(group: list) -> None:
        gate.wait(30)
        submit(group)

    store._submit_group = slow_submit  # type: ignore[method-assign]
    caller = threading.Thread(
        target=lambda: [store.log_step(trial, s, record(s)) for s in range(10)], daemon=True
    )
    caller.start()
    time.sleep(0.5)
    assert caller.is_alive(), "the caller ran ahead of a stuck writer without bound"
    assert store._queue.qsize() == 4
    gate.set()
    caller.join(30)
    assert not caller.is_alive()
    assert steps(store, trial) == list(range(10))


def _full_disk_outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> tuple:  # noqa: ANN001
    """An outage during which the spool's disk is full: 10 steps are kept in memory."""
    store = make_store(tmp_path)
    _, _, trial = tree(store)
    store.flush()
    store.client.down = True
    disk_full = fill_disk_under(monkeypatch, tmp_path / "spool")
    with caplog.at_level(logging.ERROR):
        for step in range(10):
            store.log_step(trial, step, record(step))
        store.flush(strict=False)
    assert "cannot spool MLflow writes" in caplog.text  # loud
    assert len(store.spool.memory) == 10 and store.spool.pending() == 10
    with pytest.raises(RuntimeError, match="only in memory"):
        store.flush()  # close() raises too: nothing is lost silently
    return store, trial, disk_full


def test_full_disk_then_server_back_delivers_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, trial, _ = _full_disk_outage(tmp_path, monkeypatch, caplog)
    store.client.down = False  # the disk is still full
    assert store.sync() == 0
    assert steps(store, trial) == list(range(10))
    store.close()


def test_full_disk_then_disk_back_spools_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, trial, disk_full = _full_disk_outage(tmp_path, monkeypatch, caplog)
    disk_full[0] = False
    for step in range(10, 12):
        store.log_step(trial, step, record(step))
    store.flush(strict=False)
    assert not store.spool.memory
    assert store.spool.pending() == 12  # all on disk now, in order
    store.client.down = False
    assert store.sync() == 0
    assert steps(store, trial) == list(range(12))


def test_torn_spool_line_does_not_block_mlflow_sync(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _, method, _ = tree(store)
    store.flush()
    store.client.down = True  # an outage: a new trial and its steps are spooled
    t1 = store.start_trial(method, "inv", "PD", "t1", {"lr": 0.2})
    for step in range(5):
        store.log_step(t1, step, record(step))
    store.flush(strict=False)
    with store.spool.path.open("ab") as fh:  # the driver died in the middle of a write
        fh.write(b'{"op":"log_batch","run":"' + t1.encode() + b'","metr')
    out: list[str] = []
    assert sync_spools(tmp_path / "spool", out=out.append) == 0, out
    assert steps(store, t1) == list(range(5))
    torn = list((tmp_path / "spool").glob("*/*.torn"))
    assert len(torn) == 1 and b'"metr' in torn[0].read_bytes()


def test_offline_write_cost_does_not_grow_with_the_spool(tmp_path: Path) -> None:
    """A long outage must not slow each write down: with 60,000 operations spooled a write
    still costs well under 5 ms (the old pending check re-read and parsed the whole file on
    every write: quadratic over an outage)."""
    store = make_store(tmp_path, synchronous=True)
    _, _, trial = tree(store)
    store.client.down = True
    store.log_step(trial, 0, record(0))  # the outage begins: spooled
    line = json.dumps({"op": "log_batch", "run": trial, "metrics": [], "pad": "p" * 100})
    with store.spool.path.open("ab") as fh:  # hours of spooled steps
        fh.write((line + "\n").encode() * 60_000)
    began = time.perf_counter()
    for step in range(1, 101):
        store.log_step(trial, step, record(step))
    per_write = (time.perf_counter() - began) / 100
    assert per_write < 0.005, f"{per_write * 1000:.2f} ms per write while offline"
    assert store.spool.pending() == 60_101


def _twin_creating(store) -> None:  # noqa: ANN001
    """``create_run`` as MLflow's HTTP client can do it: the server creates the run, the
    response is lost, the client retries the POST and the server creates a second run."""
    real = store.client._real.create_run

    def create_run(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # the lost response
        return real(*args, **kwargs)

    store.client._real.create_run = create_run


def _active_trial_runs(store, trial_id: str) -> list:  # noqa: ANN001
    found = store.client._real.search_runs(
        [store.experiment_id], f"tags.`rp.trial_id` = '{trial_id}'"
    )
    return [r for r in found if r.info.lifecycle_stage == "active"]


def test_retried_run_creation_leaves_one_run(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.dedupe_creates = True  # what an http(s) store does (no HTTP retries on SQLite)
    _, method, _ = tree(store)
    _twin_creating(store)
    t1 = store.start_trial(method, "inv", "PD", "t1", {"lr": 0.2})
    for step in range(3):
        store.log_step(t1, step, record(step))
    store.flush()
    runs = _active_trial_runs(store, "t1")
    assert [r.info.run_id for r in runs] == [t1]  # the empty twin was deleted
    assert steps(store, t1) == [0, 1, 2]
    # a --resume re-attaches to the run with the data, not to an empty twin
    resumed = make_store(tmp_path)
    assert resumed.start_trial(method, "inv", "PD", "t1", {"lr": 0.2}) == t1


def test_run_created_during_a_lost_response_is_reused_on_replay(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _, method, _ = tree(store)
    real = store.client._real.create_run

    def created_then_lost(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # the server created it ...
        raise ConnectionError("read timed out")  # ... the answer never came: spooled

    store.client._real.create_run = created_then_lost
    t1 = store.start_trial(method, "inv", "PD", "t1", {"lr": 0.2})
    for step in range(3):
        store.log_step(t1, step, record(step))
    store.flush(strict=False)
    store.client._real.create_run = real
    assert store.sync() == 0
    runs = _active_trial_runs(store, "t1")
    assert len(runs) == 1 and steps(store, t1) == [0, 1, 2]


def test_the_writer_merges_queued_batches_of_a_run_and_keeps_only_a_bad_one(
    tmp_path: Path,
) -> None:
    """Periods queued while the writer is busy go as one ``log_batch`` per run (fewer SQL
    transactions for the driver); a merged batch the server refuses is retried one by one, so
    only the write it refuses again is kept aside, and every other step arrives once."""
    store = make_store(tmp_path)
    _, _, trial = tree(store)
    _, _, other = tree(store, "t1")
    calls: list[list[int]] = []

    def count(name: str, args: tuple, kwargs: dict) -> None:
        if name == "log_batch" and kwargs.get("metrics"):
            calls.append(sorted({m.step for m in kwargs["metrics"]}))
            if any(m.step == 13 for m in kwargs["metrics"]):
                raise RuntimeError("INVALID_PARAMETER_VALUE: refused")

    store.client.reject = count
    with store.spool.lock:  # the writer waits here with its first write: the rest queue up
        for step in range(20):
            store.log_step(trial, step, record(step))
        store.log_step(other, 0, record(0))  # another run: not merged into the trial's
        for step in range(20, 25):
            store.log_step(trial, step, record(step))
    with pytest.raises(RuntimeError, match="retry-failed"):
        store.flush()
    assert steps(store, trial) == [s for s in range(25) if s != 13]
    assert steps(store, other) == [0]
    assert store.spool.failed_count() == 1
    assert len(calls) < 25 and any(len(c) > 1 for c in calls), calls
    assert [13] in calls  # the one-by-one retry of the refused merged batch
    # in order: no batch holds steps from both sides of the other run's write
    assert not any(min(c) < 20 <= max(c) for c in calls if len(c) > 1), calls
