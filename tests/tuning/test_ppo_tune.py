"""The ``ppo`` controller inside a real Tune experiment, with a worker killed mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raytune_periodic.tuning.trainable import FAULT_ENV

pytestmark = pytest.mark.integration

PPO = {
    "type": "ppo",
    "groups": {"dropout": [0.0, 0.7]},
    "train_batch_size": 4,
    "minibatch_size": 4,
    "num_epochs": 2,
    "hidden": [16],
}
CONFIG: dict[str, Any] = {
    "name": "ppotest",
    "seeds": [0],
    "budget": {"periods": 8, "trials": 1},
    "base": {
        "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [32]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 4, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        "PDRL": {"controller": PPO},
    },
    # one period per iteration: the fault fires at a step that starts at period 5
    "tune": {
        "checkpoint_every": 2,
        "max_failures": 2,
        "verbose": 0,
        "num_cpus": 2,
        "iteration_periods": 1,
    },
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    tmp = tmp_path_factory.mktemp("ppo")
    marker = tmp / "fault-fired"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    # the first trial to start period 5 has its worker process killed (once); a Ray left up by
    # another module would run workers started without this variable
    ray.shutdown()
    mp.setenv(FAULT_ENV, f"5:{marker}")
    try:
        run_experiment(validate_config(CONFIG), storage_path=str(tmp / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
        mp.undo()
    return {"uri": uri, "tmp": tmp, "marker": marker}


def _trials(uri: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ppotest")
    runs = client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'")
    return {r.data.tags["rp.method"]: r for r in runs}


def test_ppo_trial_logs_its_actions_once_per_period_across_a_worker_crash(experiment) -> None:
    from mlflow import MlflowClient

    assert experiment["marker"].exists(), "the injected fault never fired"
    client = MlflowClient(experiment["uri"])
    trials = _trials(experiment["uri"])
    assert set(trials) == {"BL", "PDRL"}  # one child run per trial, the crashed one included
    for run in trials.values():
        assert run.data.tags["rp.status"] == "ok"
        for metric in ("value/dropout", "val_f1"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == list(range(8)), (metric, steps)  # every period exactly once
    pdrl = trials["PDRL"]
    assert pdrl.data.tags["rp.controller"] == "ppo"
    actions = [m.value for m in client.get_metric_history(pdrl.info.run_id, "value/dropout")]
    assert all(0.0 <= a <= 0.7 for a in actions) and len(set(actions)) > 1
    rewards = client.get_metric_history(pdrl.info.run_id, "ppo/reward")
    assert len(rewards) == 8


def test_agent_is_an_artifact_and_reloads_for_inference(experiment, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from raytune_periodic.training import build_engine

    run = _trials(experiment["uri"])["PDRL"]
    client = MlflowClient(experiment["uri"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "agent")]
    local = client.download_artifacts(run.info.run_id, "agent", str(tmp_path))
    spec = {**CONFIG["base"], "controller": {**PPO, "agent_checkpoint": local}}
    spec["train"] = {**spec["train"], "periods": 3, "seed": 5}
    engine = build_engine(spec)
    assert not engine.controller.learning
    records = engine.run()
    assert len(records) == 3 and all(0.0 <= r.values["dropout"] <= 0.7 for r in records)
