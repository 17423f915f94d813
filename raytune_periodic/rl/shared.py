"""One PPO agent, many children: the agent of the ``ppo_shared`` method.

``SharedAgent`` owns one RLlib PPO learner (:class:`~raytune_periodic.rl.agent.PPOAgent`, the same
``LearnerGroup`` + ``PPOTorchLearner`` as the per-trial ``ppo`` controller) and the transition
bookkeeping of N children. The children's period loops are stepped in lockstep *rounds* by the
caller (``tuning/shared_trainable.py``): for every child ``act`` at the period's start,
``observe`` at its end; after the round ``maybe_update`` runs one PPO update once
``train_batch_size`` transitions have been collected over all children. The MDP (observation,
action squashing, rewards, episode = one epoch, truncated) is the per-trial controller's
(:mod:`raytune_periodic.rl.mdp`), so an agent exported here loads into a ``ppo`` controller's
``agent_checkpoint`` and vice versa.

Rounds make the shared agent deterministic on the CPU whatever the layout: every child acts with
the policy of the same update, and transitions enter the batch in child order.

``ChildRunner`` is one child: a ``PeriodEngine`` whose controller is an ``ExternalValues`` bridge
(the values the agent chose). In the ``local`` layout the runners are plain objects in the trial's
process; in the ``runners`` layout each is a Ray actor in the trial's placement group (one GPU per
child on a cluster). Importing this module imports neither Ray nor RLlib.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_periodic.controllers._base import Controller
from raytune_periodic.controllers.rewards import Reward, make_reward
from raytune_periodic.records import STATUS_OK, PeriodRecord, PeriodState
from raytune_periodic.rl.agent import PPOAgent, PPOOptions, Segment
from raytune_periodic.rl.mdp import MDP, check_record, resolve_groups
from raytune_periodic.tracking.best_weights import BestWeights
from raytune_periodic.training.engine import load_state
from raytune_periodic.training.process import prepare_process


class ExternalValues(Controller):
    """A child's controller: returns the values set from outside (by the shared agent)."""

    name = "external_values"

    def __init__(self, groups: Mapping[str, tuple[float, float]], needs_train_eval: bool) -> None:
        super().__init__()
        self.groups = dict(groups)  #: ``{name_or_pattern: (low, high)}``, resolved in ``bind``
        self.resolved: dict[str, tuple[float, float]] = {}
        self.needs_train_eval = needs_train_eval
        self.next_values: dict[str, float] = {}

    def controlled(self) -> list[str]:
        return list(self.resolved or self.groups)

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        self.bounds = dict(bounds)
        self.resolved = resolve_groups(self.groups, self.bounds, f"{field}.groups")

    def decide(self, state: PeriodState) -> dict[str, float]:
        return dict(self.next_values)


