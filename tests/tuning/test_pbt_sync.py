"""The synchronous-PBT barrier release (raytune_periodic.tuning.pbt_sync) on Ray's own classes."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import PopulationBasedTraining  # noqa: E402

from raytune_periodic.tuning.pbt_sync import SyncSafePB2, SyncSafePBT  # noqa: E402


class _Controller:
    """The part of Tune's controller that PBT's ``choose_trial_to_run`` reads."""

    search_alg = None

    def __init__(self, trials: list[Trial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[Trial]:
        return self.trials

    def get_live_trials(self) -> list[Trial]:
        return [t for t in self.trials if not t.is_finished()]


def _population(cls: type, statuses: list[str], times: list[int]) -> tuple[Any, _Controller]:
    kwargs: dict[str, Any] = {"time_attr": "training_iteration", "perturbation_interval": 2}
    if cls is SyncSafePB2:
        kwargs["hyperparam_bounds"] = {"x": [0.0, 1.0]}
    else:
        kwargs["hyperparam_mutations"] = {"x": [0.0, 1.0]}
    sched = cls(synch=True, metric="m", mode="max", **kwargs)
    trials = [Trial("t", config={"x": 0.5}, trial_id=f"t{i}", stub=True) for i in range(2)]
    ctl = _Controller(trials)
    for trial, status, time in zip(trials, statuses, times, strict=True):
        sched.on_trial_add(ctl, trial)
        sched._trial_state[trial].last_train_time = time
        trial.set_status(status)
    return sched, ctl


def test_ray_alone_deadlocks_in_the_state_seen_in_ci() -> None:
    # one trial PAUSED at the barrier (iteration 4), the one it waits for TERMINATED at 6
    sched, ctl = _population(PopulationBasedTraining, [Trial.PAUSED, Trial.TERMINATED], [4, 6])
    sched._next_perturbation_sync = 4
    assert sched.choose_trial_to_run(ctl) is None  # Ray's scheduler: nobody ever runs again


@pytest.mark.parametrize("cls", [SyncSafePBT, SyncSafePB2])
def test_orphaned_barrier_is_released(cls: type) -> None:
    sched, ctl = _population(cls, [Trial.PAUSED, Trial.TERMINATED], [4, 6])
    sched._next_perturbation_sync = 4
    assert sched.choose_trial_to_run(ctl) is ctl.trials[0]
    assert sched._next_perturbation_sync == 6 and sched.barrier_releases == 1


def test_barrier_kept_while_a_trial_is_running() -> None:
    sched, ctl = _population(SyncSafePBT, [Trial.PAUSED, Trial.RUNNING], [4, 3])
    sched._next_perturbation_sync = 4
    assert sched.choose_trial_to_run(ctl) is None  # the running trial will reach 4
    assert sched._next_perturbation_sync == 4 and sched.barrier_releases == 0


def test_earliest_waiting_trial_runs_first() -> None:
    # both paused past the barrier (e.g. after an error): the one behind catches up first
    sched, ctl = _population(SyncSafePBT, [Trial.PAUSED, Trial.PAUSED], [6, 4])
    sched._next_perturbation_sync = 4
    assert sched.choose_trial_to_run(ctl) is ctl.trials[1]
    assert sched._next_perturbation_sync == 6


# ----------------------------------------------------------------------- exploit checkpoint guard
def _trainable(trial_id: str) -> Any:
    from types import SimpleNamespace

    from raytune_periodic.tuning.trainable import PeriodTrainable

    spec = {
        "dataset": {"name": "digits", "train_size": 100},
        "model": {"name": "mlp", "hidden": [16]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 2, "batch_size": 16, "val_batches": 1},
        "controller": {"type": "constant"},
    }
    rp = {"spec": spec, "periods": 6, "seed": 0, "iteration_periods": 1}
    trainable = PeriodTrainable({"rp": rp, "values": {"dropout": 0.1}})
    trainable._trial_info = SimpleNamespace(trial_id=trial_id)
    return trainable


def test_clone_restores_the_donor_checkpoint_of_its_own_iteration(tmp_path) -> None:
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    donor = _trainable("donor")
    for i in range(2):
        donor.train()
        donor.train()
        donor.save(str(tmp_path / "donor" / f"checkpoint_00000{i}"))
    later = tmp_path / "donor" / "checkpoint_000001"  # period 4
    clone = _trainable("clone")
    # Tune restores the clone to the donor's iteration-2 result, but hands it the later checkpoint
    clone.restore(
        _TrainingResult(checkpoint=Checkpoint(str(later)), metrics={"training_iteration": 2})
    )
    assert clone.engine.period == 2 and clone.donor == ("donor", 1)
    # the matching checkpoint is used as is
    fresh = _trainable("clone2")
    fresh.restore(
        _TrainingResult(checkpoint=Checkpoint(str(later)), metrics={"training_iteration": 4})
    )
    assert fresh.engine.period == 4
    # an own checkpoint (crash resume) is never swapped
    donor.restore(
        _TrainingResult(checkpoint=Checkpoint(str(later)), metrics={"training_iteration": 2})
    )
    assert donor.engine.period == 4


def test_an_exploit_in_another_worker_keeps_the_trials_own_best(tmp_path) -> None:
    """#16: a PBT exploit restores a donor's checkpoint; in a fresh worker the trial's own best
    (the model ``compare`` reports) comes back from its trial folder, not lost as incomplete."""
    from types import SimpleNamespace

    import torch
    from pyarrow import fs as pafs

    def storage(trial: str) -> SimpleNamespace:
        return SimpleNamespace(  # the two attributes of Tune's StorageContext used here
            storage_filesystem=pafs.LocalFileSystem(),
            trial_fs_path=str(tmp_path / trial),
            persist_artifacts=lambda **_: None,
        )

    me, donor = _trainable("me"), _trainable("donor")
    me._storage, donor._storage = storage("me"), storage("donor")
    for t in (me, donor):
        for _ in range(4):
            t.train()
        (tmp_path / t.trial_id / "ckpt").mkdir(parents=True)
        t.save_checkpoint(str(tmp_path / t.trial_id / "ckpt"))
    best = me._rp_best
    assert best.state is not None and best.f1 is not None

    fresh = _trainable("me")  # the same trial, exploited in another worker
    fresh._storage = storage("me")
    fresh.load_checkpoint(str(tmp_path / "donor" / "ckpt"))
    got = fresh._rp_best
    assert fresh.donor is not None and got.trial_id == "me" and got.complete
    assert (got.f1, got.period, got.values) == (best.f1, best.period, best.values)
    assert all(torch.equal(got.state[k], v) for k, v in best.state.items())
    result = fresh.train()  # the post-exploit step names the donor and times the load
    assert result["rp_donor_trial"] == "donor" and 0 <= result["rp_restore_seconds"] < 60
    assert result["rp_restore_start"] <= result["rp_wall"]

    nothing = _trainable("other")  # no stored best: marked incomplete, as before
    nothing._storage = storage("other")
    nothing.load_checkpoint(str(tmp_path / "donor" / "ckpt"))
    assert nothing._rp_best.trial_id == "other" and not nothing._rp_best.complete
