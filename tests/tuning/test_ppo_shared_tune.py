"""``ppo_shared`` through Ray Tune and MLflow: both layouts, equal compute, the agent's series and
artifact, ``--resume`` after a killed driver, and bad input refused before Ray starts."""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from driver_helpers import cli, method_steps

import raytune_periodic as rp
from raytune_periodic.errors import ConfigError

pytestmark = pytest.mark.integration
pytest.importorskip("ray.rllib")

PPO = {
    "type": "ppo",
    "groups": {"dropout": [0.0, 0.7]},
    "reward": "gap",
    "train_batch_size": 4,
    "minibatch_size": 4,
    "num_epochs": 2,
}
CONFIG: dict[str, Any] = {
    "name": "sharedtest",
    "seeds": [0],
    "budget": {"periods": 6, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [32]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 5, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "SHARED": {"search": "ppo_shared", "controller": PPO},
        "SHARED_R": {"search": "ppo_shared", "controller": PPO, "layout": "runners"},
    },
    "tune": {"checkpoint_every": 2, "verbose": 0, "num_cpus": 3},
}


@pytest.fixture(autouse=True, scope="module")
def _own_ray() -> Any:
    """The API runs here leave their local Ray up; shut it down after the module so the next
    module's Ray (and its workers' environment) is its own."""
    yield
    import ray

    ray.shutdown()


def _runs(uri: str, name: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return list(client.search_runs([exp.experiment_id], max_results=500))


def test_both_layouts_log_children_like_trials_with_equal_compute(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = rp.load(CONFIG)
    outcome = rp.run(cfg, storage_path=str(tmp_path / "ray"), mlflow_uri=uri, progress="none")
    assert outcome.ok
    runs = _runs(uri, "sharedtest")
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    by_method: dict[str, list[Any]] = {}
    for r in trials:
        by_method.setdefault(r.data.tags["rp.method"], []).append(r)
    assert {m: len(v) for m, v in by_method.items()} == {"SHARED": 2, "SHARED_R": 2}
    client = MlflowClient(uri)
    for method, children in by_method.items():
        assert sorted(r.data.tags["rp.replicate"] for r in children) == ["0", "1"]
        for r in children:  # each child a trial run like any other: steps, summary, schedule
            # equal compute: each child runs budget.periods x period_length passes, as a trial
            assert r.data.tags["rp.status"] == "ok"
            assert r.data.metrics["n_periods"] == 6 and r.data.metrics["total_passes"] == 30
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "value/dropout")]
            assert steps == list(range(6)), (method, steps)
            assert [a.path for a in client.list_artifacts(r.info.run_id)].count("schedule.csv")
            assert "ppo/reward" in r.data.metrics and "eval_gap" in r.data.metrics

    # lockstep rounds: both layouts take the same actions (same seeds, same agent updates)
    def values(method: str) -> list[list[float]]:
        kids = sorted(by_method[method], key=lambda r: r.data.tags["rp.replicate"])
        return [
            [m.value for m in client.get_metric_history(r.info.run_id, "value/dropout")]
            for r in kids
        ]

    assert values("SHARED") == values("SHARED_R")
    method_runs = {
        r.data.tags["rp.method"]: r for r in runs if r.data.tags.get("rp.kind") == "method"
    }
    shared = method_runs["SHARED"]
    updates = client.get_metric_history(shared.info.run_id, "agent/seed0/updates")
    assert [m.step for m in updates] == [1, 2, 3]  # 12 transitions in batches of 4
    assert "agent/seed0/reward_mean" in shared.data.metrics
    assert "agent/seed0/value_mean/dropout" in shared.data.metrics
    agent = [a.path for a in client.list_artifacts(shared.info.run_id, "agent")]
    assert agent == ["agent/seed0"]
    table = rp.compare("sharedtest", tracking_uri=uri)
    assert {"SHARED", "SHARED_R"} <= set(table["method"])
    # the agent comes back from MLflow alone as a warm_start folder
    from raytune_periodic.report.export import export_agent
    from raytune_periodic.rl.agent import read_agent_meta

    agent_dir = export_agent("sharedtest", "SHARED", 0, tmp_path / "agent", tracking_uri=uri)
    assert list(read_agent_meta(agent_dir, "agent")["groups"]) == ["dropout"]
    with pytest.raises(ConfigError, match="no agent artifact 'agent/seed7'"):
        export_agent("sharedtest", "SHARED", 7, tmp_path / "agent7", tracking_uri=uri)
    # the child compare selects is an MLflow model like any trial's (issue 16)
    for method in ("SHARED", "SHARED_R"):
        out = tmp_path / f"export-{method}"
        rp.export("sharedtest", method, 0, out, tracking_uri=uri)
        assert (out / "model_best").is_dir() and (out / "schedule.csv").is_file()


