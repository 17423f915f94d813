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


# --------------------------------------------------------- waiting and exploiting in the actor
class _TuneController(_Controller):
    """Adds the controller calls ``_HoldAtBarrier`` makes (recorded)."""

    def __init__(self, trials: list[Trial]) -> None:
        super().__init__(trials)
        self._tune_controller = self
        self.trained: list[str] = []
        self.paused: list[tuple[str, bool]] = []
        self._cached_trial_decisions: dict[str, str] = {}

    def _schedule_trial_train(self, trial: Trial) -> None:
        self.trained.append(trial.trial_id)

    def pause_trial(self, trial: Trial, should_checkpoint: bool = True) -> None:
        self.paused.append((trial.trial_id, should_checkpoint))
        trial.set_status(Trial.PAUSED)


def _held_pair() -> tuple[Any, _TuneController]:
    from ray.tune.schedulers import TrialScheduler

    sched, _ = _population(SyncSafePBT, [Trial.RUNNING, Trial.RUNNING], [0, 0])
    ctl = _TuneController(_.trials)
    sched._may_hold = lambda tc: True  # stub trials name no trainable class
    first, second = ctl.trials
    # the first member reaches the barrier (iteration 2) while the second is behind: it waits
    # in its actor (NOOP: no pause, no save), not paused as Ray's PBT does
    decision = sched.on_trial_result(ctl, first, {"m": 1.0, "training_iteration": 2})
    assert decision == TrialScheduler.NOOP and first.status == Trial.RUNNING
    assert set(sched._held) == {"t0"} and not ctl.paused and not ctl.trained
    return sched, ctl


def test_a_held_member_resumes_when_the_member_it_waits_for_ends() -> None:
    sched, ctl = _held_pair()
    first, second = ctl.trials
    second.set_status(Trial.TERMINATED)  # ended without reaching the barrier
    sched.on_trial_complete(ctl, second, {})
    assert ctl.trained == ["t0"] and not sched._held  # resumed in its actor
    assert sched._next_perturbation_sync == 4 and sched.barrier_releases == 1


def test_held_members_are_paused_when_a_member_needs_their_resources() -> None:
    sched, ctl = _held_pair()
    ctl.trials[1].set_status(Trial.PENDING)  # e.g. restarted after a failure
    sched.choose_trial_to_run(ctl)
    assert ctl.paused == [("t0", True)] and not sched._held  # Ray's pause, with a checkpoint


def test_held_members_wait_for_a_booting_actor_not_for_a_requested_one() -> None:
    """Tune requests actors for pending trials whatever is free: a requested actor may wait for
    the CPUs a held member keeps (the quickstart's 4 members on 2 CPUs sat 60 s at a barrier);
    only an actor created on acquired resources (still booting) is waited for."""
    from types import SimpleNamespace

    sched, ctl = _held_pair()
    peer = ctl.trials[1]
    peer.set_status(Trial.PENDING)  # e.g. restarted after a crash: Tune requested its actor
    started = {"value": True}
    ctl._trial_to_actor = {peer: "tracked"}
    ctl._actor_manager = SimpleNamespace(is_actor_started=lambda tracked: started["value"])
    sched.choose_trial_to_run(ctl)
    assert not ctl.paused and set(sched._held) == {"t0"}  # booting on its resources: wait
    started["value"] = False  # only requested: may need the held member's CPU
    sched.choose_trial_to_run(ctl)
    assert ctl.paused == [("t0", True)] and not sched._held


def test_a_population_that_does_not_fit_is_paused_as_ray_does() -> None:
    sched, _ = _population(SyncSafePBT, [Trial.RUNNING, Trial.PENDING], [0, 0])
    ctl = _TuneController(_.trials)
    ctl.search_alg = None
    assert not sched._may_hold(ctl)  # a pending member needs a held member's resources


def test_a_retried_trial_keeps_its_pbt_state() -> None:
    """Tune re-adds a trial it retries (``on_trial_add``); Ray's PBT would restart its state at
    time 0, so its next result perturbed the whole population off the interval's grid."""
    for cls, kept in [(PopulationBasedTraining, False), (SyncSafePBT, True), (SyncSafePB2, True)]:
        sched, ctl = _population(cls, [Trial.RUNNING, Trial.RUNNING], [3, 4])
        state = sched._trial_state[ctl.trials[0]]
        state.last_perturbation_time = 2
        sched.on_trial_add(ctl, ctl.trials[0])  # what Tune's _try_recover does
        after = sched._trial_state[ctl.trials[0]]
        assert (after.last_perturbation_time, after.last_train_time) == ((2, 3) if kept else (0, 0))