class ChildRunner:
    """One child run: ``step(values)`` trains one period and returns its record as a dict."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        groups: Mapping[str, Any],
        train_eval: bool,
        data: Any = None,
        plugins: Mapping[str, Any] | None = None,
        threads: int | None = None,
        name: str = "child",
    ) -> None:
        from raytune_periodic.registry import install_plugins
        from raytune_periodic.training.spec import build_engine

        install_plugins(plugins or {})  # a Ray actor: the names the driver registered
        prepare_process(threads)
        ranges = {k: (float(v[0]), float(v[1])) for k, v in groups.items()}
        self.bridge = ExternalValues(ranges, train_eval)
        outer = _rng_state()
        self.engine = build_engine(dict(spec), data=data, controller=self.bridge)
        self.rng = _rng_state()  # the child's own torch RNG stream (dropout masks, noise)
        _set_rng_state(outer)
        self.best = BestWeights(name)  #: best-validation-epoch weights (MLflow models, #16)
        self.best.attach(self.engine)

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this child's torch RNG: children stepped in one process (``local``) draw
        exactly what they would in a process of their own (``runners``), and each child's
        checkpoint holds its own stream."""
        outer = _rng_state()
        _set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = _rng_state()
            _set_rng_state(outer)

    def bounds(self) -> dict[str, tuple[float, float]]:
        """The model's regularizer groups and their valid ranges."""
        return self.engine.regularizers.bounds()

    def step(self, values: Mapping[str, float]) -> dict[str, Any]:
        self.bridge.next_values = dict(values)
        with self.own_rng():
            return self.engine.step_period().to_dict()

    def state(self) -> bytes:
        buf = io.BytesIO()
        with self.own_rng():
            torch.save(self.engine.state_dict(), buf)
        return buf.getvalue()

    def load(self, blob: bytes) -> None:
        state = load_state(io.BytesIO(blob))
        with self.own_rng():
            self.engine.load_state_dict(state)

    def model_files(self) -> dict[str, bytes]:
        """The best/last weight files of ``tracking/best_weights.py`` (a child's checkpoint
        folder gets them like a ``PeriodTrainable``'s; bytes, so a remote runner can send them)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.best.save(tmp, self.engine)
            return {f.name: f.read_bytes() for f in Path(tmp).iterdir()}

    def load_model_files(self, files: Mapping[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for fname, blob in files.items():
                (Path(tmp) / Path(fname).name).write_bytes(blob)
            loaded = BestWeights.load(tmp, self.best.trial_id)
        if loaded is not None:
            self.best = loaded
            self.best.attach(self.engine)

    def progress(self) -> tuple[int, int, str]:
        """(period, periods, status)."""
        eng = self.engine
        return eng.period, eng.options.periods, eng.status


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0].cpu())
    if state[1] is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state[1]])


class _Child:
    """The agent's view of one child: its open episode chunk and the action awaiting reward."""

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.current: Segment | None = None
        self.finished: list[Segment] = []
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "reward": self.reward.state_dict(),
            "current": None if self.current is None else self.current.to_dict(),
            "finished": [s.to_dict() for s in self.finished],
            "pending": None if self.pending is None else dict(self.pending),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reward.load_state_dict(state["reward"])
        self.current = None if state["current"] is None else Segment(**state["current"])
        self.finished = [Segment(**s) for s in state["finished"]]
        self.pending = None if state["pending"] is None else dict(state["pending"])


