"""The driver killed mid-search: ``run --resume`` finishes it into the same MLflow runs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from driver_helpers import cli, method_steps

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "name": "resumetest",
    "seeds": [0],
    "budget": {"periods": 16, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [64]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 10, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}},
    },
    "tune": {"checkpoint_every": 3, "verbose": 0},
}


def test_driver_killed_then_resume_finishes_with_every_period_once(tmp_path: Path) -> None:
    import ray
    from mlflow import MlflowClient

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    storage = tmp_path / "ray"
    # the cluster outlives the driver, as on a real head node
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False)
    address = ctx.address_info["gcs_address"]
    args = ["run", str(cfg_path), "--mlflow-uri", uri, "--storage-path", str(storage),
            "--address", address]  # fmt: skip
    try:
        driver = cli(*args, cwd=tmp_path)
        deadline = time.monotonic() + 240
        while method_steps(db, "PD") < 6:  # PD is mid-run: some periods logged, not all
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "PD never started"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        state = json.loads((storage / "resumetest" / "rp_state.json").read_text())
        assert state["tuners"] == {"BL": "done"} and not state.get("finished")

        resumed = cli(*args, "--resume", cwd=tmp_path)
        out, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, out[-3000:]
    finally:
        ray.shutdown()

    state = json.loads((storage / "resumetest" / "rp_state.json").read_text())
    assert state["finished"] and state["tuners"] == {"BL": "done", "PD": "done"}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resumetest")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    kinds = [r.data.tags.get("rp.kind") for r in runs]
    assert kinds.count("invocation") == 1 and kinds.count("method") == 2  # re-attached
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    assert len(trials) == 4  # no orphan or duplicate trial runs
    for r in trials:
        assert r.data.tags["rp.status"] == "ok", r.data.tags
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
        assert steps == list(range(16)), (r.data.tags["rp.method"], steps)
