"""The MLflow tracking server down for part of a search: writes are spooled locally and
delivered exactly once when it returns (next contact, or `raytune-periodic mlflow-sync`).
Each test runs against a SQLite-backed server and against cluster.yaml's stack (PostgreSQL
backend store, S3 artifact store: tests/mlflow_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.integration

EXPERIMENT = "outage"
FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "RP_MLFLOW_RETRY_S": "0.5",
}


@pytest.fixture(params=["sqlite", "postgres+s3"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MlflowServer]:
    for key, val in FAST_HTTP.items():
        monkeypatch.setenv(key, val)
    root = tmp_path / "server"
    root.mkdir()
    if request.param == "sqlite":
        srv = MlflowServer(root, free_port())
    else:  # a fresh database and bucket prefix on the session's PostgreSQL and S3
        srv = request.getfixturevalue("postgres_s3").server(root, request.node.name)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _record(step: int) -> dict[str, float]:
    return {"period": float(step), "epoch": step / 4, "val_f1": 0.5 + step / 100, "dropout": 0.1}


def _assert_exactly_once(server: MlflowServer, n_trials: int, periods: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    kinds = [r.data.tags.get("rp.kind") for r in runs]
    assert kinds.count("invocation") == 1 and kinds.count("method") == 1, kinds
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    assert sorted(r.data.tags["rp.trial_id"] for r in trials) == [
        f"t{i}" for i in range(n_trials)
    ]  # no orphan or duplicate runs
    method_id = next(r.info.run_id for r in runs if r.data.tags.get("rp.kind") == "method")
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == method_id
        assert r.info.status == "FINISHED" and r.data.tags["rp.status"] == "ok"
        for key in ("val_f1", "period", "dropout"):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(periods)), (r.data.tags["rp.trial_id"], key, steps)
        assert "best_val_f1" in r.data.metrics
        assert any(f.path == "schedule.csv" for f in client.list_artifacts(r.info.run_id))
    _assert_in_artifact_store(server, trials)


def _assert_in_artifact_store(server: MlflowServer, trials: list[Any]) -> None:
    """Each trial's schedule.csv is in the artifact store itself (the S3 bucket, listed with
    boto3, or the local folder): the server stored it there, not somewhere else."""
    stored = server.stored_artifacts()
    for r in trials:
        wanted = f"{r.info.experiment_id}/{r.info.run_id}/artifacts/schedule.csv"
        assert wanted in stored, (server.artifacts, wanted, stored[:20])


# both deliveries against SQLite; against PostgreSQL + S3 the automatic one (mlflow-sync sends
# the server the same requests from another process: ~20 s of CI for no new server path)
@pytest.mark.parametrize(
    ("server", "deliver"),
    [("sqlite", "automatic"), ("sqlite", "mlflow-sync"), ("postgres+s3", "automatic")],
    indirect=["server"],
)
def test_server_outage_spools_and_delivers_exactly_once(
    server: MlflowServer, tmp_path: Path, deliver: str
) -> None:
    from raytune_periodic.tracking import MlflowStore

    spool_dir = tmp_path / "spool"
    periods = 12
    store = MlflowStore(server.url, EXPERIMENT, spool_dir=spool_dir)
    inv = store.start_invocation("inv1", {"name": EXPERIMENT}, {"seeds": "[0]"})
    method = store.start_method(inv, "inv1", "PD", "grid", {})
    t0 = store.start_trial(method, "inv1", "PD", "t0", {"lr": 0.1})
    for step in range(4):
        store.log_step(t0, step, _record(step))
    store.flush()

    server.stop()
    # server down: logging keeps going (steps of t0, a new trial t1, finishes) without blocking
    began = time.monotonic()
    t1 = store.start_trial(method, "inv1", "PD", "t1", {"lr": 0.2})
    assert store.history_records(t1) == []
    for step in range(4, periods):
        store.log_step(t0, step, _record(step))
    for step in range(periods):
        store.log_step(t1, step, _record(step))
    assert not store.log_step(t1, 3, _record(3))  # still exactly once locally
    for run in (t0, t1):
        store.finish_trial(run, [{**_record(s), "step": float(s)} for s in range(periods)], "ok")
    store.finish_run(method)
    store.finish_run(inv)
    store.flush(strict=False)
    assert time.monotonic() - began < 30, "the caller blocked on the dead server"
    spooled = store.spool.pending()
    assert spooled > 0 and store.spool.path.exists()

    server.start()  # same port, same database
    if deliver == "automatic":
        deadline = time.monotonic() + 30
        while store.sync():  # the store's next contact delivers the spool
            assert time.monotonic() < deadline
            time.sleep(0.2)
    else:
        env = {**os.environ, **FAST_HTTP}
        args = [sys.executable, "-m", "raytune_periodic.cli", "mlflow-sync"]
        out = subprocess.run(
            [*args, "--spool", str(spool_dir)], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"delivered {spooled}, left 0" in out.stdout, out.stdout
    assert not store.spool.path.exists()
    _assert_exactly_once(server, 2, periods)

    # delivering again (a second sync, a crash between delivery and bookkeeping) adds nothing
    for op in [{"op": "log_batch", "run": t0, "step": 5, "metrics": [["val_f1", 0.9, 1, 5]]}]:
        store.spool.append(op)
    assert store.sync() == 0
    _assert_exactly_once(server, 2, periods)


TUNE_CONFIG = {
    "name": EXPERIMENT,
    "seeds": [0],
    "budget": {"periods": 12, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 150},
        "model": {"name": "mlp", "hidden": [64]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 10, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}},
    },
    "tune": {"checkpoint_every": 3, "verbose": 0, "num_cpus": 2},
}


@pytest.mark.slow
def test_tune_search_survives_server_outage(server: MlflowServer, tmp_path: Path) -> None:
    import yaml
    from mlflow import MlflowClient

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TUNE_CONFIG))
    spool_dir = tmp_path / "spool"
    env = {**os.environ, **FAST_HTTP, "RP_MLFLOW_SPOOL": str(spool_dir)}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "raytune_periodic.cli"]
    driver = subprocess.Popen(
        [*cli, "run", str(cfg), "--mlflow-uri", server.url, "--storage-path",
         str(tmp_path / "ray")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while server.metric_rows("val_f1") < 3:  # the search is under way
            assert driver.poll() is None, driver.stdout.read()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no step reached the server"
            time.sleep(0.2)
        server.stop()
        out, _ = driver.communicate(timeout=300)  # the search finishes without the server
        assert driver.returncode == 0, out[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    assert list(spool_dir.glob("*/*.jsonl")), "nothing was spooled"

    server.start()
    sync = subprocess.run(
        [*cli, "mlflow-sync", "--spool", str(spool_dir)], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert not list(spool_dir.glob("*/*.jsonl"))

    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    kinds = [r.data.tags.get("rp.kind") for r in runs]
    assert kinds.count("invocation") == 1 and kinds.count("method") == 2, kinds
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    assert sorted(r.data.tags["rp.method"] for r in trials) == ["BL", "BL", "PD", "PD"]
    for r in runs:
        assert r.info.status == "FINISHED", r.data.tags
    for r in trials:
        assert r.data.tags["rp.status"] == "ok"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
        assert steps == list(range(12)), (r.data.tags["rp.method"], steps)
    _assert_in_artifact_store(server, trials)
