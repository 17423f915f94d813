"""Synthetic MLflow stores for the report tests, written with MlflowStore (SQLite, no Ray).

A helper module with a unique name (imported by the tests of this folder: pytest puts the
folder on ``sys.path``); ``conftest.py`` re-exports its fixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("statsmodels")
pytest.importorskip("autorank")

from raytune_periodic.protocol.mlflow_layout import (  # noqa: E402
    TAG_INVOCATION,
    TAG_KIND,
    TAG_METHOD,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
)
from raytune_periodic.tracking.mlflow_store import MlflowStore  # noqa: E402

PARENT_TAG = "mlflow.parentRunId"


@dataclass
class Trial:
    """One synthetic trial: its final test F1 (the last epoch end) and its best epoch."""

    method: str
    trial_id: str
    seed: int
    final_test: float
    best_val: float = 0.8
    test_at_best: float | None = None  #: default: final_test
    status: str | None = "ok"  #: None: never finished (no summary metrics)
    periods: int = 4
    duplicate: bool = False  #: also write a second, shorter run with the same trial id


def records(t: Trial) -> list[dict[str, float]]:
    """``periods`` periods of 10 passes; epochs end at odd steps, the best at step 1."""
    test_at_best = t.final_test if t.test_at_best is None else t.test_at_best
    recs = []
    for step in range(t.periods):
        val = t.best_val - 0.1 + 0.01 * step
        rec = {
            "step": step,
            "period": step,
            "epoch": step / 2,
            "passes": 10.0 * (step + 1),
            "train_loss": 1.0,
            "val_loss": 1.1,
            "val_f1": val,
            "train_f1": val + 0.05,
            "gap": 0.05,
            "period_seconds": 0.5,
            "value/dropout": 0.1 * (step % 3),
        }
        if step % 2 == 1:
            best = step == 1
            rec["full_val_f1"] = t.best_val if best else t.best_val - 0.05
            rec["test_f1"] = test_at_best if best else t.final_test
        recs.append(rec)
    if t.status == "diverged":  # the loss blew up in the last period
        recs[-1].update(train_loss=math.nan, val_loss=math.inf, val_f1=math.nan)
    return recs


def write_store(
    uri: str,
    experiment: str,
    trials: Sequence[Trial],
    invocation: str = "inv-0001",
    steps: bool = True,
) -> str:
    """The store of one invocation; methods in order of first appearance. Returns ``uri``."""
    with MlflowStore(uri, experiment, new_invocation=True) as store:
        inv = store.start_invocation(invocation, {"name": experiment, "seeds": [0]}, {"n": 1})
        methods: dict[str, str] = {}
        for t in trials:
            if t.method not in methods:
                methods[t.method] = store.start_method(inv, invocation, t.method, "grid", {})
            tags = {"seed": str(t.seed)}
            run = store.start_trial(methods[t.method], invocation, t.method, t.trial_id, {}, tags)
            recs = records(t)
            if steps:
                for rec in recs:
                    store.log_step(run, int(rec["step"]), rec)
            if t.status is not None:
                store.finish_trial(run, recs, t.status)
            if t.duplicate:
                _duplicate_run(store, methods[t.method], invocation, t)
    return uri


def _duplicate_run(store: MlflowStore, method_run: str, invocation: str, t: Trial) -> None:
    """A second run of the same trial (as a re-delivered spool would leave): running, one step."""
    store.flush()
    client = store.client
    tags = {
        PARENT_TAG: method_run,
        TAG_KIND: "trial",
        TAG_INVOCATION: invocation,
        TAG_METHOD: t.method,
        TAG_TRIAL: t.trial_id,
        TAG_SEED: str(t.seed),
        TAG_STATUS: "running",
    }
    run = client.create_run(store.experiment_id, tags=tags, run_name=f"{t.trial_id}-copy")
    client.log_metric(run.info.run_id, "val_f1", 0.123, step=0)


@pytest.fixture
def store_factory(tmp_path: Path) -> Callable[..., str]:
    """``store_factory(trials, experiment="exp", **kw)`` → the URI of a fresh SQLite store."""
    count = iter(range(1000))

    def make(trials: Sequence[Trial], experiment: str = "exp", **kw: object) -> str:
        uri = f"sqlite:///{tmp_path / f'mlflow{next(count)}.db'}"
        return write_store(uri, experiment, trials, **kw)  # type: ignore[arg-type]

    return make


def paired_trials(
    diffs: Sequence[float], base: Sequence[float], names: tuple[str, str] = ("BL", "M")
) -> list[Trial]:
    """One trial per seed and method: BL scores ``base[s]``, M scores ``base[s] + diffs[s]``
    (selected and final test F1 alike)."""
    out = []
    for seed, (b, d) in enumerate(zip(base, diffs)):
        out.append(Trial(names[0], f"{names[0]}-{seed}", seed, b))
        out.append(Trial(names[1], f"{names[1]}-{seed}", seed, b + d))
    return out
