"""Honest outcomes: errored trials make `run` exit non-zero and stay resumable; a second driver
or a forgotten unfinished invocation is a one-line error; SIGTERM stops, flushes, resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from raytune_periodic.errors import ConfigError
from raytune_periodic.tuning.driver_state import DriverState

FLAKY_CTRL = '''
import os

from raytune_periodic.controllers import ConstantController


class FailWhileMarked(ConstantController):
    """Constant values; raises in period 1 while the file ``marker`` exists."""

    def __init__(self, values=None, marker=""):
        super().__init__(values)
        self.marker = marker

    def decide(self, state):
        if state.period == 1 and os.path.exists(self.marker):
            raise RuntimeError("injected trial failure")
        return super().decide(state)
'''


def _config(name: str, marker: Path, periods: int = 3) -> dict[str, Any]:
    return {
        "name": name,
        "seeds": [0],
        "budget": {"periods": periods, "trials": 1},
        "base": {
            "dataset": {"name": "digits", "train_size": 120},
            "model": {"name": "mlp", "hidden": [16]},
            "regularizers": [{"kind": "dropout", "where": "head"}],
            "train": {"period_length": 2, "batch_size": 32, "val_batches": 1},
        },
        "methods": {
            "FLAKY": {
                "controller": {
                    "type": "flakypkg:FailWhileMarked",
                    "values": {"dropout": 0.1},
                    "marker": str(marker),
                }
            }
        },
        "tune": {"checkpoint_every": 1, "verbose": 0, "num_cpus": 2, "max_failures": 0},
    }


def _cli(args: list[str], cwd: Path, env: dict[str, str], **kw: Any) -> Any:
    cmd = [sys.executable, "-m", "raytune_periodic.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)


def _steps(db: Path, name: str) -> dict[str, list[int]]:
    """Steps of ``val_f1`` per trial run, straight from the SQLite store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'")
    return {
        r.data.tags["rp.trial_id"]: sorted(
            m.step for m in client.get_metric_history(r.info.run_id, "val_f1")
        )
        for r in runs
    }


@pytest.fixture
def userland(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "flakypkg.py").write_text(textwrap.dedent(FLAKY_CTRL))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return tmp_path, env


def test_errored_trials_exit_nonzero_and_resume_retries_them(userland: Any) -> None:
    tmp, env = userland
    marker = tmp / "fail.marker"
    marker.write_text("x")
    cfg = tmp / "flaky.yaml"
    cfg.write_text(yaml.safe_dump(_config("flaky", marker)))
    first = _cli(["run", str(cfg), "--storage-path", str(tmp / "ray")], tmp, env, timeout=400)
    assert first.returncode == 1, first.stderr[-2000:]
    assert "1 trial(s) errored" in first.stderr and "--resume" in first.stderr
    marker.unlink()
    again = _cli(["run", str(cfg), "--storage-path", str(tmp / "ray")], tmp, env, timeout=60)
    assert again.returncode == 2 and "unfinished invocation" in again.stderr
    resumed = _cli(
        ["run", str(cfg), "--storage-path", str(tmp / "ray"), "--resume"], tmp, env, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = _steps(tmp / "mlflow.db", "flaky")
    assert list(steps.values()) == [[0, 1, 2]]  # the retried trial: every period once
    state = json.loads((tmp / "ray" / "flaky" / "rp_state.json").read_text())
    assert state["finished"] is True and set(state["tuners"].values()) == {"done"}


def test_sigterm_stops_flushes_and_resumes(userland: Any) -> None:
    tmp, env = userland
    cfg = tmp / "long.yaml"
    # one period per Tune result, so the search is still running when 3 periods are in MLflow
    # (with ``auto`` batching these tiny periods all came in one result, logged at once)
    data = _config("long", tmp / "never", periods=120)
    data["tune"]["iteration_periods"] = 1
    cfg.write_text(yaml.safe_dump(data))
    args = ["run", str(cfg), "--storage-path", str(tmp / "ray")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "raytune_periodic.cli", *args],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    db = tmp / "mlflow.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait for logged periods
        if db.exists() and _count_steps(db) >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err
    resumed = _cli([*args, "--resume"], tmp, env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list(_steps(db, "long").values()) == [list(range(120))]


def _count_steps(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("select count(*) from metrics where key = 'val_f1'").fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0


def test_a_second_live_driver_is_refused(tmp_path: Path) -> None:
    first = DriverState(tmp_path / "exp")
    first.acquire()
    second = DriverState(tmp_path / "exp")
    with pytest.raises(ConfigError, match="another driver") as err:
        second.acquire()
    assert "\n" not in str(err.value)
    first.release()
    second.acquire()  # free again
    second.release()


def test_a_dead_drivers_lock_is_taken_over(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    lock = {"pid": int(dead.stdout), "host": socket.gethostname()}
    (exp / "rp_driver.lock").write_text(json.dumps(lock))
    state = DriverState(exp)
    state.acquire()
    assert json.loads((exp / "rp_driver.lock").read_text())["pid"] == os.getpid()
    state.release()


def test_unfinished_invocation_needs_resume_or_restart(tmp_path: Path) -> None:
    state = DriverState(tmp_path / "exp")
    first = dict(state.begin(resume=False, restart=False))
    state.save()
    with pytest.raises(ConfigError, match="--resume to finish it, or --restart"):
        DriverState(tmp_path / "exp").begin(resume=False, restart=False)
    again = DriverState(tmp_path / "exp")
    assert again.begin(resume=True, restart=False)["invocation_id"] == first["invocation_id"]
    fresh = DriverState(tmp_path / "exp").begin(resume=False, restart=True)
    assert fresh["invocation_id"] != first["invocation_id"]
    with pytest.raises(ConfigError, match="no previous run"):
        DriverState(tmp_path / "other").begin(resume=True, restart=False)
