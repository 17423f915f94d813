"""Bounded disk and automatic period batching of ``PeriodTrainable``, and PBT that keeps its
workers: a trial's checkpoint does not grow with the periods it ran (the per-period history lives
in segments beside the checkpoints), PBT keeps a bounded number of checkpoints while every
exploit still finds its donor's checkpoint, and paused PBT trials resume in their old actor."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 100},
    "model": {"name": "mlp", "hidden": [16]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"period_length": 2, "batch_size": 16, "val_batches": 1},
    "controller": {"type": "constant"},
}


def _trainable(trial_id: str, storage: Any = None, **rp: Any) -> Any:
    from raytune_periodic.tuning.trainable import PeriodTrainable

    rp = {"spec": SPEC, "periods": 100, "seed": 0, "iteration_periods": 1, **rp}
    trainable = PeriodTrainable({"rp": rp, "values": {"dropout": 0.1}})
    trainable._trial_info = SimpleNamespace(trial_id=trial_id)
    trainable._storage = storage
    return trainable


class _Storage(SimpleNamespace):
    """Tune's ``StorageContext`` as a trainable sees it: a trial folder on a filesystem (what
    ``HistorySegments`` reads); checkpoints stay where ``save`` wrote them."""

    sync_config = SimpleNamespace(sync_artifacts_on_checkpoint=False)

    def _update_checkpoint_index(self, metrics: dict) -> None:
        pass

    def persist_current_checkpoint(self, checkpoint: Any) -> Any:
        return checkpoint

    def persist_artifacts(self, force: bool = False) -> None:
        pass


def _storage(root: Path) -> Any:
    from pyarrow import fs

    return _Storage(storage_filesystem=fs.LocalFileSystem(), trial_fs_path=str(root))


def test_checkpoint_size_does_not_grow_with_periods_and_restore_resends_all(tmp_path) -> None:
    trial = _trainable("t", _storage(tmp_path / "trial"))
    sizes = {}
    for period in range(1, 41):
        trial.train()
        if period in (5, 40):
            path = tmp_path / f"ckpt{period}"
            trial.save(str(path))
            sizes[period] = os.path.getsize(path / "engine.pt")
    assert abs(sizes[40] - sizes[5]) < 512, sizes  # inline history: +~300 B a period
    segments = glob.glob(str(tmp_path / "trial" / "rp_history" / "seg-*.json"))
    assert len(segments) == 2  # one per save, each holding only the periods since the last
    # a crash-restore (own checkpoint) re-sends every period before it, each once
    fresh = _trainable("t", _storage(tmp_path / "trial"))
    fresh.restore(str(tmp_path / "ckpt40"))
    assert [int(r["period"]) for r in fresh.replay] == list(range(40))
    result = fresh.train()  # the replay goes out with the first result after the restore
    assert [int(r["period"]) for r in json.loads(result["rp_records"])] == list(range(41))
    # restoring an older checkpoint re-sends only the periods it holds
    older = _trainable("t", _storage(tmp_path / "trial"))
    older.restore(str(tmp_path / "ckpt5"))
    assert [int(r["period"]) for r in older.replay] == list(range(5))


def test_auto_batching_stops_at_boundaries_and_asks_for_checkpoints(monkeypatch) -> None:
    from raytune_periodic.tuning import trainable as mod

    monkeypatch.setattr(mod, "ITERATION_SECONDS", 1e9)  # only boundaries end an iteration
    trial = _trainable("t", iteration_periods="auto", periods=10, align=4, checkpoint_every=3)
    results = [trial.train() for _ in range(3)]
    assert [r["rp_periods"] for r in results] == [4, 8, 10]  # never across a multiple of 4
    assert [len(json.loads(r["rp_records"])) for r in results] == [4, 4, 2]
    assert results[0].get("should_checkpoint") and results[1].get("should_checkpoint")
    assert results[2]["done"]
    monkeypatch.setattr(mod, "ITERATION_SECONDS", 0.0)  # time's up after every period
    quick = _trainable("q", iteration_periods="auto", periods=10)
    assert [quick.train()["rp_periods"] for _ in range(2)] == [1, 2]


PBT_CONFIG: dict[str, Any] = {
    "name": "pbtkeep",
    "seeds": [0],
    "budget": {"periods": 8, "trials": 4},
    "base": {
        "dataset": {"name": "digits", "train_size": 150, "label_noise": 0.3},
        "model": {"name": "mlp", "hidden": [32]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 2, "batch_size": 32, "val_batches": 1},
    },
    "methods": {
        "PBT": {
            "search": "pbt",
            "space": {"dropout": [0.0, 0.8]},
            "perturbation_interval": 2,
            "quantile_fraction": 0.5,
            "resample_probability": 1.0,
        }
    },
    "tune": {"checkpoint_every": 1, "verbose": 0, "num_cpus": 2},
}


@pytest.mark.integration
def test_pbt_keeps_few_checkpoints_finds_donors_and_reuses_workers(tmp_path, caplog) -> None:
    import ray
    from mlflow import MlflowClient

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    cfg = validate_config(PBT_CONFIG)
    keep = cfg.plan["PBT"].method.checkpoint_keep(checkpoint_every=1)
    assert keep == 5  # 2 periodic saves per interval + pause, barrier, end
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        outcome = run_experiment(cfg, storage_path=str(tmp_path / "ray"), mlflow_uri=uri)
    finally:
        ray.shutdown()
    assert outcome.ok
    assert "no donor checkpoint has that period" not in caplog.text
    rows = []
    for result in glob.glob(os.path.join(outcome.tuner_paths["PBT-s0"], "*", "result.json")):
        trial_dir = os.path.dirname(result)
        assert len(glob.glob(os.path.join(trial_dir, "checkpoint_*"))) <= keep
        rows += [json.loads(line) for line in Path(result).read_text().splitlines()]
    exploits = [r for r in rows if r.get("rp_donor_trial")]
    assert exploits, "no exploit happened"
    # 4 members on 2 CPUs never all run: no member waits in its actor (2 would hold the CPUs
    # the other 2 need), every exploit is Ray's pause + restore (tuning/pbt_sync.py)
    assert all(r["rp_exploit_in_actor"] == 0 for r in exploits), exploits
    for r in exploits:  # the clone continued from the donor's period at the barrier
        first = json.loads(r["rp_records"])[0]["period"]
        assert first == r["rp_donor_period"] + 1 and first % 2 == 0, r
    assert {r["rp_periods"] for r in rows if r.get("done")} == {8}
    # 4 trials, 4 barriers each, 2 CPUs: every pause kept its worker (Tune alone: a new one
    # per resumed trial)
    assert len({r["pid"] for r in rows}) <= 2, sorted({r["pid"] for r in rows})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pbtkeep")
    for run in client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")]
        assert steps == list(range(8))


def test_a_trial_worker_does_not_import_torchvision() -> None:
    """A trial worker imports the trainable first thing; torchvision (with torch._dynamo) added
    ~2-4 s to every worker's start-up. It is imported where it is used (CIFAR, ResNet, augment)."""
    import subprocess
    import sys

    code = "import sys, raytune_periodic.tuning.trainable; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