def test_killed_driver_resumes_without_losing_or_duplicating_a_period(tmp_path: Path) -> None:
    import ray
    from mlflow import MlflowClient

    config = copy.deepcopy(CONFIG)
    config["methods"] = {"SHARED": CONFIG["methods"]["SHARED"]}
    config["budget"]["periods"] = 24
    config["base"]["train"]["period_length"] = 20
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    storage = tmp_path / "ray"
    ray.shutdown()  # the API run above left its local Ray up: the cluster here outlives drivers
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False)
    args = ["run", str(cfg_path), "--mlflow-uri", uri, "--storage-path", str(storage),
            "--address", ctx.address_info["gcs_address"]]  # fmt: skip
    try:
        driver = cli(*args, cwd=tmp_path)
        deadline = time.monotonic() + 240
        while method_steps(db, "SHARED") < 10:  # children mid-run: some periods logged, not all
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the shared trial never started"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        assert method_steps(db, "SHARED") < 48
        resumed = cli(*args, "--resume", cwd=tmp_path)
        out, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, out[-3000:]
    finally:
        ray.shutdown()
    client = MlflowClient(uri)
    runs = _runs(uri, "sharedtest")
    trials = [r for r in runs if r.data.tags.get("rp.kind") == "trial"]
    assert len(trials) == 2  # re-attached, no duplicate child runs
    for r in trials:
        assert r.data.tags["rp.status"] == "ok"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
        assert steps == list(range(24))
    method = next(r for r in runs if r.data.tags.get("rp.kind") == "method")
    updates = [m.step for m in client.get_metric_history(method.info.run_id, "agent/seed0/updates")]
    assert updates == list(range(1, 13))  # 48 transitions / 4, each update once


def _bad(change: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(CONFIG)
    config["methods"] = {"SHARED": {**CONFIG["methods"]["SHARED"], **change}}
    return config


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"controller": {**PPO, "reward": "nope"}}, r"methods\.SHARED\.controller\.reward"),
        ({"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.5]}}},
         "needs a controller of type ppo"),
        ({"perturbation_interval": 4}, "PBT scheduler"),
        ({"layout": "mesh"}, r"methods\.SHARED\.layout"),
        ({"gpus_per_child": 1}, "resources per child need layout: runners"),
        ({"layout": "runners", "cpus_per_child": 0}, r"cpus_per_child: must be > 0"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_before_ray(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        rp.validate(rp.load(_bad(change)))


def test_children_beyond_the_machine_fail_before_ray_starts(tmp_path: Path) -> None:
    import ray

    config = _bad({"layout": "runners"})
    config["budget"]["trials"] = 4
    config["tune"]["num_cpus"] = 2
    with pytest.raises(ConfigError, match=r"methods\.SHARED: one trial needs 5 CPU"):
        rp.run(rp.load(config), storage_path=str(tmp_path / "ray"),
               mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}", progress="none")  # fmt: skip
    assert not ray.is_initialized()


def test_warm_start_of_another_layout_is_refused(tmp_path: Path) -> None:
    from raytune_periodic.rl.agent import PPOOptions
    from raytune_periodic.rl.shared import SharedAgent

    agent = SharedAgent({"noise": (0.0, 0.5)}, PPOOptions(), 1, periods=4)
    path = agent.export(tmp_path / "agent")
    agent.close()
    with pytest.raises(ConfigError, match=r"methods\.SHARED\.warm_start: agent checkpoint"):
        rp.validate(rp.load(_bad({"warm_start": str(path)})))


def test_an_actor_reused_for_the_next_seed_starts_a_new_agent(tmp_path: Path) -> None:
    """``reuse_actors`` (the default) with one trial at a time: the second seed's trial runs in
    the first one's actor, with a fresh agent and fresh children."""
    config = copy.deepcopy(CONFIG)
    config["methods"] = {"SHARED": CONFIG["methods"]["SHARED"]}
    config["seeds"] = [0, 1]
    config["budget"]["periods"] = 2
    config["tune"].update({"max_concurrent": 1, "reuse_actors": True, "num_cpus": 1})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    outcome = rp.run(
        rp.load(config), storage_path=str(tmp_path / "ray"), mlflow_uri=uri, progress="none"
    )
    assert outcome.ok
    trials = [r for r in _runs(uri, "sharedtest") if r.data.tags.get("rp.kind") == "trial"]
    got = sorted((r.data.tags["rp.seed"], r.data.tags["rp.replicate"]) for r in trials)
    assert got == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert all(
        r.data.tags["rp.status"] == "ok" and r.data.metrics["n_periods"] == 2 for r in trials
    )
