"""cluster.yaml against Ray's own cluster-config schema, the launch/ scripts, and a real 2-node
Ray cluster on this machine (two raylets) driven by `ray job submit`, tracking to a real MLflow
server on cluster.yaml's stack: a PostgreSQL backend store and an S3 artifact store (moto)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from raytune_periodic.tuning.trainable import FAULT_ENV

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = ["up.sh", "down.sh", "submit.sh", "mlflow_server.sh", "local_cluster.sh"]


def _onprem_block(text: str) -> dict[str, Any]:
    block = text.split("# --- on-prem ---\n")[1].split("# --- end on-prem ---")[0]
    return yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# ----------------------------------------------------------------------------- cluster.yaml
def test_cluster_yaml_passes_ray_schema() -> None:
    text = (ROOT / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    prepared = _validate(cfg)
    assert cfg["provider"]["type"] in {"aws", "gcp"}
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] > gpu["min_workers"] >= 0
    assert prepared["head_node_type"] == "head"
    setup = " ".join(cfg["setup_commands"])
    assert "-c constraints.txt" in setup and ".[all]" in setup
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--host 127.0.0.1" in head
    assert "postgresql://" in head and "--artifacts-destination" in head
    # no credentials in the file: the DB password comes from the environment
    assert not re.search(r"(aws_secret|password\s*[:=]\s*\w)", text, re.IGNORECASE)
    # the on-prem variant (commented out) is a valid `local` provider config too
    onprem = _onprem_block(text)
    assert onprem["provider"]["type"] == "local"
    _validate(onprem)


def test_schema_rejects_unknown_fields() -> None:
    import jsonschema

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"]["gpus"] = 1  # a typo Ray would ignore silently
    with pytest.raises(jsonschema.ValidationError):
        _validate(cfg)


# ----------------------------------------------------------------------------- launch/
@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_script_help(script: str) -> None:
    path = LAUNCH / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: launch/" + script), out.stdout[:200]
    bad = subprocess.run([str(path), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_launch_scripts_shellcheck_clean() -> None:
    out = subprocess.run(
        ["shellcheck", *(str(LAUNCH / s) for s in SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout


# ----------------------------------------------------------------------------- 2-node cluster
PERIODS = 10
FAULT_PERIOD = 5
PLUGIN = """
from raytune_periodic.controllers import Controller


class Stepped(Controller):
    def controlled(self):
        return ["dropout"]

    def decide(self, state):
        return {"dropout": 0.1 * (state.period % 3)}
