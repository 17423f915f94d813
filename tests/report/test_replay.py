"""Schedule replay: a real tiny Tune experiment's periodic_random schedule, exported from MLflow
and replayed with the bare engine on another seed, gives the same per-period values exactly."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _trial_run_ids(uri: str, name: str) -> dict[str, str]:
    from raytune_periodic.report.compare import load_experiment

    data = load_experiment(uri, name)
    return {m.name: m.trials[0].run_id for m in data.methods}


def test_replayed_schedule_reproduces_the_original_values(report_experiment: dict) -> None:
    from mlflow import MlflowClient

    from raytune_periodic.report.replay import (
        client_for,
        export_schedule,
        get_trial_run,
        replay,
        replay_config,
        trial_run_spec,
    )

    uri = report_experiment["uri"]
    run_id = _trial_run_ids(uri, report_experiment["name"])["PD"]
    schedule = export_schedule(run_id, uri)
    history = MlflowClient(uri).get_metric_history(run_id, "value/dropout")
    original = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(schedule) == 4 and [row["dropout"] for row in schedule] == original
    assert len(set(original)) == 4  # really a periodic_random schedule

    entry = replay_config(schedule)
    assert entry["controller"]["type"] == "schedule"
    assert entry["controller"]["schedule"] == schedule

    client = client_for(uri)
    spec = trial_run_spec(client, get_trial_run(client, run_id))
    assert spec["controller"]["type"] == "periodic_random"
    records = replay(spec, schedule, seed=12345)
    assert [rec.period for rec in records] == [0, 1, 2, 3]
    assert [rec.values["dropout"] for rec in records] == original  # exact, not approx


def test_spec_from_mlflow_params_matches_tune_params(report_experiment: dict) -> None:
    from raytune_periodic.report.replay import (
        client_for,
        get_trial_run,
        trial_run_spec,
        unflatten_params,
    )

    uri = report_experiment["uri"]
    client = client_for(uri)
    for run_id in _trial_run_ids(uri, report_experiment["name"]).values():
        run = get_trial_run(client, run_id)
        assert unflatten_params(run.data.params) == trial_run_spec(client, run)


def test_replay_errors_are_one_line(report_experiment: dict) -> None:
    from raytune_periodic.errors import ConfigError
    from raytune_periodic.report.replay import export_schedule

    uri = report_experiment["uri"]
    with pytest.raises(ConfigError, match="no MLflow run"):
        export_schedule("0" * 32, uri)
    with pytest.raises(ConfigError, match="no MLflow database"):
        export_schedule("x", "sqlite:////nonexistent/dir/mlflow.db")


def test_replay_config_runs_in_an_experiment_config() -> None:
    from raytune_periodic.config import validate_config
    from raytune_periodic.report.replay import replay_config

    cfg: dict[str, Any] = {
        "name": "replay",
        "seeds": [1],
        "budget": {"periods": 2, "trials": 1},
        "base": {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp", "hidden": [8]},
            "regularizers": [{"kind": "dropout", "where": "head"}],
        },
        "methods": {"REPLAY": replay_config([{"dropout": 0.1}, {"dropout": 0.5}])},
    }
    assert "REPLAY" in validate_config(cfg).methods
