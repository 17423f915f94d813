"""The shared PPO agent (``ppo_shared``): learning from many children, the faithful gap reward,
warm start and bad layouts — without Tune (through Tune: tests/tuning/test_ppo_shared_tune.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord
from raytune_periodic.training import build_engine

pytest.importorskip("ray.rllib")

from raytune_periodic.rl.agent import PPOOptions  # noqa: E402
from raytune_periodic.rl.controller import PPOController  # noqa: E402
from raytune_periodic.rl.shared import ChildRunner, SharedAgent  # noqa: E402

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 200, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [32]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"period_length": 5, "periods": 12, "batch_size": 32, "seed": 0},
}
GROUPS = {"dropout": (0.0, 0.7)}


def synthetic(period: int, value: float, target: float) -> PeriodRecord:
    """A record whose val F1 peaks at ``target`` (no network); an epoch every 8 periods."""
    ended = (period + 1) % 8 == 0
    return PeriodRecord(
        period, period / 8, period, {"dropout": value}, 0.3, 0.95, 0.5,
        0.9 - 2 * (value - target) ** 2, 0.0, full_val_f1=0.9 if ended else None,
    )  # fmt: skip


def run_synthetic(agent: SharedAgent, children: int, rounds: int, target: float) -> list[float]:
    taken: list[float] = []
    last: list[PeriodRecord | None] = [None] * children
    for t in range(rounds):
        for k in range(children):
            v = agent.act(k, t, last[k])["dropout"]
            taken.append(v)
            last[k] = synthetic(t, v, target)
            agent.observe(k, last[k])
        agent.maybe_update()
    return taken


def test_shared_agent_learns_the_optimum_of_a_synthetic_task_from_four_children() -> None:
    """The per-trial synthetic test (tests/rl/test_ppo.py) through the shared agent: 4 children
    × 256 periods = the same 1024 transitions, now collected in rounds over the children."""
    target, children = 0.1, 4
    agent = SharedAgent(GROUPS, PPOOptions(seed=0), children, periods=256, reward="val_f1")
    taken = run_synthetic(agent, children, 256, target)
    assert agent.agent.updates == 1024 // 32
    assert abs(np.mean(taken[:64]) - target) > 0.15
    assert abs(np.mean(taken[-128:]) - target) < 0.05
    agent.close()


def test_shared_agent_state_restores_exactly() -> None:
    opts = PPOOptions(seed=3, train_batch_size=8, minibatch_size=4, num_epochs=2)
    a = SharedAgent(GROUPS, opts, 2, periods=40, reward="val_f1")
    run_synthetic(a, 2, 10, 0.5)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = SharedAgent(GROUPS, opts, 2, periods=40, reward="val_f1")
    b.load_state_dict(torch.load(buf, weights_only=False))
    last = [synthetic(9, 0.3, 0.5)] * 2
    for t in range(10, 14):  # same actions, same updates from the same round on
        va = [a.act(k, t, last[k]) for k in range(2)]
        vb = [b.act(k, t, last[k]) for k in range(2)]
        assert va == vb
        for k in range(2):
            a.observe(k, synthetic(t, va[k]["dropout"], 0.5))
            b.observe(k, synthetic(t, vb[k]["dropout"], 0.5))
        assert a.maybe_update() == b.maybe_update()
    a.close()
    b.close()


def test_faithful_gap_is_not_gamed_by_regularizing_harder() -> None:
    """Train F1 in eval mode (the ``gap`` reward) does not move with the dropout rate in force;
    the train-mode F1 (``gap_train_mode``) falls with it, so its gap closes by over-regularizing."""
    spec = {**SPEC, "train": {**SPEC["train"], "train_eval_samples": -1}}
    engine = build_engine(spec, controller=PPOController(groups={"dropout": [0, 0.9]}))
    engine.run(6)  # some training first
    state = engine.state_dict()
    out = {}
    for rate in (0.0, 0.9):
        engine.load_state_dict(state)
        engine.regularizers.set_values({"dropout": rate})
        x, y = engine.train_eval_xy
        engine.model.train()
        with torch.no_grad():
            train_mode = (engine.model(x).argmax(1) == y).float().mean().item()
        out[rate] = (engine._train_eval()[1], train_mode)
    assert out[0.0][0] == out[0.9][0]  # eval mode: the rate in force does not act
    assert out[0.9][1] < out[0.0][1] - 0.05  # train mode: a high rate lowers train F1
    assert engine.train_eval_xy[0].shape[0] == engine.val_batch_count * 32  # as the val batches
    engine.controller.close()


def test_gap_reward_makes_the_engine_measure_train_f1_in_eval_mode() -> None:
    ctrl = PPOController(groups={"dropout": [0, 0.5]}, reward="gap", train_batch_size=4,
                         minibatch_size=4, num_epochs=1)  # fmt: skip
    rec = build_engine(SPEC, controller=ctrl).step_period()
    assert rec.train_eval_f1 is not None and rec.extra["ppo/reward"] == pytest.approx(-rec.eval_gap)
    assert "eval_gap" in rec.metrics() and "train_eval_f1" in rec.metrics()
    ctrl.close()
    plain = build_engine(SPEC).step_period()  # nothing needs it: not measured, no cost
    assert plain.train_eval_f1 is None and "eval_gap" not in plain.metrics()


def test_val_samples_per_class_floor() -> None:
    """Enough validation samples per class behind the reward: 10 classes × 10 at batch 32 →
    4 mini-batches although val_batches is 2; 0 turns the floor off."""
    engine = build_engine(SPEC)
    assert engine.val_batch_count == 4
    off = build_engine({**SPEC, "train": {**SPEC["train"], "val_samples_per_class": 0}})
    assert off.val_batch_count == 2


def test_warm_start_and_layout_mismatch(tmp_path: Path) -> None:
    opts = PPOOptions(seed=0, train_batch_size=8, minibatch_size=4, num_epochs=2)
    trained = SharedAgent(GROUPS, opts, 2, periods=40, reward="val_f1")
    run_synthetic(trained, 2, 20, 0.6)
    path = trained.export(tmp_path / "agent")
    obs = np.zeros(trained.mdp.obs_dim, dtype=np.float32)
    want = trained.agent.act(obs, None)[0]
    warm = SharedAgent(GROUPS, opts, 3, periods=40, reward="val_f1", warm_start=str(path))
    assert warm.learning and np.allclose(warm.agent.act(obs, None)[0], want)
    frozen = SharedAgent(GROUPS, opts, 2, periods=40, reward="val_f1", agent_checkpoint=str(path))
    assert not frozen.learning and frozen.maybe_update() is None
    with pytest.raises(ConfigError, match="warm_start: agent checkpoint controls groups"):
        SharedAgent({"noise": (0.0, 0.5)}, opts, 2, periods=40, warm_start=str(path))
    with pytest.raises(ConfigError, match="hidden sizes"):
        SharedAgent(GROUPS, PPOOptions(hidden=(8,)), 2, periods=40, warm_start=str(path))
    for a in (trained, warm, frozen):
        a.close()


def test_child_runner_round_trip() -> None:
    """A child's exact state goes through bytes (what a runner actor returns)."""
    a = ChildRunner(SPEC, {"dropout": [0, 0.7]}, train_eval=True)
    assert a.bounds() == {"dropout": (0.0, 1.0)}
    a.step({"dropout": 0.3})
    blob = a.state()
    r1 = a.step({"dropout": 0.5})
    b = ChildRunner(SPEC, {"dropout": [0, 0.7]}, train_eval=True)
    b.load(blob)
    assert b.step({"dropout": 0.5}) == {**r1, "seconds": b.engine.last.seconds}
    assert r1["train_eval_f1"] is not None


def test_children_in_one_process_draw_their_own_random_streams() -> None:
    """Children stepped in turn in one process (``local``) train exactly as each would alone
    (its own process, ``runners``): dropout masks come from the child's own torch RNG."""
    alone = ChildRunner(SPEC, {"dropout": [0, 0.7]}, train_eval=False)
    solo = [alone.step({"dropout": 0.5}) for _ in range(3)]
    a = ChildRunner(SPEC, {"dropout": [0, 0.7]}, train_eval=False)
    other = ChildRunner({**SPEC, "train": {**SPEC["train"], "seed": 9}}, {"dropout": [0, 0.7]},
                        train_eval=False)  # fmt: skip
    mixed = []
    for _ in range(3):
        other.step({"dropout": 0.5})
        mixed.append(a.step({"dropout": 0.5}))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in solo]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in mixed] == strip