def test_members_all_waiting_below_the_barrier_are_perturbed_where_they_are() -> None:
    """Both members ready (an interval since their last perturbation, at 3) but below a barrier
    set at 6: each would wait in its actor for the other forever (seen after a crash when the
    retried trial's state was reset). The last to arrive perturbs the population now."""
    from ray.tune.schedulers import TrialScheduler

    sched, _ = _population(SyncSafePBT, [Trial.RUNNING, Trial.RUNNING], [4, 4])
    ctl = _TuneController(_.trials)
    sched._may_hold = lambda tc: True  # stub trials name no trainable class
    perturbed: list[str] = []
    sched._checkpoint_or_exploit = lambda t, *a: perturbed.append(t.trial_id)
    for trial in ctl.trials:
        sched._trial_state[trial].last_perturbation_time = 3
    sched._next_perturbation_sync = 6
    first, second = ctl.trials
    assert sched.on_trial_result(ctl, first, {"m": 1.0, "training_iteration": 5}) == "NOOP"
    decision = sched.on_trial_result(ctl, second, {"m": 0.5, "training_iteration": 5})
    assert decision == TrialScheduler.CONTINUE and sorted(perturbed) == ["t0", "t1"]
    assert ctl.trained == ["t0"] and not sched._held and not ctl.paused
    assert sched._next_perturbation_sync == 7 and sched.barrier_releases == 1
    assert all(sched._trial_state[t].last_perturbation_time == 5 for t in ctl.trials)


from test_checkpoint_retention import PBT_CONFIG  # noqa: E402

#: the same population as the checkpoint-retention test's, 2 members: it fits 2 CPUs
PBT_PAIR: dict[str, Any] = {
    **PBT_CONFIG,
    "name": "pbtpair",
    "budget": {"periods": 8, "trials": 2},
    "tune": {"verbose": 0, "num_cpus": 2},
}


def _run_pair(tmp_path, config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any], Any]:
    """Run the config; every result row of its trials, its MLflow trial runs, the outcome."""
    import json
    from pathlib import Path

    import ray
    from mlflow import MlflowClient

    from raytune_periodic.config import validate_config
    from raytune_periodic.tuning.runner import run_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray.shutdown()  # workers must start with this test's environment
    try:
        outcome = run_experiment(
            validate_config(config), storage_path=str(tmp_path / "ray"), mlflow_uri=uri
        )
    finally:
        ray.shutdown()
    rows = []
    for result in Path(outcome.tuner_paths["PBT-s0"]).glob("*/result.json"):
        rows += [json.loads(line) for line in result.read_text().splitlines()]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(config["name"])
    runs = client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'")
    for run in runs:  # every period of every trial exactly once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")]
        assert steps == list(range(8)), steps
    return rows, runs, outcome


@pytest.mark.integration
def test_a_population_that_fits_is_exploited_inside_its_running_actors(tmp_path) -> None:
    """2 members on 2 CPUs: every exploit is ``rp_exploit`` in the clone's running actor (no
    Tune pause/restore), the clone continues from the donor's barrier period, and MLflow still
    gets every period of every trial once."""
    import json
    from pathlib import Path

    rows, runs, outcome = _run_pair(tmp_path, PBT_PAIR)
    assert outcome.ok and len(runs) == 2
    exploits = [r for r in rows if r.get("rp_donor_trial")]
    assert len(exploits) >= 2, "fewer exploits than barriers"  # 3 barriers, 1 clone each
    assert all(r["rp_exploit_in_actor"] == 1 for r in exploits), exploits
    for r in exploits:
        first = json.loads(r["rp_records"])[0]["period"]
        assert first == r["rp_donor_period"] + 1 and first % 2 == 0, r
    assert {r["rp_periods"] for r in rows if r.get("done")} == {8}
    assert len({r["pid"] for r in rows}) == 2  # one worker per member, never restarted
    # Ray's records of the exploit: its policy log
    assert list(Path(outcome.tuner_paths["PBT-s0"]).glob("pbt_policy_*.txt"))
    for run in runs:
        assert run.data.metrics.get("n_exploits", 0) == sum(
            1 for r in exploits if r["trial_id"] == run.data.tags["rp.trial_id"]
        )


@pytest.mark.integration
def test_a_held_member_waits_for_its_peer_restarted_after_a_crash(tmp_path, caplog) -> None:
    """The first member to start a step at period >= 3 has its worker killed; the other waits
    at the barrier while Tune restarts the crashed one, the barrier is not skipped, and the
    search ends with every period once."""
    from raytune_periodic.tuning.trainable import FAULT_ENV

    marker = tmp_path / "fault-fired"
    config = {
        **PBT_PAIR,
        "name": "pbtcrash",
        "tune": {**PBT_PAIR["tune"], "max_failures": 1, "checkpoint_every": 1},
    }
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, f"3:{marker}")
    try:
        rows, runs, outcome = _run_pair(tmp_path, config)
    finally:
        mp.undo()
    assert marker.exists(), "the injected fault never fired"
    assert outcome.ok and len(runs) == 2
    assert {r["rp_periods"] for r in rows if r.get("done")} == {8}
    pids: dict[str, set[int]] = {}
    for r in rows:
        pids.setdefault(r["trial_id"], set()).add(r["pid"])
    assert any(len(p) >= 2 for p in pids.values()), pids  # the crashed one moved
    # Tune reports the retried failure to the scheduler: not an end that releases the barrier
    assert "wait for trials that ended" not in caplog.text
    assert any(r.get("rp_donor_trial") for r in rows), "no exploit happened"
