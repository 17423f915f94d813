"""The ``ppo`` controller (RLlib PPO, new API stack): MDP, learning, restore, agent checkpoints."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord, PeriodState
from raytune_periodic.rl.mdp import MDP, OBS_HIGH, REWARDS, make_reward, parse_groups
from raytune_periodic.training import build_engine

pytest.importorskip("ray.rllib")

from raytune_periodic.rl.controller import PPOController  # noqa: E402

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 200, "label_noise": 0.2},
    "model": {"name": "mlp", "hidden": [32]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"period_length": 5, "periods": 12, "batch_size": 32, "seed": 0},
}
PPO_SMALL = {"train_batch_size": 4, "minibatch_size": 4, "num_epochs": 2}


def record(period: int, values: dict[str, float], val_f1: float, **kw: Any) -> PeriodRecord:
    base = dict(train_loss=0.3, train_f1=0.95, val_loss=0.5, seconds=0.0)
    base.update(kw)
    return PeriodRecord(period, period / 8, period, values, val_f1=val_f1, **base)


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# ------------------------------------------------------------------------------------------ MDP
def test_package_import_does_not_import_ray() -> None:
    code = (
        "import sys, raytune_periodic.rl, raytune_periodic.rl.mdp, raytune_periodic.rl.controller;"
        "assert not any(m == 'ray' or m.startswith(('ray.', 'gymnasium')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_observation_is_bounded_and_actions_land_inside_the_bounds() -> None:
    mdp = MDP.from_ranges({"dropout": (0.0, 0.7), "noise": (0.1, 0.5)})
    assert (mdp.obs_dim, mdp.action_dim) == (4 + 2 + 1, 2)
    first = mdp.observation(PeriodState(0, None, 0.0))
    assert first.dtype == np.float32 and not first.any()
    rec = record(3, {"dropout": 0.35, "noise": 0.5}, 0.8, train_loss=1e9, val_loss=math.nan)
    obs = mdp.observation(PeriodState(4, rec, 0.25))
    assert obs.min() >= 0 and obs.max() <= OBS_HIGH
    assert obs[1] == pytest.approx(0.95) and obs[3] == pytest.approx(0.8)
    assert obs[4:6] == pytest.approx([0.5, 1.0]) and obs[-1] == pytest.approx(0.25)
    for raw in ([-50.0, 50.0], [0.0, 0.0], [3.0, -0.2]):
        vals = mdp.values(np.array(raw))
        assert 0.0 <= vals["dropout"] <= 0.7 and 0.1 <= vals["noise"] <= 0.5
    assert mdp.values(np.zeros(2)) == pytest.approx({"dropout": 0.35, "noise": 0.3})
    assert mdp.values(mdp.action({"dropout": 0.2, "noise": 0.4})) == pytest.approx(
        {"dropout": 0.2, "noise": 0.4}, abs=1e-6
    )


def test_rewards() -> None:
    names = ["gap", "gap_train_mode", "val_f1", "val_f1_delta", "val_f1_minus_gap"]
    assert REWARDS.names() == names
    r1 = record(0, {}, 0.7, train_f1=0.9, train_eval_f1=0.8)
    r2 = record(1, {}, 0.75, train_f1=0.85)
    # the paper's gap uses train F1 measured in eval mode; the train-mode one is kept apart
    assert make_reward("gap")(r1) == pytest.approx(-0.1)
    assert make_reward("gap").needs_train_eval and not make_reward("val_f1").needs_train_eval
    assert make_reward("gap_train_mode")(r1) == pytest.approx(-0.2)
    assert make_reward("val_f1")(r1) == pytest.approx(0.7)
    assert make_reward("val_f1_minus_gap", gap_lambda=2.0)(r1) == pytest.approx(0.7 - 0.4)
    delta = make_reward("val_f1_delta")
    assert delta(r1) == 0.0 and delta(r2) == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------ (a)
def test_rllib_wiring_learns_the_optimum_of_a_synthetic_task() -> None:
    """Reward peaks at dropout 0.1 (no child network); the policy starts near 0.35.

    Seeded, 1024 periods = 32 PPO updates; tolerance: the mean of the last 128 actions is within
    0.05 of the optimum (and the first 64 are not).
    """
    target, periods = 0.1, 1024
    ctrl = PPOController(groups={"dropout": [0.0, 0.7]}, reward="val_f1", seed=0)
    ctrl.bind({"dropout": (0.0, 1.0)})
    last, taken = None, []
    for t in range(periods):
        v = ctrl.decide(PeriodState(t, last, t / periods))["dropout"]
        taken.append(v)
        ended = (t + 1) % 8 == 0
        last = record(
            t, {"dropout": v}, 0.9 - 2 * (v - target) ** 2, full_val_f1=0.9 if ended else None
        )
        ctrl.observe(last)
    assert ctrl.agent is not None and ctrl.agent.updates == periods // 32 - 1
    assert abs(np.mean(taken[:64]) - target) > 0.15
    assert abs(np.mean(taken[-128:]) - target) < 0.05
    ctrl.close()


# ------------------------------------------------------------------------------------------ (b)
@pytest.fixture(scope="module")
def trained() -> tuple[list[PeriodRecord], dict[str, Any], PPOController]:
    """A full 12-period run, plus the engine state after period 6."""
    ctrl = PPOController(groups={"dropout": [0.0, 0.7]}, seed=1, **PPO_SMALL)
    engine = build_engine(SPEC, controller=ctrl)
    records = engine.run(6)
    mid = roundtrip(engine.state_dict())
    records += engine.run()
    return records, mid, ctrl


def test_controller_drives_a_real_engine(trained: Any) -> None:
    records, _, ctrl = trained
    assert len(records) == 12
    assert all(0.0 <= r.values["dropout"] <= 0.7 for r in records)
    assert len({r.values["dropout"] for r in records}) > 6  # it explores
    assert all("ppo/reward" in r.extra for r in records)
    assert ctrl.agent is not None and ctrl.agent.updates >= 2
    assert any("ppo/policy_loss" in r.extra for r in records)
    r = records[3]
    assert r.extra["ppo/reward"] == pytest.approx(r.val_f1 - 0.5 * r.gap)


def test_state_dict_restores_the_agent_exactly(trained: Any) -> None:
    records, mid, _ = trained
    ctrl = PPOController(groups={"dropout": [0.0, 0.7]}, seed=1, **PPO_SMALL)
    engine = build_engine(SPEC, controller=ctrl)
    fresh_obs = np.full(ctrl.mdp.obs_dim, 0.4, dtype=np.float32) if ctrl.mdp else None
    before = ctrl.act(fresh_obs)
    engine.load_state_dict(mid)
    after = ctrl.act(fresh_obs)
    assert after != before  # the restored agent is not the fresh one
    rest = engine.run()
    # same values, metrics and updates as the uninterrupted run (PBT-safe resume)
    assert [r.values for r in rest] == [r.values for r in records[6:]]
    assert [r.extra for r in rest] == [r.extra for r in records[6:]]
    again = PPOController(groups={"dropout": [0.0, 0.7]}, seed=1, **PPO_SMALL)
    build_engine(SPEC, controller=again).load_state_dict(roundtrip(engine.state_dict()))
    assert again.act(fresh_obs) == ctrl.act(fresh_obs)
    ctrl.close()
    again.close()


# ------------------------------------------------------------------------------------------ (c)
def test_inference_only_agent_checkpoint(trained: Any, tmp_path: Path) -> None:
    _, _, source = trained
    path = source.export_agent(tmp_path / "agent")
    ctrl = PPOController(groups={"dropout": [0.0, 0.7]}, agent_checkpoint=str(path))
    engine = build_engine({**SPEC, "train": {**SPEC["train"], "seed": 5}}, controller=ctrl)
    assert ctrl.agent is not None and not ctrl.agent.learning
    obs = np.full(ctrl.mdp.obs_dim if ctrl.mdp else 0, 0.3, dtype=np.float32)
    assert ctrl.act(obs) == source.act(obs)
    weights = {k: v.clone() for k, v in ctrl.agent.module.state_dict().items()}
    records = engine.run(5)
    for k, v in ctrl.agent.module.state_dict().items():
        assert torch.equal(v, weights[k])  # no learning
    # deterministic_eval: the values are the policy mean for each period's observation
    assert records[0].values == source.act(ctrl.mdp.observation(PeriodState(0, None, 0.0)))
    ctrl.close()


def test_mismatched_agent_checkpoint_is_a_one_line_error(trained: Any, tmp_path: Path) -> None:
    _, _, source = trained
    path = source.export_agent(tmp_path / "agent")
    spec = {
        **SPEC,
        "regularizers": [
            {"kind": "dropout", "where": "head"},
            {"kind": "gaussian_noise", "where": "before_relu", "name": "noise"},
        ],
    }
    ctrl = PPOController(
        groups={"dropout": [0, 0.7], "noise": [0, 0.3]}, agent_checkpoint=str(path)
    )
    with pytest.raises(ConfigError, match="agent_checkpoint") as err:
        build_engine(spec, controller=ctrl)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not an agent checkpoint"):
        PPOController(groups={"dropout": [0, 0.7]}, agent_checkpoint=str(tmp_path))


# ------------------------------------------------------------------------------------------ (d)
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"groups": {"dropout": [0, 1.5]}}, r"groups\.dropout: range \[0, 1.5\] outside valid"),
        ({"groups": {"missing": [0, 0.5]}}, "no regularizer group 'missing'"),
        ({"groups": {"dropout": [0.5, 0.5]}}, "low must be < high"),
        ({"groups": {"dropout": [0, 0.5]}, "reward": "acc"}, "unknown reward 'acc'; valid: gap"),
        ({"groups": {"dropout": [0, 0.5]}, "gap_lambda": -1}, "gap_lambda: must be"),
        ({"groups": {"dropout": [0, 0.5]}, "minibatch_size": 64}, "minibatch_size: must be <="),
        ({"groups": {"dropout": [0, 0.5]}, "hidden": []}, "hidden: expected"),
    ],
)
def test_bad_input_is_a_one_line_config_error(options: dict[str, Any], match: str) -> None:
    spec = {**SPEC, "controller": {"type": "constant"}}
    with pytest.raises(ConfigError, match=match) as err:
        build_engine(spec, controller=PPOController(**options))
    assert "\n" not in str(err.value)


def test_groups_patterns_expand_to_per_layer_groups() -> None:
    spec = {
        **SPEC,
        "model": {"name": "mlp", "hidden": [16, 16]},
        "regularizers": [{"kind": "dropout", "where": "before_linear", "per_layer": True}],
    }
    ctrl = PPOController(groups={"dropout_*": [0, 0.5]}, **PPO_SMALL)
    engine = build_engine(spec, controller=ctrl)
    assert ctrl.controlled() == ["dropout_0", "dropout_1", "dropout_2"]
    rec = engine.step_period()
    assert set(rec.values) == {"dropout_0", "dropout_1", "dropout_2"}
    assert len({round(v, 6) for v in rec.values.values()}) == 3  # one action per layer
    ctrl.close()
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_groups([0, 1])


def test_ppo_needs_validation_batches() -> None:
    spec = {**SPEC, "train": {**SPEC["train"], "val_batches": 0}}
    ctrl = PPOController(groups={"dropout": [0, 0.5]}, **PPO_SMALL)
    with pytest.raises(ConfigError, match="val_batches >= 1"):
        build_engine(spec, controller=ctrl).step_period()
    ctrl.close()


# ------------------------------------------------------------------------------------------ (e)
def test_many_children_bad_input_fails_before_ray() -> None:
    from raytune_periodic.rl.children import many_children_config

    with pytest.raises(ConfigError, match="children.layout"):
        many_children_config(SPEC, {"dropout": [0, 0.5]}, layout="mesh")
    with pytest.raises(ConfigError, match=r"children\.groups\.dropout: range"):
        many_children_config(SPEC, {"dropout": [0, 2.0]})
    with pytest.raises(ConfigError, match="children.bogus: unknown key"):
        many_children_config(SPEC, {"dropout": [0, 0.5]}, bogus=1)


@pytest.mark.slow
def test_one_agent_two_children(tmp_path: Path) -> None:
    from raytune_periodic.rl.children import (
        export_algo_agent,
        local_ray,
        many_children_config,
    )

    config = many_children_config(
        SPEC, {"dropout": [0, 0.7]}, children=2, train_batch_size=16, minibatch_size=8, num_epochs=2
    )
    with local_ray(num_cpus=1):
        algo = config.build_algo()
        try:
            results = [algo.train() for _ in range(2)]
            envs = algo.env_runner.env.unwrapped.envs
            seeds = [env.unwrapped.engine.options.seed for env in envs]
            periods = [  # periods trained by each child slot (a child is replaced after 12)
                (env.unwrapped.generation - 1) * 12 + env.unwrapped.engine.period for env in envs
            ]
            path = export_algo_agent(algo, tmp_path / "agent")
        finally:
            algo.stop()
    assert len(set(seeds)) == 2  # two different children
    assert periods == [16, 16]
    assert results[-1]["env_runners"]["num_env_steps_sampled_lifetime"] == 32
    assert "children/val_f1" in results[-1]["env_runners"]
    # the population-trained agent loads into a per-trial controller
    ctrl = PPOController(groups={"dropout": [0, 0.7]}, agent_checkpoint=str(path))
    engine = build_engine(SPEC, controller=ctrl)
    assert all(0 <= r.values["dropout"] <= 0.7 for r in engine.run(2))
    ctrl.close()
