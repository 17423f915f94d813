"""MlflowStore against a real SQLite MLflow (one database for the module; no Ray)."""

from __future__ import annotations

import csv
import math
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from raytune_periodic.tracking import flatten, metric_key, own_passes, schedule_csv, summarize
from raytune_periodic.tracking.mlflow_store import MlflowStore

EXPERIMENT = "store-tests"


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def store(uri: str) -> MlflowStore:
    with MlflowStore(uri, EXPERIMENT) as s:
        yield s


def _tree(store: MlflowStore, inv: str, trial: str = "t_00000") -> tuple[str, str, str]:
    inv_run = store.start_invocation(
        inv,
        {"experiment": "x", "methods": {"PD": {"p": (0.1, 0.5)}}},
        {"dataset": "digits"},
        {"storage_path": "/tmp/ray"},
    )
    method_run = store.start_method(inv_run, inv, "PD", "controller", {"controller": {"p": 0.3}})
    trial_run = store.start_trial(
        method_run, inv, "PD", trial, {"train": {"lr": 1e-3}, "seed": 1}, {"seed": 1}
    )
    return inv_run, method_run, trial_run


def _record(step: int, **extra: float) -> dict[str, float]:
    rec = {
        "step": step,
        "period": step,
        "epoch": step / 4,
        "passes": 20.0 * (step + 1),
        "train_loss": 1.0 / (step + 1),
        "train_f1": 0.5 + 0.05 * step,
        "val_loss": 1.2 / (step + 1),
        "val_f1": 0.45 + 0.04 * step,
        "period_seconds": 0.25,
        "value/dropout": 0.1 * step,
    }
    rec["gap"] = rec["train_f1"] - rec["val_f1"]
    rec.update(extra)
    return rec


def _history(store: MlflowStore, run_id: str, key: str) -> list[tuple[int, float]]:
    store.flush()
    return sorted((m.step, m.value) for m in store.client.get_metric_history(run_id, key))


# ----------------------------------------------------------------------------- run tree
def test_run_tree_tags_params_and_parents(store: MlflowStore) -> None:
    inv = uuid.uuid4().hex
    inv_run, method_run, trial_run = _tree(store, inv)
    c = store.client
    inv_r, method_r, trial_r = c.get_run(inv_run), c.get_run(method_run), c.get_run(trial_run)

    assert inv_r.data.tags["rp.kind"] == "invocation"
    assert inv_r.data.tags["rp.invocation_id"] == inv
    assert inv_r.data.tags["rp.storage_path"] == "/tmp/ray"
    assert "mlflow.parentRunId" not in inv_r.data.tags
    assert inv_r.data.params == {"dataset": "digits"}
    config = Path(c.download_artifacts(inv_run, "config.yaml")).read_text()
    assert "experiment: x" in config and "- 0.1" in config  # tuples dumped as lists

    assert method_r.data.tags["mlflow.parentRunId"] == inv_run
    assert method_r.data.tags["rp.kind"] == "method"
    assert method_r.data.tags["rp.method"] == "PD"
    assert method_r.data.tags["rp.search"] == "controller"
    assert method_r.data.params == {"controller.p": "0.3"}

    assert trial_r.data.tags["mlflow.parentRunId"] == method_run
    for key, val in {"kind": "trial", "method": "PD", "trial_id": "t_00000", "seed": "1"}.items():
        assert trial_r.data.tags[f"rp.{key}"] == val
    assert trial_r.data.tags["rp.invocation_id"] == inv
    assert trial_r.data.tags["rp.status"] == "running"
    assert trial_r.data.params == {"train.lr": "0.001", "seed": "1"}
    assert trial_r.info.status == "RUNNING"


def test_start_is_idempotent_and_params_write_once(store: MlflowStore, uri: str) -> None:
    inv = uuid.uuid4().hex
    first = _tree(store, inv)
    assert _tree(store, inv) == first  # same store: cached
    store.finish_trial(first[2], [_record(0)], "error")

    fresh = MlflowStore(uri, EXPERIMENT)  # a --resume in a new process: found by tags
    inv_run = fresh.start_invocation(inv, {}, {"dataset": "cifar10", "n_methods": 3})
    method_run = fresh.start_method(inv_run, inv, "PD", "controller", {"controller": {"p": 0.9}})
    trial_run = fresh.start_trial(method_run, inv, "PD", "t_00000", {"seed": 2}, {})
    assert (inv_run, method_run, trial_run) == first

    runs = store.client.search_runs([store.experiment_id], f"tags.`rp.invocation_id` = '{inv}'")
    assert len(runs) == 3
    c = store.client
    assert c.get_run(inv_run).data.params == {"dataset": "digits", "n_methods": "3"}
    assert c.get_run(method_run).data.params == {"controller.p": "0.3"}
    trial = c.get_run(trial_run)
    assert trial.data.params["seed"] == "1"
    assert trial.info.status == "RUNNING"  # re-opened after the error
    assert trial.data.tags["rp.status"] == "running"


