"""A trial that finished in Tune while the driver died before its end reached MLflow is
completed on ``--resume`` from Tune's own results: missing steps once, summary, status."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from raytune_periodic.config import validate_config
from raytune_periodic.tuning.mlflow_callback import MlflowCallback
from raytune_periodic.tuning.tuners import trial_rp

CONFIG = {
    "name": "cb",
    "budget": {"periods": 3, "trials": 1},
    "base": {"dataset": {"name": "digits", "train_size": 100}, "model": {"name": "mlp"},
             "regularizers": [{"kind": "dropout", "where": "head"}]},
    "methods": {"BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}}},
}  # fmt: skip


def result(period: int) -> dict:
    rec = {"period": float(period), "epoch": period / 2, "val_f1": 0.5 + period / 10,
           "full_val_f1": 0.6 + period / 10, "test_f1": 0.55, "gap": 0.1,
           "passes": 20.0 * (period + 1), "period_seconds": 0.1, "value/dropout": 0.0}  # fmt: skip
    return {"rp_records": json.dumps([rec]), "rp_status": "ok", "training_iteration": period + 1}


def test_resume_completes_a_trial_whose_end_was_lost(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from raytune_periodic.tracking import MlflowStore

    cfg = validate_config(CONFIG)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    store = MlflowStore(uri, "cb", synchronous=True)
    inv = store.start_invocation("inv1", {}, {}, {})
    method_run = store.start_method(inv, "inv1", "BL", "controller", {})
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    lines = [json.dumps(result(p)) for p in range(3)]
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n" + lines[0][:20])  # torn tail
    trial = SimpleNamespace(
        trial_id="t1", status="RUNNING", local_path=str(trial_dir), checkpoint=None,
        config={"rp": {**trial_rp(cfg, cfg.plan["BL"]), "seed": 0, "replicate": 0}},
    )  # fmt: skip
    first = MlflowCallback(uri, "cb", "inv1", method_run, "BL", "controller", new_invocation=True)
    for period in (0, 1):  # the first driver logged two periods, then died
        first.on_trial_result(0, [], trial, result(period))
    first.store.flush()

    trial.status = "TERMINATED"  # Tune finished it; the resumed Tuner never reports it again
    resumed = MlflowCallback(uri, "cb", "inv1", method_run, "BL", "controller")
    resumed.on_experiment_end([trial])

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([store.experiment_id], "tags.`rp.kind` = 'trial'")
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
    assert steps == [0, 1, 2]
    assert run.data.tags["rp.status"] == "ok" and run.info.status == "FINISHED"
    assert run.data.metrics["n_periods"] == 3 and run.data.metrics["best_val_f1"] == 0.8

    again = MlflowCallback(uri, "cb", "inv1", method_run, "BL", "controller")
    again.on_experiment_end([trial])  # already complete: nothing logged twice
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
    assert steps == [0, 1, 2]
