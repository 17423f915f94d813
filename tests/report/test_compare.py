"""The compare report on a synthetic experiment written with MlflowStore (SQLite, no Ray)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import pandas as pd

from raytune_periodic.errors import ConfigError
from raytune_periodic.report import (
    compare_experiment,
    load_experiment,
    method_table,
    render_table,
    write_plots,
)
from raytune_periodic.tracking.mlflow_store import MlflowStore

EXPERIMENT = "compare-tests"
INVOCATION = "0f1e2d3c-new"

# trial id → (method, best full_val_f1, test_f1 at it, final gap, how the trial ended)
TRIALS = {
    "t0": ("BL", 0.80, 0.78, 0.10, "ok"),
    "t1": ("BL", 0.70, 0.66, 0.20, "diverged"),
    "t2": ("PD", 0.90, 0.85, 0.05, "ok"),
    "t3": ("PD", 0.84, 0.81, 0.07, None),  # never finished: summary computed from history
    "t4": ("PD", 0.10, 0.10, 0.00, "error"),  # excluded from the scores, counted in the cost
}
# the seed of each trial: BL has one trial per seed, PD's scored trials share seed 0
SEEDS = {"t0": 0, "t1": 1, "t2": 0, "t3": 0, "t4": 1}


def _records(best: float, test: float, gap: float, dropout: bool) -> list[dict[str, float]]:
    """Four periods of 10 passes; epochs end at steps 1 (the best) and 3."""
    recs = []
    for step in range(4):
        val = best - 0.1 + 0.02 * step
        rec = {
            "step": step,
            "period": step,
            "epoch": step / 2,
            "passes": 10.0 * (step + 1),
            "train_loss": 1.0,
            "val_loss": 1.1,
            "val_f1": val,
            "train_f1": val + (gap if step == 3 else 0.01),
            "period_seconds": 0.5,
        }
        rec["gap"] = rec["train_f1"] - rec["val_f1"]
        if dropout:
            rec["value/dropout"] = 0.1 * step
        recs.append(rec)
    recs[1].update(full_val_f1=best, test_f1=test)
    recs[3].update(full_val_f1=best - 0.05, test_f1=test + 0.01)
    return recs


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with MlflowStore(uri, EXPERIMENT) as store:
        old = store.start_invocation("99-old", {}, {"dataset": "digits"})  # an earlier invocation
        old_method = store.start_method(old, "99-old", "OLD", "grid", {})
        store.finish_trial(store.start_trial(old_method, "99-old", "OLD", "x", {}, {}), [], "ok")

        inv = store.start_invocation(INVOCATION, {"a": 1}, {"dataset": "digits"})
        methods = {
            name: store.start_method(inv, INVOCATION, name, search, {})
            for name, search in (("BL", "grid"), ("PD", "controller"))
        }
        for trial_id, (method, best, test, gap, status) in TRIALS.items():
            tags = {"seed": str(SEEDS[trial_id])}
            run = store.start_trial(methods[method], INVOCATION, method, trial_id, {}, tags)
            recs = _records(best, test, gap, dropout=method == "PD")
            for rec in recs:
                store.log_step(run, int(rec["step"]), rec)
            if status is not None:
                store.finish_trial(run, recs, status)
    return uri


@pytest.fixture(scope="module")
def table(uri: str) -> pd.DataFrame:
    return method_table(load_experiment(uri, EXPERIMENT)).set_index("method")


def test_load_picks_the_latest_invocation(uri: str) -> None:
    data = load_experiment(uri, EXPERIMENT)
    assert data.invocation_id == INVOCATION
    assert data.invocation_params == {"dataset": "digits"}
    assert [m.name for m in data.methods] == ["BL", "PD"]
    assert [m.search for m in data.methods] == ["grid", "controller"]
    assert [t.trial_id for t in data.methods[1].trials] == ["t2", "t3", "t4"]
    t3 = data.methods[1].trials[1]
    assert t3.status == "running"
    assert t3.summary["best_val_f1"] == pytest.approx(0.84)  # from its history
    assert t3.summary["test_f1_at_best"] == pytest.approx(0.81)
    # the plotted curves (F1s, losses), plus what the anytime curves need
    assert sorted(t3.history) == [
        "full_val_f1",
        "period_seconds",
        "train_f1",
        "train_loss",
        "val_f1",
        "value/dropout",
    ]
    assert t3.history["full_val_f1"] == pytest.approx({1: 0.84, 3: 0.79})
    assert len(t3.history["val_f1"]) == 4
    assert load_experiment(uri, EXPERIMENT, "99-old").methods[0].name == "OLD"
    assert load_experiment(uri, EXPERIMENT, "0f1e").invocation_id == INVOCATION  # a prefix


def test_method_table_values(table: pd.DataFrame) -> None:
    bl, pdm = table.loc["BL"], table.loc["PD"]
    s2 = math.sqrt(2)  # the sample std of two values a, b is |a - b| / sqrt(2)
    assert (bl["search"], bl["n_trials"], bl["n_diverged"], bl["n_errors"]) == ("grid", 2, 1, 0)
    assert bl["best_val_f1"] == pytest.approx(0.80)
    assert (bl["val_f1_mean"], bl["val_f1_std"]) == pytest.approx((0.75, 0.10 / s2))
    assert (bl["test_f1_mean"], bl["test_f1_std"]) == pytest.approx((0.72, 0.12 / s2))
    # the last epoch end's test F1 (+0.01 over the best epoch's in the synthetic history)
    assert bl["final_test_f1_mean"] == pytest.approx(0.73)
    assert (bl["gap_mean"], bl["gap_std"]) == pytest.approx((0.15, 0.10 / s2))
    assert (bl["trial_seconds"], bl["passes"]) == pytest.approx((4.0, 80.0))
    # per seed, the best-validation trial: BL keeps both (one per seed)
    assert bl["n_seeds"] == 2
    assert (bl["sel_val_f1_mean"], bl["sel_test_f1_mean"]) == pytest.approx((0.75, 0.72))

    assert (pdm["n_trials"], pdm["n_diverged"], pdm["n_errors"]) == (3, 0, 1)
    assert pdm["best_val_f1"] == pytest.approx(0.90)
    assert (pdm["val_f1_mean"], pdm["val_f1_std"]) == pytest.approx((0.87, 0.06 / s2))
    assert (pdm["test_f1_mean"], pdm["test_f1_std"]) == pytest.approx((0.83, 0.04 / s2))
    assert (pdm["gap_mean"], pdm["gap_std"]) == pytest.approx((0.06, 0.02 / s2))
    assert (pdm["trial_seconds"], pdm["passes"]) == pytest.approx((6.0, 120.0))
    # cost in trainings of the original per seed: 3 period-engine trials over 2 seeds
    assert pdm["t_ori_per_seed"] == pytest.approx(1.5) and bl["t_ori_per_seed"] == 1.0
    # PD: seed 0 selects t2 (0.90 > 0.84); seed 1 has only the errored trial
    assert pdm["n_seeds"] == 1
    assert (pdm["sel_val_f1_mean"], pdm["sel_test_f1_mean"]) == pytest.approx((0.90, 0.85))
    assert math.isnan(pdm["sel_val_f1_std"])


def test_render_markdown_and_csv(table: pd.DataFrame) -> None:
    df = table.reset_index()
    md = render_table(df, "md")
    lines = md.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| method | search | trials |")
    assert lines[2] == (
        "| BL | grid | 2 | 1 | 0 | 2 | 0.750 ± 0.071 | 0.720 ± 0.085 | 0.720 ± 0.085 "
        "| 0.730 ± 0.085 | 0.150 ± 0.071 | 1.000 / 1.100 | 4.0 | 80 | 1.00 |"
    )
    assert "| PD | controller | 3 | 0 | 1 | 1 | 0.900 | 0.850 | 0.830 ± 0.028 |" in lines[3]
    back = pd.read_csv(io.StringIO(render_table(df, "csv")))
    assert list(back.columns) == list(df.columns)
    assert back["val_f1_mean"].tolist() == pytest.approx([0.75, 0.87])
    with pytest.raises(ConfigError, match="format"):
        render_table(df, "html")


def test_single_trial_has_no_std() -> None:
    df = pd.DataFrame([{"method": "A", "search": "grid", "n_trials": 1, "n_diverged": 0,
                        "n_errors": 0, "n_seeds": 1, "sel_val_f1_mean": 0.5,
                        "sel_val_f1_std": math.nan, "sel_test_f1_mean": math.nan,
                        "sel_test_f1_std": math.nan, "best_val_f1": 0.5, "val_f1_mean": 0.5,
                        "val_f1_std": math.nan, "test_f1_mean": math.nan,
                        "test_f1_std": math.nan, "final_test_f1_mean": math.nan,
                        "final_test_f1_std": math.nan, "gap_mean": 0.1, "gap_std": math.nan,
                        "final_train_loss_mean": math.nan, "final_val_loss_mean": math.nan,
                        "trial_seconds": 1.0, "passes": 10.0,
                        "t_ori_per_seed": 1.0}])  # fmt: skip
    row = "| A | grid | 1 | 0 | 0 | 1 | 0.500 | – | – | – | 0.100 | – / – | 1.0 | 10 | 1.00 |"
    assert row in render_table(df)


def test_write_plots(uri: str, tmp_path: Path) -> None:
    paths = write_plots(load_experiment(uri, EXPERIMENT), tmp_path / "plots")
    assert [p.name for p in paths] == [
        "val_f1.png",
        "values.png",
        "train_vs_val.png",
        "losses.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


def test_compare_experiment_text_and_files(uri: str, tmp_path: Path) -> None:
    text = compare_experiment(EXPERIMENT, uri, tmp_path / "out", "md", "0f1e")
    assert text.startswith(f"experiment {EXPERIMENT!r}, invocation {INVOCATION} (2 methods, 5")
    assert "| BL | grid |" in text and "| PD | controller |" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "anytime.png",
        "losses.png",
        "methods.md",
        "seeds.png",
        "train_vs_val.png",
        "val_f1.png",
        "values.png",
    ]
    csv_text = compare_experiment(EXPERIMENT, uri, fmt="csv")
    assert csv_text.splitlines()[0].startswith("method,search,n_trials")


def test_unknown_experiment_and_invocation(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(uri, "nope")
    assert err.value.field == "experiment"
    assert "no MLflow experiment named 'nope'" in str(err.value)
    assert EXPERIMENT in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'zzz' not found; found: 0f1e2d3c-new, 99-old"):
        load_experiment(uri, EXPERIMENT, "zzz")
    with pytest.raises(ConfigError, match="no MLflow database"):
        load_experiment(f"sqlite:///{tmp_path}/missing.db", EXPERIMENT)
    assert not (tmp_path / "missing.db").exists()
