"""A real local Ray (2 CPUs) and a real SQLite MLflow: the experiment runs end to end."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "name": "itest",
    "seeds": [0],
    "budget": {"periods": 6, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [32]},
        "regularizers": [
            {"kind": "dropout", "where": "head"},
            {"kind": "gaussian_noise", "where": "before_relu", "name": "noise"},
        ],
        "train": {"period_length": 4, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        # the 1e38 noise trial overflows and diverges (NaN loss); its sibling must still finish
        "NOISE": {"search": "grid", "grid": {"noise": [0.0, 1.0e38]}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}},
        "PBT": {
            "search": "pbt",
            "space": {"dropout": [0.0, 0.8]},
            "perturbation_interval": 2,
            "quantile_fraction": 0.5,
            "resample_probability": 1.0,
            "synch": True,  # perturb once both reported: an exploit every interval
        },
        "PB2": {
            "search": "pb2",
            "space": {"dropout": [0.0, 0.8]},
            "perturbation_interval": 2,
            "quantile_fraction": 0.5,
        },
        "TPE": {"search": "optuna", "space": {"dropout": [0.0, 0.8]}, "n_startup_trials": 1},
        "RND": {"search": "random", "space": {"dropout": [0.0, 0.8]}},
    },
    "tune": {"checkpoint_every": 2, "verbose": 0, "num_cpus": 2},
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    tmp = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = validate_config(CONFIG)
    try:
        outcome = run_experiment(cfg, storage_path=str(tmp / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
    return {"uri": uri, "outcome": outcome, "tmp": tmp}


def _runs(uri: str, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_every_trial_has_one_child_run_under_its_method(experiment: dict) -> None:
    runs = _runs(experiment["uri"], "itest")
    by_kind: dict[str, list[Any]] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("rp.kind"), []).append(r)
    assert len(by_kind["invocation"]) == 1
    methods = {r.data.tags["rp.method"]: r for r in by_kind["method"]}
    assert set(methods) == set(CONFIG["methods"])
    inv_id = by_kind["invocation"][0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == inv_id for r in methods.values())
    trials = by_kind["trial"]
    assert len(trials) == len(CONFIG["methods"]) * 2  # budget.trials x 1 seed
    ids = [r.data.tags["rp.trial_id"] for r in trials]
    assert len(ids) == len(set(ids))  # exactly one run per Tune trial
    for r in trials:
        method = r.data.tags["rp.method"]
        assert r.data.tags["mlflow.parentRunId"] == methods[method].info.run_id
        assert r.data.tags["rp.dataset"] == "digits" and r.data.tags["rp.seed"] == "0"


def test_every_period_is_one_step_exactly_once(experiment: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(experiment["uri"])
    trials = [r for r in _runs(experiment["uri"], "itest") if r.data.tags.get("rp.kind") == "trial"]
    for r in trials:
        status = r.data.tags["rp.status"]
        for metric in ("val_f1", "train_loss", "value/dropout"):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, metric)]
            assert steps == sorted(set(steps)), f"duplicate steps in {metric}"
            assert steps == list(range(len(steps)))
            if status == "ok":
                assert len(steps) == int(r.data.metrics["n_periods"])
        if status == "ok" and r.data.tags["rp.search"] != "pbt":
            assert int(r.data.metrics["n_periods"]) == CONFIG["budget"]["periods"]
        assert "best_val_f1" in r.data.metrics
        if status == "ok":
            assert "test_f1_at_best" in r.data.metrics


def test_diverged_trial_ends_as_diverged_and_the_rest_finish(experiment: dict) -> None:
    trials = [r for r in _runs(experiment["uri"], "itest") if r.data.tags.get("rp.kind") == "trial"]
    statuses = {r.data.tags["rp.status"] for r in trials if r.data.tags["rp.method"] == "NOISE"}
    assert statuses == {"ok", "diverged"}
    others = [r for r in trials if r.data.tags["rp.method"] != "NOISE"]
    assert all(r.data.tags["rp.status"] == "ok" for r in others)
    assert all(r.info.status == "FINISHED" for r in trials)


def test_pbt_exploit_shows_in_tune_policy_log_and_mlflow(experiment: dict) -> None:
    outcome = experiment["outcome"]
    path = outcome.tuner_paths["PBT-s0"]
    policies = glob.glob(os.path.join(path, "pbt_policy_*.txt"))
    assert policies, "PBT wrote no policy log: no exploit happened"
    trials = [
        r
        for r in _runs(experiment["uri"], "itest")
        if r.data.tags.get("rp.kind") == "trial" and r.data.tags["rp.method"] == "PBT"
    ]
    exploited = [r for r in trials if r.data.metrics.get("n_exploits", 0) >= 1]
    assert exploited, "no exploit recorded in MLflow"
    donors = {r.data.tags.get("rp.last_donor") for r in exploited}
    all_ids = {r.data.tags["rp.trial_id"] for r in trials}
    assert donors <= all_ids


def test_compare_lists_every_method_and_writes_plots(experiment: dict) -> None:
    from raytune_periodic.report import compare_experiment

    out_dir = experiment["tmp"] / "cmp"
    text = compare_experiment("itest", tracking_uri=experiment["uri"], out_dir=str(out_dir))
    for method in CONFIG["methods"]:
        assert method in text
    assert sorted(p.name for p in out_dir.glob("*.png"))


def test_cli_run_and_compare_as_subprocesses(tmp_path: Path) -> None:
    cfg = {
        **CONFIG,
        "name": "clitest",
        "budget": {"periods": 3, "trials": 1},
        "methods": {"BL": CONFIG["methods"]["BL"], "PD": CONFIG["methods"]["PD"]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "raytune_periodic.cli",
            "run",
            str(path),
            "--mlflow-uri",
            uri,
            "--storage-path",
            str(tmp_path / "ray"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((tmp_path / "ray" / "clitest" / "rp_state.json").read_text())
    assert state["finished"] and set(state["tuners"]) == {"BL", "PD"}
    cmp_ = subprocess.run(
        [
            sys.executable,
            "-m",
            "raytune_periodic.cli",
            "compare",
            "clitest",
            "--mlflow-uri",
            uri,
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert cmp_.returncode == 0, cmp_.stderr[-2000:]
    assert "BL" in cmp_.stdout and "PD" in cmp_.stdout


def test_trial_dirs_have_result_json_and_csv_but_no_tensorboard(experiment: dict) -> None:
    trial_dirs = {p.parent for p in Path(experiment["tmp"], "ray").glob("**/params.json")}
    assert trial_dirs
    for d in trial_dirs:
        assert (d / "result.json").exists() and (d / "progress.csv").exists(), d
        assert not list(d.glob("events.out.tfevents*")), d  # tune.tensorboard is off
