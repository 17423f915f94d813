"""The surrogate paper's methods as Tune searches: config errors, exact resume, and one tiny
experiment (BL + surrogate DE + surrogate PSO) on a real local Ray with a SQLite MLflow."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from raytune_periodic.config import validate_config
from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.sparseness import NAMES
from raytune_periodic.tuning.methods import SearchMethod

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 200, "label_noise": 0.3},
    "model": {"name": "lenet"},
    "train": {"period_length": 4, "batch_size": 32, "val_batches": 1},
}
SOLVER = {"lr": 0.05, "batch_size": 32}
TINY = {"popsize": 4, "ni_epochs": 1, "solver": SOLVER}
POPSIZE, PERIODS = 4, 2
CONFIG: dict[str, Any] = {
    "name": "surrogate_itest",
    "seeds": [0],
    "budget": {"periods": PERIODS, "trials": 1},
    "base": BASE,
    "methods": {
        "BL": {"controller": {"type": "constant"}},
        "DE": {"search": "surrogate_de", **TINY},
        "PSO": {"search": "surrogate_pso", **TINY},
    },
    "tune": {"num_cpus": 2, "verbose": 0, "checkpoint_every": 1},
}


def _validate(methods: dict[str, Any], periods: int = 2) -> Any:
    return validate_config({"name": "x", "budget": {"periods": periods}, "base": BASE,
                            "methods": methods})  # fmt: skip


# ----------------------------------------------------------------------------- config
def test_the_four_searches_validate() -> None:
    cfg = _validate({
        "DE": {"search": "surrogate_de", **TINY, "F": 0.2, "space": {"p_bounds": [0.1, 0.7]}},
        "PSO": {"search": "surrogate_pso", **TINY, "omega": 0.5, "replicates": 2},
        "EA": {"search": "ea_original", **TINY, "optimizer": "pso", "max_iter_epochs": 2},
        "GRID": {"search": "sparseness_grid", "n_p": 2, "n_lambda": 3, "solver": SOLVER},
        "FIXED": {"search": "sparseness_grid", "points": ["none", "paper", {"p_z": 0.3}]},
    })  # fmt: skip
    assert list(cfg.methods) == ["DE", "PSO", "EA", "GRID", "FIXED"]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"search": "surrogate_de", "popsize": 3}, "methods.M.popsize"),
        (
            {"search": "surrogate_pso", "space": {"lam_bounds": [1e-2, 1e-6]}},
            "methods.M.space.lam_bounds",
        ),  # noqa: E501
        ({"search": "sparseness_grid", "p_range": [0.8, 0.2]}, "methods.M.p_range"),
        ({"search": "surrogate_de", "max_iter_epochs": 5}, "methods.M.max_iter_epochs"),
        ({"search": "surrogate_pso", "F": 0.1}, "methods.M.F"),
        ({"search": "ea_original", "cpus_per_candidate": "all"}, "methods.M.cpus_per_candidate"),
    ],
)
def test_bad_entries_are_one_line_errors(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _validate({"M": entry})
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_model_without_two_fc_head_names_base_model() -> None:
    from raytune_periodic.tuning.methods.surrogate import SurrogateDE, SurrogatePSO

    SurrogatePSO.check_base("M", {}, BASE, (1, 8, 8))  # LeNet has the head
    with pytest.raises(ConfigError) as err:
        SurrogateDE.check_base("M", {}, {**BASE, "model": {"name": "mlp"}}, (1, 8, 8))
    assert err.value.field == "base.model.name" and "two-FC head" in str(err.value)
    with pytest.raises(ConfigError) as err:
        SurrogateDE.check_base("M", {"conv": [50, 5, 5, 0]}, BASE, (1, 8, 8))
    assert err.value.field == "methods.M.conv"
    if hasattr(SearchMethod, "check_base"):  # once config validation calls the hook
        with pytest.raises(ConfigError, match="two-FC head") as err:
            validate_config({"name": "x", "base": {**BASE, "model": {"name": "mlp"}},
                             "methods": {"M": {"search": "surrogate_de"}}})  # fmt: skip
        assert err.value.field == "base.model.name"


# ----------------------------------------------------------------------------- Table 5
RESNET20 = {**BASE, "model": {"name": "resnet20", "blocks": 1}}
ONE_FC = {"active": ["lam_z", "lam_v", "p_z", "p_v"]}


def test_table5_rows_validate_on_resnet20s_one_fc_head() -> None:
    cfg = validate_config({"name": "t5", "budget": {"periods": 2}, "base": RESNET20, "methods": {
        "GRID": {"search": "sparseness_grid", "names": ONE_FC["active"], "n_p": 2, "n_lambda": 2},
        "RBF": {"search": "rbf_surrogate", "max_time": 5, "space": ONE_FC},
        "EA": {"search": "surrogate_ga", **TINY, "tournament": 2, "space": ONE_FC},
        "PSO": {"search": "surrogate_pso", **TINY, "space": ONE_FC},
    }})  # fmt: skip
    assert [cfg.plan[m].method.trials_per_seed() for m in cfg.plan] == [4, 5, 1, 1]
    assert cfg.plan["EA"].method.options_of(cfg.plan["EA"].entry)["optimizer"] == "ga"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"search": "surrogate_pso", **TINY}, "methods.M.space.active"),  # all 8 by default
        ({"search": "sparseness_grid", "n_p": 2, "n_lambda": 2}, "methods.M.names"),
        ({"search": "sparseness_grid", "points": [{"p_x": 0.5}]}, "methods.M.points"),
        ({"search": "rbf_surrogate", "max_time": 0, "space": ONE_FC}, "methods.M.max_time"),
        ({"search": "surrogate_ga", **TINY, "tournament": 0}, "methods.M.tournament"),
    ],
)
def test_resnet20_entries_outside_its_four_names_are_one_line_errors(
    entry: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"name": "t5", "budget": {"periods": 2}, "base": RESNET20,
                         "methods": {"M": entry}})  # fmt: skip
    assert err.value.field == field and "\n" not in str(err.value)


def test_rbf_searcher_learns_the_trials_scores() -> None:
    from raytune_periodic.surrogate.sparseness import SearchSpace
    from raytune_periodic.tuning.rbf_searcher import RBFSearcher

    searcher = RBFSearcher(SearchSpace(active=("p_z",)), budget=5, seed=0, n_init=2)
    searcher.set_search_properties("objective", "max", {})
    first = searcher.suggest("t1")
    assert set(first["values"]) == set(NAMES) and 0.2 <= first["values"]["p_z"] <= 0.8
    searcher.on_trial_complete("t1", {"objective": 0.75})
    searcher.on_trial_complete("t2")  # never suggested: ignored
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", None, error=True)
    assert searcher.rbf.losses == [-0.75, pytest.approx(0.25)]  # max mode; errors are worst


# ----------------------------------------------------------------------------- no cluster
def test_fixed_run_equals_train_original() -> None:
    from raytune_periodic.data import load_dataset
    from raytune_periodic.surrogate import HypParaSet, train_original
    from raytune_periodic.tuning.methods.surrogate import hpo_config
    from raytune_periodic.tuning.surrogate_trainable import FixedRun

    torch.set_num_threads(1)
    data = load_dataset("digits", train_size=160, seed=0)
    cfg = hpo_config("F", {"solver": SOLVER, "model": "lenet", "seed": 3}, periods=3)
    run, hyp = FixedRun(cfg, data, HypParaSet.paper_default()), HypParaSet.paper_default()
    last = [run.iteration() for _ in range(3)][-1]
    ref = train_original(cfg, data, hyp)
    assert run.done and last["original_val_f1"] == ref["val_f1"]
    assert last["original_test_accuracy"] == ref["test_accuracy"]


def test_trainable_checkpoint_resumes_exactly(tmp_path: Any) -> None:
    from raytune_periodic.tuning.surrogate_trainable import trainable_class

    torch.set_num_threads(1)
    options = {**TINY, "optimizer": "pso", "evaluate_on": "surrogate", "executor": "serial"}
    spec = {"dataset": {"name": "digits", "train_size": 160}, "model": {"name": "lenet"}}
    config = {"rp": {"method": "PSO", "periods": 3, "seed": 0, "threads": 1, "spec": spec,
                     "surrogate": {"kind": "algorithm", "options": options}}}  # fmt: skip
    trainable = trainable_class()
    straight = trainable(config=config)
    straight.train()
    checkpoint = straight.save(str(tmp_path))
    resumed = trainable(config=config)
    resumed.restore(checkpoint)
    a, b = (json.loads(t.train()["rp_records"])[0] for t in (straight, resumed))
    timing = ("seconds", "cost/wall_s", "cost/cpu_s")
    assert {k: v for k, v in a.items() if not k.endswith(timing)} == {
        k: v for k, v in b.items() if not k.endswith(timing)
    }
    assert a["period"] == 1 and a["cost/surrogate_trainings"] == pytest.approx(8 / 3)
    # the best-iteration weights (#16) resume with the trial: same best, same tensors
    best, again = straight._rp_best, resumed._rp_best
    assert again.f1 == best.f1 and again.period == best.period and again.values == best.values
    assert all(torch.equal(again.state[k], v) for k, v in best.state.items())


# ----------------------------------------------------------------------------- Ray + MLflow
@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray

    from raytune_periodic.tuning.runner import run_experiment

    tmp = tmp_path_factory.mktemp("surrogate_tune")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        run_experiment(validate_config(CONFIG), storage_path=str(tmp / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
    return {"uri": uri, "tmp": tmp}


def _trials(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(CONFIG["name"])
    return client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'", max_results=100)


def test_each_iteration_is_one_mlflow_step_with_values_candidates_and_cost(
    experiment: dict,
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(experiment["uri"])
    surrogate = [r for r in _trials(experiment["uri"]) if r.data.tags["rp.method"] != "BL"]
    controllers = sorted(r.data.tags["rp.controller"] for r in surrogate)
    assert controllers == ["surrogate_de", "surrogate_pso"]
    for run in surrogate:
        assert run.data.tags["rp.status"] == "ok" and run.info.status == "FINISHED"
        metrics = run.data.metrics
        for key in ("val_f1", "full_val_f1", "test_f1", "passes", "cost/t_ori", "value/p_z"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(PERIODS)), key  # one step per iteration, exactly once
        assert {f"value/{n}" for n in NAMES} | {f"best/{n}" for n in NAMES} <= set(metrics)
        for i in range(POPSIZE):
            assert {f"cand/{i}/objective", f"cand/{i}/accuracy", f"cand/{i}/p_w"} <= set(metrics)
        assert metrics["ray_tasks"] == POPSIZE  # candidates ran in Ray actors, not in-trial
        # 2 iterations: the original trains once, then twice (previous and current best)
        assert metrics["cost/original_trainings"] == pytest.approx(3 / PERIODS)
        assert metrics["cost/surrogate_trainings"] == pytest.approx(POPSIZE)
        assert metrics["cost/flops_ratio"] > 1 and metrics["cost/wall_s"] > 0
        assert metrics["cost/cpu_s"] > 0 and metrics["n_periods"] == PERIODS
        assert "best_val_f1" in metrics and "test_f1_at_best" in metrics


def test_surrogate_models_export_from_mlflow_and_score_test_f1_at_best(
    experiment: dict, tmp_path: Any
) -> None:
    """A surrogate search's selected original is an MLflow model like any trial's (#16): it
    rebuilds from its method's options, loads weights-only, and its weights are the ones that
    scored ``test_f1_at_best``; ``mlflow.pytorch.load_model`` gives the same logits."""
    import mlflow

    import raytune_periodic as rp
    from raytune_periodic.report.compare import load_experiment
    from raytune_periodic.report.table import selected_by_seed
    from raytune_periodic.surrogate.objective import evaluate
    from raytune_periodic.tracking.models import load_model_dir
    from raytune_periodic.training.spec import load_data, parse_run_spec

    uri = experiment["uri"]
    done = rp.export(CONFIG["name"], "DE", 0, tmp_path / "out", tracking_uri=uri)
    methods = {m.name: m for m in load_experiment(uri, CONFIG["name"]).methods}
    chosen = selected_by_seed(methods["DE"].trials)["0"]
    assert done.run_id == chosen.run_id and set(done.models) == {"best", "last"}
    model, info = load_model_dir(done.models["best"])
    assert info["builder"]["method"] == "DE" and len(info["values"]) == len(NAMES)
    assert info["period"] in range(PERIODS) and info["val_f1"] == chosen.summary["best_val_f1"]
    test = load_data(parse_run_spec(info["spec"])).test
    assert evaluate(model, test, "cpu", 64, 0.0)["macro_f1"] == chosen.summary["test_f1_at_best"]
    flavor = mlflow.pytorch.load_model(str(done.models["best"]))
    x = torch.zeros(3, *info["input_shape"])
    with torch.no_grad():
        assert torch.allclose(flavor(x), model(x), atol=1e-5)
    # Grad-CAM of every method's best trial, surrogate searches included, from MLflow alone
    from raytune_periodic.cli import main

    out = tmp_path / "cam.png"
    args = ["gradcam", "--experiment", CONFIG["name"], "--images", "0", "--out", str(out)]
    assert main([*args, "--mlflow-uri", uri]) == 0 and out.stat().st_size > 0


def test_compare_lists_all_three_methods(experiment: dict) -> None:
    from raytune_periodic.report import compare_experiment

    text = compare_experiment(CONFIG["name"], tracking_uri=experiment["uri"])
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert {"BL", "DE", "PSO"} <= rows
