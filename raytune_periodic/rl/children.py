"""One agent, many children: a single PPO agent learning from several child training runs.

Each child is a :class:`ChildTrainingEnv` — a gymnasium env that owns a ``PeriodEngine`` built
from a run spec: ``step(action)`` sets the regularizer values, trains one period and returns the
next observation and the period's reward (same MDP as :class:`PPOController`, so an agent trained
here loads into a ``ppo`` controller's ``agent_checkpoint``). RLlib's own PPO ``Algorithm`` drives
the children, so the agent sees the whole population's experience in every update.

Resource layout (``layout``):

- ``"local"`` — ``num_env_runners=0``, ``num_envs_per_env_runner=children``: every child and the
  learner in the Algorithm's own process, stepped as a synchronous vector env (CPU, tests).
- ``"runners"`` — ``num_env_runners=children``, one env per runner, ``gpus_per_child`` GPUs and one
  CPU per runner: one child per GPU on a cluster; the learner (a small MLP) stays on the driver's
  CPU. Run the Algorithm itself as the Tune trial (``tune.Tuner(config.algo_class,
  param_space=config)``): Tune then reserves one placement group with the driver's bundle plus one
  bundle per child, so nothing is nested.

Each child's seed is RLlib's per-env seed (``seed + worker_index + vector_index``) — distinct for
both layouts; a child whose run budget ends (or diverges) is replaced by a fresh one seeded
``seed + k * seed_stride`` for its k-th successor.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from raytune_periodic._imports import require
from raytune_periodic.controllers._base import Controller
from raytune_periodic.records import STATUS_OK, PeriodState
from raytune_periodic.rl.agent import PPOOptions, export_module, ppo_config, spaces
from raytune_periodic.rl.mdp import MDP, check_record, make_reward, parse_groups, resolve_groups
from raytune_periodic.training.spec import build_engine, parse_run_spec
from raytune_periodic.validation import choice, integer, known_keys, number

LAYOUTS = ("local", "runners")


class ActionBridge(Controller):
    """The child's controller inside the env: returns whatever values the env set last."""

    name = "ppo_env_bridge"

    def __init__(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        super().__init__()
        self.ranges = dict(ranges)
        self.resolved: dict[str, tuple[float, float]] = {}
        self.next_values: dict[str, float] = {}

    def controlled(self) -> list[str]:
        return list(self.resolved or self.ranges)

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "children") -> None:
        self.bounds = dict(bounds)
        self.resolved = resolve_groups(self.ranges, self.bounds, f"{field}.groups")

    def decide(self, state: PeriodState) -> dict[str, float]:
        return dict(self.next_values)


class ChildTrainingEnv(gym.Env):  # type: ignore[misc]
    """A child model's period loop as a gymnasium env (episode = one epoch of the child).

    ``config``: ``run_spec`` (a run spec mapping), ``groups`` (explicit ``{group: [low, high]}``),
    ``reward``, ``gap_lambda``, ``seed_stride``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.run_spec = dict(config["run_spec"])
        ranges = {k: (float(v[0]), float(v[1])) for k, v in config["groups"].items()}
        self.mdp = MDP.from_ranges(ranges)
        self.reward_name = str(config.get("reward", "val_f1_minus_gap"))
        self.gap_lambda = float(config.get("gap_lambda", 0.5))
        self.seed_stride = int(config.get("seed_stride", 1000))
        self.observation_space, self.action_space = spaces(self.mdp.obs_dim, self.mdp.action_dim)
        self.engine: Any = None
        self.base_seed: int | None = None
        self.generation = 0

    def _new_child(self) -> None:
        spec = copy.deepcopy(self.run_spec)
        train = dict(spec.get("train") or {})
        base = self.base_seed if self.base_seed is not None else int(train.get("seed", 0))
        train["seed"] = base + self.generation * self.seed_stride
        spec["train"] = train
        self.bridge = ActionBridge(self.mdp.ranges())
        self.reward = make_reward(self.reward_name, self.gap_lambda)
        self.engine = build_engine(spec, controller=self.bridge)
        self.generation += 1

    def _obs(self) -> np.ndarray:
        eng = self.engine
        state = PeriodState(eng.period, eng.last, eng.period / eng.options.periods)
        return self.mdp.observation(state)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None and self.engine is None:
            self.base_seed = int(seed)
        if self.engine is None or self.engine.done:
            self._new_child()
        return self._obs(), {"child_seed": float(self.engine.options.seed)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.bridge.next_values = self.mdp.values(action)
        record = self.engine.step_period()
        terminated = record.status != STATUS_OK
        if terminated:
            reward = -1.0  # a diverged child ends its episode with a penalty
        else:
            check_record(record, "children")
            reward = float(self.reward(record))
        truncated = not terminated and (record.epoch_ended or self.engine.done)
        info = {**record.metrics(), "child_seed": float(self.engine.options.seed)}
        return self._obs(), reward, terminated, truncated, info


def _child_metrics_callback() -> type:
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class ChildMetrics(RLlibCallback):  # type: ignore[misc]
        """Logs each child's metrics at its epoch ends (episode ends) as ``children/<name>``."""

        def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **_: Any) -> None:
            if metrics_logger is None or len(episode) == 0:
                return
            info = episode.get_infos(-1)
            for key in ("train_f1", "val_f1", "gap", "full_val_f1", "test_f1"):
                if key in info:
                    metrics_logger.log_value(f"children/{key}", float(info[key]), reduce="mean")

    return ChildMetrics


