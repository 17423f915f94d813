"""Results from MLflow alone: a real Tune search on digits, its Ray storage moved away, then
``export`` (models loadable by ``mlflow.pytorch.load_model`` and weights-only), ``gradcam``,
``replay --run`` and ``compare`` against the SQLite MLflow store only; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "name": "export-itest",
    "seeds": [0],
    "budget": {"periods": 4, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 150},
        "model": {"name": "lenet"},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 3, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}}},
    },
    "tune": {"checkpoint_every": 2, "verbose": 0, "num_cpus": 2},
}


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The search run once; its Ray storage then moved where no reader looks."""
    import ray

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    tmp = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        run_experiment(validate_config(CONFIG), storage_path=str(tmp / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
    shutil.move(tmp / "ray", tmp / "elsewhere")
    return {"uri": uri, "tmp": tmp}


def test_export_selected_model_from_mlflow_alone(moved: dict, tmp_path: Path) -> None:
    import mlflow

    import raytune_periodic as rp
    from raytune_periodic.report.compare import load_experiment
    from raytune_periodic.report.table import selected_by_seed
    from raytune_periodic.tracking.models import load_model_dir
    from raytune_periodic.training import build_engine

    done = rp.export("export-itest", "PD", 0, tmp_path / "out", tracking_uri=moved["uri"])
    trials = load_experiment(moved["uri"], "export-itest").methods[0].trials
    chosen = selected_by_seed(trials)["0"]
    assert done.run_id == chosen.run_id and set(done.models) == {"best", "last"}
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.yaml", "schedule.csv", "rp_spec.json", "selection.json"} <= names
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["metrics"]["test_f1_at_best"] == chosen.summary["test_f1_at_best"]
    model, info = load_model_dir(done.models["best"])
    # the logged best weights are the ones that scored test_f1_at_best in the Ray trial
    engine = build_engine(info["spec"])
    engine.model.load_state_dict(model.state_dict())
    assert engine.evaluate("test")[1] == chosen.summary["test_f1_at_best"]
    flavor = mlflow.pytorch.load_model(str(done.models["best"]))
    x = torch.zeros(3, *info["input_shape"])
    with torch.no_grad():
        assert torch.allclose(flavor(x), model(x), atol=1e-5)
    again = rp.export(
        "export-itest", "PD", 0, tmp_path / "reg", tracking_uri=moved["uri"], register="digits-pd"
    )
    assert again.registered == "digits-pd/1"
    version = mlflow.MlflowClient(moved["uri"]).get_model_version("digits-pd", "1")
    assert version.tags["method"] == "PD" and version.run_id == chosen.run_id


def test_gradcam_replay_compare_without_ray_storage(
    moved: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import raytune_periodic as rp
    from raytune_periodic.cli import main
    from raytune_periodic.report.gradcam import best_runs

    uri = moved["uri"]
    assert not (moved["tmp"] / "ray").exists()
    out = tmp_path / "cam.png"
    args = ["gradcam", "--experiment", "export-itest", "--images", "0", "1", "--out", str(out)]
    assert main([*args, "--mlflow-uri", uri]) == 0 and out.is_file()
    run_id = best_runs("export-itest", uri)["PD"]
    assert main(["replay", run_id, "--run", "--mlflow-uri", uri]) == 0
    assert capsys.readouterr().out.count("period ") == 4
    table = rp.compare("export-itest", tracking_uri=uri)
    assert list(table["method"]) == ["PD"] and table["n_trials"].iloc[0] == 2


def test_export_errors_are_one_line(
    moved: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raytune_periodic.cli import main
    from raytune_periodic.tracking.mlflow_store import MlflowStore

    uri = moved["uri"]
    base = ["export", "export-itest", "--mlflow-uri", uri, "--out", str(tmp_path / "x")]
    assert main([*base, "--method", "NOPE", "--seed", "0"]) == 2
    assert main([*base, "--method", "PD", "--seed", "7"]) == 2
    # an experiment whose one trial errored, and one whose trial has no model artifact
    store = MlflowStore(uri, "broken", synchronous=True, spool_dir=tmp_path / "spool")
    inv = store.start_invocation("inv", {"name": "broken"}, {})
    meth = store.start_method(inv, "inv", "BL", "controller", {})
    for trial, status in (("t0", "error"),):
        run = store.start_trial(meth, "inv", "BL", trial, {}, {"seed": 0})
        store.finish_trial(run, [{"step": 0.0, "full_val_f1": 0.5, "test_f1": 0.4}], status)
    assert main(["export", "broken", "--method", "BL", "--seed", "0", "--mlflow-uri", uri,
                 "--out", str(tmp_path / "y")]) == 2  # fmt: skip
    meth2 = store.start_method(inv, "inv", "D", "grid", {})
    run = store.start_trial(meth2, "inv", "D", "t1", {}, {"seed": 0})
    store.finish_trial(run, [{"step": 0.0, "full_val_f1": 0.5, "test_f1": 0.4}], "ok")
    store.close()
    assert main(["export", "broken", "--method", "D", "--seed", "0", "--mlflow-uri", uri,
                 "--out", str(tmp_path / "z")]) == 2  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "no method 'NOPE'" in errors[0] and "no trials at seed 7" in errors[1]
    assert "no selectable trial (1 trials, status error" in errors[2]
    assert "has no model/best artifact" in errors[3]