# ----------------------------------------------------------------------------- steps
@pytest.mark.parametrize("synchronous", [False, True])
def test_each_step_logged_once_and_last_step(uri: str, synchronous: bool) -> None:
    store = MlflowStore(uri, EXPERIMENT, synchronous=synchronous)
    inv = uuid.uuid4().hex
    run = _tree(store, inv)[2]
    assert store.last_step(run) == -1
    for step in range(5):
        assert store.log_step(run, step, {**_record(step), "full_val_f1": None})
    assert not store.log_step(run, 2, _record(2))  # re-reported after a restore: skipped
    assert store.last_step(run) == 4

    fresh = MlflowStore(uri, EXPERIMENT, synchronous=synchronous)
    assert fresh.last_step(run) == 4
    assert not fresh.log_step(run, 4, _record(4))
    assert fresh.log_step(run, 5, _record(5))
    fresh.close()
    assert [s for s, _ in _history(store, run, "period")] == list(range(6))
    assert len(_history(store, run, "value/dropout")) == 6
    assert _history(store, run, "full_val_f1") == []
    assert _history(store, run, "step") == []  # the step is MLflow's, not a metric
    store.close()


def test_non_finite_values_are_stored(store: MlflowStore) -> None:
    run = _tree(store, uuid.uuid4().hex)[2]
    metrics = {"period": 0, "train_loss": math.nan, "a": math.inf, "b": -math.inf, "s": "ok"}
    store.log_step(run, 0, metrics)  # type: ignore[arg-type]
    (nan,) = _history(store, run, "train_loss")
    assert math.isnan(nan[1])
    assert _history(store, run, "a") == [(0, sys.float_info.max)]
    assert _history(store, run, "b") == [(0, -sys.float_info.max)]
    assert _history(store, run, "s") == []


def test_log_exploit(store: MlflowStore, uri: str) -> None:
    inv = uuid.uuid4().hex
    run = _tree(store, inv)[2]
    for step in range(3):
        store.log_step(run, step, _record(step))
    store.log_exploit(run, 2, "t_00003", 7)
    store.flush()
    fresh = MlflowStore(uri, EXPERIMENT)  # a later exploit from a resumed driver appends
    fresh.log_exploit(run, 5, "t_00001", 9)
    fresh.close()

    assert _history(store, run, "exploited") == [(2, 1.0), (5, 1.0)]
    assert _history(store, run, "exploit_donor_period") == [(2, 7.0), (5, 9.0)]
    assert store.client.get_run(run).data.tags["rp.last_donor"] == "t_00001"
    events = Path(store.client.download_artifacts(run, "pbt_events.csv")).read_text()
    assert list(csv.reader(events.splitlines())) == [
        ["step", "donor_trial_id", "donor_period"],
        ["2", "t_00003", "7"],
        ["5", "t_00001", "9"],
    ]


# ----------------------------------------------------------------------------- finishing
def _hand_history() -> list[dict[str, float]]:
    """Six steps; epochs end at steps 2 and 5; a PBT restore of a period-7 donor at step 4."""
    recs = [_record(s) for s in range(6)]
    recs[2].update(full_val_f1=0.70, full_val_loss=0.9, test_f1=0.68, test_loss=0.95)
    recs[5].update(full_val_f1=0.66, full_val_loss=1.0, test_f1=0.69, test_loss=0.9)
    recs[4].update(period=8, passes=180.0)  # restored donor (period 7, 160 passes) + 1 period
    recs[5].update(period=9, passes=200.0)
    return recs


def test_finish_trial_summary_and_schedule(store: MlflowStore) -> None:
    run = _tree(store, uuid.uuid4().hex)[2]
    recs = _hand_history()
    for rec in recs:
        store.log_step(run, int(rec["step"]), {k: v for k, v in rec.items() if k != "step"})
    store.log_exploit(run, 4, "t_00002", 7)
    summary = store.finish_trial(run, recs, "ok")
    store.flush()  # finish_trial is queued behind the run's steps

    expected = {
        "best_val_f1": 0.70,
        "test_f1_at_best": 0.68,
        "final_val_f1": 0.66,
        "final_test_f1": 0.69,  # the last epoch end's, not the best one's
        "final_gap": recs[5]["gap"],
        "final_train_loss": recs[5]["train_loss"],  # the last step's
        "final_val_loss": 1.0,  # the last epoch end's full_val_loss
        "trial_seconds": 1.5,
        "total_passes": 120.0,  # 4 periods of 20 + 180 / 9 + (200 - 180)
        "n_periods": 6.0,
        "n_exploits": 1.0,
    }
    assert summary == pytest.approx(expected)
    r = store.client.get_run(run)
    assert {k: r.data.metrics[k] for k in expected} == pytest.approx(expected)
    assert r.info.status == "FINISHED"
    assert r.data.tags["rp.status"] == "ok"

    text = Path(store.client.download_artifacts(run, "schedule.csv")).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 6
    assert list(rows[0]) == [
        "step",
        "period",
        "epoch",
        "value/dropout",
        "train_loss",
        "val_loss",
        "train_f1",
        "val_f1",
    ]
    assert [r["period"] for r in rows] == ["0", "1", "2", "3", "8", "9"]
    assert float(rows[3]["value/dropout"]) == pytest.approx(0.3)
    assert float(rows[5]["val_f1"]) == pytest.approx(recs[5]["val_f1"])