"""
CONFIG: dict[str, Any] = {
    "name": "clustertest",
    "seeds": [0],
    "budget": {"periods": PERIODS, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 400},
        "model": {"name": "mlp", "hidden": [256, 256]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 200, "batch_size": 64, "val_batches": 1},
    },
    "methods": {
        # a user's controller from a module outside the repo, shipped with --py-module
        "USER": {"controller": {"type": "clusterplug:Stepped"}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}},
    },
    # a fresh actor per trial: Ray places each trial's 1-CPU bundle, so the two trials of a
    # method start one per node (with actor reuse, a finished head actor can take the second
    # trial before the worker's actor has started, and nothing would run on the worker);
    # max_failures covers the injected worker kill plus the lost node
    # one period per iteration: the node loss is timed by training_iteration
    "tune": {
        "checkpoint_every": 2,
        "verbose": 0,
        "reuse_actors": False,
        "max_failures": 3,
        "iteration_periods": 1,
    },
}


def _free_base_port(span: int = 130) -> int:
    from mlflow_server import free_port_block

    return free_port_block(21000, span)  # each test file its own range: no overlap


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[dict[str, Any]]:
    """A head and one worker raylet (1 CPU each), token auth, stopped by PID; one per module:
    the shared-agent test runs first, the node-loss test (which kills the worker) last."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "PYTHON": sys.executable,
        # detect the lost node in seconds instead of ~30 s (GCS health checks)
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    env.pop("RAY_ADDRESS", None)
    port = _free_base_port()
    dash = port + 120
    # short: Ray's AF_UNIX socket paths under the temp dirs must stay below 108 bytes
    state = Path(tempfile.mkdtemp(prefix="rpc-", dir="/tmp"))
    args = ["--dir", str(state), "--port", str(port), "--dashboard-port", str(dash)]
    script = str(LAUNCH / "local_cluster.sh")
    try:
        out = subprocess.run(
            [script, "start", "--workers", "1", "--cpus", "1", "--head-cpus", "1", *args],
            env=env, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        yield {"env": env, "dir": state, "gcs": f"127.0.0.1:{port}",
               "dashboard": f"http://127.0.0.1:{dash}"}  # fmt: skip
    finally:
        subprocess.run([script, "stop", *args], env=env, timeout=120, check=False)
        assert not list(state.glob("*.pid"))
        shutil.rmtree(state, ignore_errors=True)


def _node_pids(node_dir: Path) -> set[int]:
    """PIDs of the worker processes a node started (its logs are named after them)."""
    pids = set()
    for f in node_dir.glob("session_*/logs/*"):
        m = re.search(r"^(?:worker-.*-|python-core-worker-.*_)(\d+)\.(?:out|err|log)$", f.name)
        if m:
            pids.add(int(m.group(1)))
    return pids


def _trial_rows(storage: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial's Tune result rows so far, by trial directory name."""
    rows = {}
    for result in storage.glob("**/result.json"):
        lines = result.read_text().splitlines()
        rows[result.parent.name] = [json.loads(x) for x in lines if x.strip().endswith("}")]
    return rows


def _kill_group(pidfile: Path) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)


SHARED_CONFIG: dict[str, Any] = {
    "name": "sharedcluster",
    "seeds": [0],
    "budget": {"periods": 6, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 200, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [64]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 20, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        # the agent in one 1-CPU bundle, each child a Ray actor in a 0.5-CPU bundle of the same
        # placement group: on a 1 + 1 CPU cluster, the children run on the other node
        "SHARED": {
            "search": "ppo_shared",
            "layout": "runners",
            "cpus_per_child": 0.5,
            "controller": {"type": "ppo", "groups": {"dropout": [0.0, 0.7]}, "reward": "gap",
                           "train_batch_size": 4, "minibatch_size": 4, "num_epochs": 2},
        }
    },
    "tune": {"checkpoint_every": 2, "verbose": 0},
}  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
def test_shared_ppo_agent_with_child_actors_under_run_address(
    local_cluster: dict[str, Any], tmp_path: Path
) -> None:
    """``ppo_shared`` with ``layout: runners`` under ``run --address`` on the 2-node cluster:
    one placement group (agent + one bundle per child), no nesting; every child a trial run
    with every period once, the agent's updates on the method run."""
    from mlflow import MlflowClient

    cfg_path = tmp_path / "shared.yaml"
    cfg_path.write_text(yaml.safe_dump(SHARED_CONFIG))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "raytune_periodic.cli", "run", str(cfg_path), "--address",
         local_cluster["gcs"], "--mlflow-uri", uri, "--storage-path", str(tmp_path / "ray")],
        env=local_cluster["env"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sharedcluster")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    assert sorted(r.data.tags["rp.replicate"] for r in trials) == ["0", "1"]
    for r in trials:
        assert r.data.tags["rp.status"] == "ok"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
        assert steps == list(range(6))
    method = next(r for r in runs if r.data.tags.get("rp.kind") == "method")
    updates = client.get_metric_history(method.info.run_id, "agent/seed0/updates")
    assert [m.step for m in updates] == [1, 2, 3]


@pytest.mark.integration
@pytest.mark.slow
def test_two_node_cluster_job_with_worker_kill_and_node_loss(
    local_cluster: dict[str, Any], postgres_s3: Any, tmp_path: Path
) -> None:
    """`ray job submit` to a head + worker raylet and a real MLflow server on PostgreSQL + S3;
    one trial worker process is killed at period FAULT_PERIOD (a), and the whole worker node is
    killed while one of its trials has a checkpoint (d). Every trial must finish, every period
    of every trial must be in MLflow exactly once (in PostgreSQL itself too), every trial's
    schedule must be in the S3 bucket, and trials must have run on both nodes."""
    from mlflow import MlflowClient

    root = tmp_path / "mlflow"
    root.mkdir()
    # the job's driver and workers get no S3 endpoint or credentials: artifacts go through
    # the server, as on the cluster
    server = postgres_s3.server(root, "clustertest")
    server.start()
    marker = tmp_path / "fault-fired"
    worker_dir = local_cluster["dir"] / "worker1"
    lost: dict[str, Any] = {}
    try:
        cfg_path = tmp_path / "clustertest.yaml"
        cfg_path.write_text(yaml.safe_dump(CONFIG))
        plugin = tmp_path / "userland" / "clusterplug"  # a package of the user's own
        plugin.mkdir(parents=True)
        (plugin / "__init__.py").write_text(PLUGIN)
        storage = tmp_path / "ray"
        log_path = tmp_path / "job.log"
        with log_path.open("w") as log:
            job = subprocess.Popen(
                [str(LAUNCH / "submit.sh"), str(cfg_path), "--address", local_cluster["dashboard"],
                 "--mlflow-uri", server.url, "--storage-path", str(storage),
                 "--env", f"{FAULT_ENV}={FAULT_PERIOD}:{marker}", "--py-module", str(plugin)],
                env=local_cluster["env"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            deadline = time.monotonic() + 300
            while job.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                if not lost:
                    worker_pids = _node_pids(worker_dir)
                    for name, rows in _trial_rows(storage).items():
                        last = rows[-1] if rows else None
                        if (
                            last
                            and last["pid"] in worker_pids
                            and 2 <= last["training_iteration"] < PERIODS - 2
                            and list(storage.glob(f"**/{name}/checkpoint_*"))
                        ):
                            # (d) the node dies: its raylet, its workers, the trial's process
                            _kill_group(local_cluster["dir"] / "worker1.pid")
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(last["pid"], signal.SIGKILL)
                            lost = {"trial": name, "pid": last["pid"],
                                    "iteration": last["training_iteration"]}  # fmt: skip
                            break
                time.sleep(0.1)  # polling interval of the watch loop above
        out = log_path.read_text()
        assert job.returncode == 0 and "succeeded" in out, out[-4000:]
        assert lost, "no trial ran on the worker node long enough to lose the node under it"
        assert marker.exists(), "the injected worker kill never fired"

        # every trial of every method exactly once, with all its periods
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("clustertest")
        runs = client.search_runs([exp.experiment_id], max_results=500)
        kinds = [r.data.tags.get("rp.kind") for r in runs]
        assert kinds.count("invocation") == 1 and kinds.count("method") == 2, kinds
        trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
        by_method = sorted(r.data.tags["rp.method"] for r in trials)
        assert by_method == ["PD"] * 2 + ["USER"] * 2
        for r in trials:
            assert r.data.tags["rp.status"] == "ok"
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
            assert steps == list(range(PERIODS)), (r.data.tags["rp.trial_id"], steps)
            if r.data.tags["rp.method"] == "USER":  # the plugin set the values on every node
                hist = client.get_metric_history(r.info.run_id, "value/dropout")
                values = [round(m.value, 6) for m in sorted(hist, key=lambda m: m.step)]
                assert values == [round(0.1 * (p % 3), 6) for p in range(PERIODS)]
        # the tracking stack itself: one val_f1 row per period in PostgreSQL, each trial's
        # schedule.csv in the bucket (listed with boto3, not through MLflow)
        assert server.metric_rows("val_f1") == len(trials) * PERIODS
        stored = server.stored_artifacts()
        for r in trials:
            wanted = f"{exp.experiment_id}/{r.info.run_id}/artifacts/schedule.csv"
            assert wanted in stored, (wanted, stored[:20])
    finally:
        server.stop()

    rows = _trial_rows(storage)
    # the lost node's trial finished elsewhere, from its checkpoint
    survivor = rows[lost["trial"]]
    assert survivor[-1]["training_iteration"] == PERIODS
    assert survivor[-1]["pid"] != lost["pid"]
    # trials ran on both nodes: the PIDs Tune recorded belong to worker processes of each raylet
    trial_pids = {row["pid"] for trial in rows.values() for row in trial}
    head = _node_pids(local_cluster["dir"] / "head")
    worker = _node_pids(worker_dir)
    assert trial_pids <= head | worker, (trial_pids, head, worker)
    assert trial_pids & head and trial_pids & worker, (trial_pids, head, worker)