def many_children_config(
    run_spec: Mapping[str, Any],
    groups: Mapping[str, Sequence[float]],
    children: int = 2,
    layout: str = "local",
    gpus_per_child: float = 0.0,
    reward: str = "val_f1_minus_gap",
    gap_lambda: float = 0.5,
    seed_stride: int = 1000,
    sample_timeout_s: float = 3600.0,
    **ppo: Any,
) -> Any:
    """A ``PPOConfig`` whose env runners each train their own child built from ``run_spec``.

    ``ppo`` takes :class:`PPOOptions` fields (``train_batch_size`` counts periods over all
    children). The spec, groups and reward are validated in this process first (one child is
    built and discarded), so bad input fails here with a one-line ConfigError, before Ray starts.
    """
    require("ray.rllib")
    field = "children"
    children = integer(children, f"{field}.children", 1)
    choice(layout, f"{field}.layout", LAYOUTS)
    known_keys(ppo, PPOOptions.__dataclass_fields__, field)
    options = PPOOptions(**ppo).validate(field)  # validate() turns a hidden list into a tuple
    make_reward(reward, gap_lambda, field)
    spec = parse_run_spec(run_spec)  # shape errors now
    probe = ActionBridge(parse_groups(groups, f"{field}.groups"))
    build_engine(spec, controller=probe)  # resolves patterns, checks ranges against the model
    mdp = MDP.from_ranges(probe.resolved)
    env_config = {
        "run_spec": dict(run_spec),
        "groups": {k: list(v) for k, v in probe.resolved.items()},
        "reward": reward,
        "gap_lambda": number(gap_lambda, f"{field}.gap_lambda"),
        "seed_stride": integer(seed_stride, f"{field}.seed_stride"),
    }
    config = ppo_config(options, mdp.obs_dim, mdp.action_dim)
    config.environment(ChildTrainingEnv, env_config=env_config)
    if layout == "local":
        config.env_runners(num_env_runners=0, num_envs_per_env_runner=children)
    else:
        config.env_runners(
            num_env_runners=children,
            num_envs_per_env_runner=1,
            num_cpus_per_env_runner=1,
            num_gpus_per_env_runner=gpus_per_child,
        )
    config.env_runners(sample_timeout_s=sample_timeout_s)
    config.callbacks(_child_metrics_callback())
    return config


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray (e.g. inside a Tune trial) or start a private local one for the block."""
    ray = require("ray")
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_many_children(
    config: Any, iterations: int, export_to: str | Path | None = None
) -> list[dict[str, Any]]:
    """Build the Algorithm, run ``iterations`` training iterations, optionally export the agent."""
    results = []
    with local_ray(num_cpus=max(1, config.num_env_runners + 1)):
        algo = config.build_algo()
        try:
            for _ in range(iterations):
                results.append(algo.train())
            if export_to is not None:
                export_algo_agent(algo, export_to)
        finally:
            algo.stop()
    return results


def export_algo_agent(algo: Any, path: str | Path) -> Path:
    """Write the Algorithm's module as an agent checkpoint loadable by ``PPOController``."""
    env_config = algo.config.env_config
    ranges = {k: (float(v[0]), float(v[1])) for k, v in env_config["groups"].items()}
    meta = {
        **MDP.from_ranges(ranges).meta(),
        "reward": env_config["reward"],
        "gap_lambda": env_config["gap_lambda"],
    }
    return export_module(algo.get_module(), path, meta)