def test_finish_trial_from_history_and_statuses(store: MlflowStore) -> None:
    inv = uuid.uuid4().hex
    recs = _hand_history()
    runs = {}
    for status in ("diverged", "error"):
        runs[status] = _tree(store, inv, f"t_{status}")[2]
        for rec in recs:
            store.log_step(runs[status], int(rec["step"]), rec)
        summary = store.finish_trial(runs[status], None, status)  # records read back
        assert summary["best_val_f1"] == pytest.approx(0.70)
        assert summary["total_passes"] == pytest.approx(120.0)
        assert summary["n_exploits"] == 0
    store.flush()
    diverged, error = (store.client.get_run(runs[s]) for s in ("diverged", "error"))
    assert (diverged.info.status, diverged.data.tags["rp.status"]) == ("FINISHED", "diverged")
    assert (error.info.status, error.data.tags["rp.status"]) == ("FAILED", "error")
    with pytest.raises(ValueError, match="trial status"):
        store.finish_trial(runs["error"], recs, "crashed")


def test_finish_run_and_artifacts(store: MlflowStore, tmp_path: Path) -> None:
    inv_run, method_run, _ = _tree(store, uuid.uuid4().hex)
    store.log_artifact_text(method_run, "notes/readme.txt", "hello")
    (tmp_path / "table.md").write_text("| a |")
    store.log_artifact_file(method_run, tmp_path / "table.md", "report")
    store.finish_run(method_run)
    store.finish_run(inv_run, "KILLED")
    c = store.client
    assert Path(c.download_artifacts(method_run, "notes/readme.txt")).read_text() == "hello"
    assert Path(c.download_artifacts(method_run, "report/table.md")).read_text() == "| a |"
    assert c.get_run(method_run).info.status == "FINISHED"
    assert c.get_run(inv_run).info.status == "KILLED"


# ----------------------------------------------------------------------------- pure helpers
def test_summarize_without_epoch_end_uses_val_f1() -> None:
    recs = [_record(s) for s in range(3)]
    recs[1]["val_f1"] = math.nan
    out = summarize(recs)
    assert out["best_val_f1"] == pytest.approx(recs[2]["val_f1"])
    assert out["final_val_f1"] == pytest.approx(recs[2]["val_f1"])
    assert "test_f1_at_best" not in out
    assert summarize([]) == {
        "n_periods": 0.0,
        "n_exploits": 0.0,
        "trial_seconds": 0.0,
        "total_passes": 0.0,
    }


def test_own_passes_and_helpers() -> None:
    assert own_passes([_record(s) for s in range(4)]) == 80.0
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "{}",
    }
    assert metric_key("value/l1[0]") == "value/l1_0_"
    assert schedule_csv([]).strip() == "step,period,epoch,train_loss,val_loss,train_f1,val_f1"


def test_new_invocation_store_creates_without_searching_and_resume_reattaches(
    uri: str, store: MlflowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = uuid.uuid4().hex
    inv_run, method_run, _ = _tree(store, inv)
    fresh = MlflowStore(uri, EXPERIMENT, new_invocation=True)
    searches: list[str] = []
    real_search = fresh.client.search_runs

    def spy(*args, **kwargs):
        searches.append(args[1] if len(args) > 1 else kwargs.get("filter_string", ""))
        return real_search(*args, **kwargs)

    monkeypatch.setattr(fresh.client, "search_runs", spy)
    run = fresh.start_trial(method_run, inv, "PD", "t_new", {"seed": 1}, {"seed": 1})
    assert fresh.history_records(run) == []
    for step in range(3):
        assert fresh.log_step(run, step, {"period": step, "val_f1": 0.5 + step / 10})
    fresh.finish_trial(run, None, "ok")  # reads its own steps back
    fresh.close()
    assert searches == []  # one create_run, no tag search, for a trial start
    # a later process (--resume) re-attaches to the same run by its tags and skips logged steps
    again = MlflowStore(uri, EXPERIMENT)
    assert again.start_trial(method_run, inv, "PD", "t_new", {"seed": 1}, {"seed": 1}) == run
    assert [int(r["step"]) for r in again.history_records(run)] == [0, 1, 2]
    assert not again.log_step(run, 2, {"period": 2, "val_f1": 0.0})
    again.close()
    steps = [m.step for m in store.client.get_metric_history(run, "val_f1")]
    assert steps == [0, 1, 2]
    assert store.client.get_run(run).data.metrics["n_periods"] == 3
