"""A trial's best-validation-epoch weights: kept exactly (the weights that scored
``test_f1_at_best``), logged to a real SQLite MLflow store as MLflow PyTorch models, spooled in an
outage, loaded back weights-only and by ``mlflow.pytorch.load_model``; the ``selected`` rule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from store_helpers import make_store, tree

from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    MODEL_ARTIFACTS,
    MODEL_INFO_FILE,
    SPEC_ARTIFACT,
    TAG_MODELS,
)
from raytune_periodic.tracking import best_weights, summarize
from raytune_periodic.tracking.models import (
    EXTRA_DIR,
    build_model,
    download_model,
    load_model_dir,
    log_trial_models,
    read_model_info,
    wants_models,
)
from raytune_periodic.training import build_engine

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [32]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "controller": {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}},
    "train": {"period_length": 7, "periods": 14, "batch_size": 32, "seed": 3},
}


def _tracked_run(spec: dict[str, Any], trial_id: str) -> tuple[Any, list[dict[str, float]]]:
    """A bare engine trained with the trainable's hooks (``track`` before each period batch)."""
    trainable = SimpleNamespace(
        config={"rp": {"log_models": "all"}}, trial_id=trial_id, engine=build_engine(spec)
    )
    records = []
    for _ in range(7):
        best_weights.track(trainable)
        records += [r.metrics() for r in trainable.engine.run(2)]
    return trainable, [{**r, "step": r["period"]} for r in records]


def _trained(tmp: Path) -> tuple[Any, list[dict[str, float]], Path]:
    """``_tracked_run`` of SPEC and a checkpoint folder holding the tracker's files."""
    trainable, records = _tracked_run(SPEC, "t0")
    ckpt = tmp / "checkpoint_000001"
    ckpt.mkdir()
    best_weights.save(trainable, str(ckpt))
    return trainable, records, ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict], Path]:
    return _trained(tmp_path_factory.mktemp("trained"))


def test_best_weights_are_the_ones_that_scored_test_f1_at_best(trained: tuple) -> None:
    trainable, records, ckpt = trained
    summary = summarize(records)
    tracker = trainable._rp_best
    ends = [r for r in records if "full_val_f1" in r]
    assert len(ends) >= 3  # several epoch ends, so "best" is a real choice
    assert tracker.f1 == summary["best_val_f1"]
    first_best = next(r for r in ends if r["full_val_f1"] == summary["best_val_f1"])
    assert tracker.period == int(first_best["period"])
    # the snapshot is taken at the epoch end, not at the period end: a fresh engine with
    # these weights scores exactly test_f1_at_best (the period trained on after it)
    probe = build_engine(SPEC)
    probe.model.load_state_dict(tracker.state)
    probe.regularizers.set_values(tracker.values)
    assert probe.evaluate("test")[1] == summary["test_f1_at_best"]
    meta = json.loads((ckpt / best_weights.META_FILE).read_text())
    assert meta["best_val_f1"] == summary["best_val_f1"] and meta["complete"] is True
    assert meta["class_names"] == [str(i) for i in range(10)]
    own = best_weights.BestWeights.load(str(ckpt), "t0")
    assert own is not None and own.period == tracker.period
    assert all(torch.equal(own.state[k], tracker.state[k]) for k in tracker.state)
    assert best_weights.BestWeights.load(str(ckpt), "another-trial") is None


def test_logged_models_load_weights_only_and_with_mlflow(trained: tuple, tmp_path: Path) -> None:
    import mlflow

    trainable, records, ckpt = trained
    store = make_store(tmp_path)
    _, _, run = tree(store)
    kinds = log_trial_models(store, run, str(ckpt), SPEC, mode="all", seed=0, records=records)
    assert kinds == ["best", "last"]
    store.flush()
    client = store.client._real
    tags = client.get_run(run).data.tags
    assert tags[TAG_MODELS] == "best,last"
    assert json.loads(Path(client.download_artifacts(run, SPEC_ARTIFACT)).read_text()) == SPEC
    assert not list((Path(store.spool.path).parent / "models").iterdir())  # staging removed
    x = trainable.engine.test_set.tensors[0][:5].cpu()
    probe = build_engine(SPEC)
    probe.model.load_state_dict(trainable._rp_best.state)
    probe.model.eval()
    with torch.no_grad():
        want_best, want_last = probe.model(x), trainable.engine.model.eval()(x)
    for kind, want in (("best", want_best), ("last", want_last)):
        folder = download_model(client, run, kind, tmp_path / "dl")
        model, info = load_model_dir(folder)
        assert info["kind"] == kind and info["spec"] == SPEC
        with torch.no_grad():
            assert torch.allclose(model(x), want, atol=1e-6)
        mlflow.set_tracking_uri(store.tracking_uri)
        flavor = mlflow.pytorch.load_model(f"runs:/{run}/{MODEL_ARTIFACTS[kind]}")
        assert torch.allclose(flavor(x), want, atol=1e-5)
    assert read_model_info(folder)["val_f1"] is None  # last: no validation score claimed


def test_models_spool_during_an_outage_and_arrive_on_sync(trained: tuple, tmp_path: Path) -> None:
    _, records, ckpt = trained
    store = make_store(tmp_path)
    _, _, run = tree(store)
    store.client.down = True
    log_trial_models(store, run, str(ckpt), SPEC, mode="all", seed=0, records=records)
    store.flush()
    staged = list((Path(store.spool.path).parent / "models").iterdir())
    assert len(staged) == 1 and store.spool.pending() >= 1
    store.client.down = False
    assert store.sync() == 0
    real = store.client._real
    assert real.get_run(run).data.tags[TAG_MODELS] == "best,last"
    assert {f.path for f in real.list_artifacts(run, "model")} == set(MODEL_ARTIFACTS.values())
    assert not staged[0].exists()