class SharedAgent:
    """One PPO agent acting for ``children`` child runs and learning from all of them.

    ``ranges``: the resolved ``{group: (low, high)}``; ``periods``: each child's period budget
    (the observation's progress feature); ``warm_start``: an agent checkpoint folder whose policy
    and value weights start the learner; ``learn=False`` with ``agent_checkpoint`` acts with a
    loaded policy only (the mean when ``deterministic``).
    """

    def __init__(
        self,
        ranges: Mapping[str, tuple[float, float]],
        options: PPOOptions,
        children: int,
        periods: int,
        reward: str = "gap",
        gap_lambda: float = 0.5,
        agent_checkpoint: str | None = None,
        warm_start: str | None = None,
        deterministic: bool = True,
        field: str = "controller",
    ) -> None:
        self.mdp = MDP.from_ranges(ranges)
        self.options = options
        self.periods = int(periods)
        self.reward_name, self.gap_lambda = reward, gap_lambda
        self.children = [_Child(make_reward(reward, gap_lambda, field)) for _ in range(children)]
        self.needs_train_eval = bool(self.children[0].reward.needs_train_eval)
        meta = self.mdp.meta()
        if agent_checkpoint:
            self.agent = PPOAgent.load(agent_checkpoint, meta, f"{field}.agent_checkpoint")
        else:
            self.agent = PPOAgent(self.mdp.obs_dim, self.mdp.action_dim, options)
            if warm_start:
                self.agent.warm_start(warm_start, meta, "warm_start")
        self.explore = self.agent.learning or not deterministic
        self.noise_rng = np.random.default_rng([options.seed, 29])
        self.steps = 0  #: transitions collected since the last update

    @classmethod
    def from_controller_spec(
        cls, ctrl: Mapping[str, Any], bounds: Mapping[str, tuple[float, float]], **kw: Any
    ) -> SharedAgent:
        """Build from a ``ppo`` controller spec (the method's ``controller`` entry)."""
        from raytune_periodic.rl.mdp import parse_groups

        opts = {k: v for k, v in ctrl.items() if k in PPOOptions.__dataclass_fields__}
        if "hidden" in opts:
            opts["hidden"] = tuple(opts["hidden"])
        options = PPOOptions(**opts).validate()
        ranges = resolve_groups(parse_groups(ctrl["groups"]), bounds)
        return cls(
            ranges,
            options,
            reward=str(ctrl.get("reward", "val_f1_minus_gap")),
            gap_lambda=float(ctrl.get("gap_lambda", 0.5)),
            agent_checkpoint=ctrl.get("agent_checkpoint") or None,
            deterministic=bool(ctrl.get("deterministic_eval", True)),
            **kw,
        )

    @property
    def learning(self) -> bool:
        return self.agent.learning

    # ------------------------------------------------------------------ one round
    def act(self, k: int, period: int, last: PeriodRecord | None) -> dict[str, float]:
        """Child ``k``'s values for ``period`` (``last``: its previous period's record)."""
        child = self.children[k]
        if child.current is None:
            obs = self.mdp.observation(PeriodState(period, last, period / self.periods))
            child.current = Segment(obs=[obs])
        obs = child.current.obs[-1]
        noise = (
            self.noise_rng.standard_normal(self.mdp.action_dim).astype(np.float32)
            if self.explore
            else None
        )
        action, dist_inputs, logp = self.agent.act(obs, noise)
        child.pending = {"action": action, "dist_inputs": dist_inputs, "logp": logp}
        return self.mdp.values(action)

    def observe(self, k: int, record: PeriodRecord) -> float:
        """Close child ``k``'s transition with ``record``; returns (and records) its reward."""
        child = self.children[k]
        if record.status != STATUS_OK:  # diverged: the action ends the episode, penalised
            child.pending = None
            return math.nan
        check_record(record, "controller", child.reward)
        reward = float(child.reward(record))
        record.extra["ppo/reward"] = reward
        pending, child.pending = child.pending, None
        nxt = record.period + 1
        obs = self.mdp.observation(PeriodState(nxt, record, nxt / self.periods))
        if pending is None or child.current is None:
            return reward
        seg = child.current
        seg.obs.append(obs)
        seg.actions.append(pending["action"])
        seg.rewards.append(reward)
        seg.logps.append(pending["logp"])
        seg.dist_inputs.append(pending["dist_inputs"])
        self.steps += 1
        if record.epoch_ended:
            seg.done = True
            child.finished.append(seg)
            child.current = Segment(obs=[obs])
        return reward

    def maybe_update(self) -> dict[str, float] | None:
        """After a round: one PPO update once ``train_batch_size`` transitions are in."""
        if not self.learning or self.steps < self.options.train_batch_size:
            return None
        segments: list[Segment] = []
        for child in self.children:
            segments.extend(child.finished)
            if child.current is not None:
                segments.append(child.current)
        rewards = [r for s in segments for r in s.rewards]
        actions = np.tanh(np.stack([a for s in segments for a in s.actions]))
        stats = self.agent.learn(segments)
        stats.update(
            updates=float(self.agent.updates),
            transitions=float(len(rewards)),
            reward_mean=float(np.mean(rewards)),
            reward_std=float(np.std(rewards)),
        )
        for i, name in enumerate(self.mdp.groups):
            lo, hi = self.mdp.low[i], self.mdp.high[i]
            vals = lo + (actions[:, i] + 1.0) * 0.5 * (hi - lo)
            stats[f"value_mean/{name}"] = float(vals.mean())
            stats[f"value_std/{name}"] = float(vals.std())
        for child in self.children:
            child.finished = []
            if child.current is not None:
                child.current = Segment(obs=[child.current.obs[-1]])
        self.steps = 0
        return stats

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "mdp": self.mdp.meta(),
            "agent": self.agent.get_state(),
            "noise_rng": self.noise_rng.bit_generator.state,
            "children": [c.state_dict() for c in self.children],
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mdp"] != self.mdp.meta() or len(state["children"]) != len(self.children):
            raise ValueError("shared agent checkpoint of another layout or child count")
        self.agent.set_state(state["agent"])
        self.noise_rng.bit_generator.state = state["noise_rng"]
        for child, cstate in zip(self.children, state["children"], strict=True):
            child.load_state_dict(cstate)
        self.steps = int(state["steps"])

    def export(self, path: str | Path) -> Path:
        """An agent checkpoint folder (loadable by a ``ppo`` controller or another shared run)."""
        meta = {**self.mdp.meta(), "reward": self.reward_name, "gap_lambda": self.gap_lambda}
        return self.agent.export(path, meta)

    def close(self) -> None:
        self.agent.close()
