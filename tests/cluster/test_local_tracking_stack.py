"""`launch/mlflow_server.sh --postgres-s3`: the cluster's tracking stack (PostgreSQL store, S3
artifacts) on one machine, for real: it starts, stores a run in PostgreSQL and its artifact in
the S3 bucket, stops everything it started on SIGTERM, and finds its database again on the next
start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import (
    FAKE_AWS,
    free_port,
    healthy,
    postgres_bin_dir,
    runnable_postgres,
    s3_client,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "mlflow_server.sh"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short folder (PostgreSQL's socket path) that PostgreSQL's user can reach (as root the
    script runs it as ``nobody``; pytest's tmp folders are private to root)."""
    for module in ("psycopg", "boto3", "moto", "psutil"):
        pytest.importorskip(module, reason="the test extra (PostgreSQL + S3 tracking stack)")
    if postgres_bin_dir() is None:
        pytest.skip("no PostgreSQL binaries (pip install pgserver, or Debian's postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="rp-stack-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder / "srv"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(data: Path, port: int, s3_port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
    }
    for key in (*FAKE_AWS, "MLFLOW_S3_ENDPOINT_URL"):  # the script sets what it needs
        env.pop(key, None)
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    env["PG_BIN"] = str(runnable_postgres(bin_dir, data.parent / "install"))
    log = (data.parent / "script.log").open("a")
    proc = subprocess.Popen(
        [str(SCRIPT), "--postgres-s3", "--port", str(port), "--s3-port", str(s3_port),
         "--data-dir", str(data)],
        env=env, stdout=log, stderr=log, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not healthy(f"http://127.0.0.1:{port}"):
        assert proc.poll() is None, (data.parent / "script.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the stack never became healthy"
        time.sleep(0.3)
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the script alone: it must stop MLflow, moto and PostgreSQL itself."""
    import psutil

    started = psutil.Process(proc.pid).children(recursive=True)
    assert len(started) >= 3, started  # PostgreSQL (+ its processes), moto, MLflow
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 143
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.integration
@pytest.mark.slow
def test_postgres_s3_stack_stores_runs_in_postgres_and_artifacts_in_s3(data_dir: Path) -> None:
    import psycopg
    from mlflow import MlflowClient

    port, s3_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(data_dir, port, s3_port)
    try:
        client = MlflowClient(url)
        exp = client.create_experiment("laptop")
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "val_f1", 0.75, step=3)
        schedule = data_dir.parent / "schedule.csv"
        schedule.write_text("step,dropout\n0,0.1\n")
        client.log_artifact(run, str(schedule))

        # the run is in PostgreSQL (peer authentication over the owner-only socket folder)
        pgdata = data_dir / "postgres"
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        with psycopg.connect(f"postgresql:///mlflow?host={pgdata}&port=5432") as con:
            rows = con.execute(
                "SELECT value, step FROM metrics WHERE run_uuid = %s AND key = 'val_f1'", (run,)
            ).fetchall()
        assert rows == [(0.75, 3)]
        # and its artifact in the S3 bucket, listed with boto3 (not through MLflow)
        listing = s3_client(f"http://127.0.0.1:{s3_port}").list_objects_v2(Bucket="mlflow")
        keys = [obj["Key"] for obj in listing.get("Contents", [])]
        assert f"mlartifacts/{exp}/{run}/artifacts/schedule.csv" in keys, keys
    finally:
        _stop(proc)

    proc = _start(data_dir, port, s3_port)  # the same data folder: the database is kept
    try:
        again = MlflowClient(url).get_experiment_by_name("laptop")
        assert again is not None and again.experiment_id == exp
        assert MlflowClient(url).get_metric_history(run, "val_f1")[0].value == 0.75
    finally:
        _stop(proc)


def test_postgres_s3_refuses_a_backend_store_uri(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(SCRIPT), "--postgres-s3", "--backend-store-uri", "sqlite:///x.db",
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "--backend-store-uri" in out.stderr