def test_selected_rule_logs_every_running_best_per_seed() -> None:
    store = object.__new__(type("S", (), {"__weakref__": None}))

    def recs(f1: float) -> list[dict[str, float]]:
        return [{"step": 0.0, "full_val_f1": f1}]

    got = [wants_models(store, "selected", s, recs(f)) for s, f in
           [(0, 0.5), (0, 0.4), (0, 0.6), (0, 0.6), (1, 0.1), (0, math.nan)]]  # fmt: skip
    assert got == [True, False, True, True, True, False]
    assert wants_models(store, "none", 0, recs(0.9)) is False
    assert wants_models(store, "all", 0, recs(0.0)) is True


def test_bad_models_are_one_line_errors(trained: tuple, tmp_path: Path) -> None:
    _, records, ckpt = trained
    store = make_store(tmp_path)
    _, _, run = tree(store)
    log_trial_models(store, run, str(ckpt), SPEC, mode="none", seed=0, records=records)
    store.flush()
    with pytest.raises(ConfigError, match="no model/best artifact") as err:
        download_model(store.client._real, run, "best", tmp_path / "dl")
    assert "\n" not in str(err.value)
    folder = tmp_path / "other" / EXTRA_DIR
    folder.mkdir(parents=True)
    (folder / MODEL_INFO_FILE).write_text(json.dumps({"layout": 99}))
    with pytest.raises(ConfigError, match="model layout 99"):
        read_model_info(folder.parent)
    info = {"spec": {**SPEC, "model": {"name": "mlp", "hidden": [16]}}}
    info |= {"input_shape": [1, 8, 8], "num_classes": 10}
    with pytest.raises(ConfigError, match="weights do not fit model 'mlp'"):
        build_model(info, torch.load(ckpt / best_weights.BEST_FILE, weights_only=True))


def test_a_replaced_engine_is_freed_at_once() -> None:
    """A reused actor rebuilds its engine per trial: the tracker must not keep the old one alive
    through a reference cycle (measured: periods ~10 % slower under Tune while old engines
    lingered until a garbage collection)."""
    import gc
    import weakref

    trainable = SimpleNamespace(
        config={"rp": {"log_models": "selected"}}, trial_id="a", engine=build_engine(SPEC)
    )
    best_weights.track(trainable)
    trainable.engine.run(2)
    old = weakref.ref(trainable.engine)
    gc.disable()
    try:
        trainable.trial_id, trainable.engine = "b", build_engine(SPEC)  # reset_config
        best_weights.track(trainable)
        assert old() is None  # freed by reference counting, no collection needed
    finally:
        gc.enable()
    assert len(trainable.engine.epoch_eval_listeners) == 1
    best_weights.track(trainable)  # a second track on the same engine adds no listener
    assert len(trainable.engine.epoch_eval_listeners) == 1


def test_the_requirement_scan_is_skipped_only_during_a_save(trained: tuple, tmp_path: Path) -> None:
    from mlflow.utils import environment

    from raytune_periodic.tracking.models import save_model_dir

    original = environment.warn_dependency_requirement_mismatches
    calls: list[Any] = []
    trainable, _, ckpt = trained
    meta = json.loads((ckpt / best_weights.META_FILE).read_text())
    state = torch.load(ckpt / best_weights.LAST_FILE, weights_only=True)
    environment.warn_dependency_requirement_mismatches = calls.append
    try:
        save_model_dir(tmp_path / "last", "last", state, meta, SPEC)
        assert calls == []  # not called inside the save
        assert environment.warn_dependency_requirement_mismatches == calls.append  # restored
    finally:
        environment.warn_dependency_requirement_mismatches = original
    assert (tmp_path / "last" / "MLmodel").is_file()


def test_exports_from_two_threads_leave_torch_out_of_compile_mode(
    trained: tuple, tmp_path: Path
) -> None:
    """Two stores exporting at once (two searches in threads of one process): torch keeps its
    exporting/compiling flags process-wide and restores them per export, so overlapping exports
    could leave them set and every later ``torch.compile`` a no-op. Exports are serialised."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from raytune_periodic.tracking.models import save_model_dir

    _, _, ckpt = trained
    meta = json.loads((ckpt / best_weights.META_FILE).read_text())
    state = torch.load(ckpt / best_weights.LAST_FILE, weights_only=True)
    start = Barrier(2)

    def export(i: int) -> None:
        (tmp_path / str(i)).mkdir()
        start.wait()
        save_model_dir(tmp_path / str(i) / "last", "last", state, meta, SPEC)

    for pair in range(3):
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(export, [2 * pair, 2 * pair + 1]))
        assert not torch.compiler.is_exporting() and not torch.compiler.is_compiling()
    assert all((tmp_path / str(i) / "last" / "MLmodel").is_file() for i in range(6))


def test_pfrewa_best_model_is_the_averaged_one_that_was_evaluated() -> None:
    """A model-level regularizer (PFREWA's weight average) changes the weights only for the
    evaluation: the logged best model must be those averaged weights, not the raw ones."""
    spec = {
        **SPEC,
        "regularizers": [{"kind": "ewa", "where": "model", "value": 0.5}],
        "controller": {"type": "constant"},
    }
    trainable, records = _tracked_run(spec, "ewa")
    summary = summarize(records)
    tracker = trainable._rp_best
    assert tracker.f1 == summary["best_val_f1"]
    probe = build_engine(spec)  # a fresh engine: no period in progress, evaluates as loaded
    probe.model.load_state_dict(tracker.state)
    assert probe.evaluate("test")[1] == summary["test_f1_at_best"]
    assert probe.evaluate("val")[1] == summary["best_val_f1"]
