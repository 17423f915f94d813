"""Shared fixtures: one tiny real Tune + SQLite MLflow experiment for the report tests, and
cluster.yaml's tracking stack (PostgreSQL + S3) started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for the in-process tiny models: beside Ray workers on a 2-core
    machine, torch's default threads only contend (a measured 2-10x on the tiny-model tests)."""
    import torch

    torch.set_num_threads(1)


#: LeNet on digits, two methods, one seed, one trial each, 4 periods (~20 s on 2 CPUs)
REPORT_CONFIG: dict[str, Any] = {
    "name": "report-itest",
    "seeds": [0],
    "budget": {"periods": 4, "trials": 1},
    "base": {
        "dataset": {"name": "digits", "train_size": 150},
        "model": {"name": "lenet"},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 3, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}}},
    },
    "tune": {"checkpoint_every": 2, "verbose": 0, "num_cpus": 2},
}


@pytest.fixture(scope="session")
def report_experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs ``REPORT_CONFIG`` once per session: ``{"uri", "tmp", "outcome", "name"}``."""
    import ray

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    tmp: Path = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = validate_config(REPORT_CONFIG)
    try:
        outcome = run_experiment(cfg, storage_path=str(tmp / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
    return {"uri": uri, "tmp": tmp, "outcome": outcome, "name": REPORT_CONFIG["name"]}


@pytest.fixture(scope="session")
def postgres_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A PostgreSQL server and an S3 server (moto) on this machine, once per session:
    ``postgres_s3.server(root, name)`` is an MLflow server on a fresh database and bucket
    prefix (tests/mlflow_server.py)."""
    for module in ("psycopg", "boto3", "moto"):
        pytest.importorskip(module, reason="the test extra (PostgreSQL + S3 tracking stack)")
    from mlflow_server import PostgresS3, postgres_bin_dir

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (pip install pgserver, or Debian's postgresql)")
    stack = PostgresS3(tmp_path_factory.mktemp("postgres_s3"), bin_dir)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
