"""``PPOController``: the paper's PDRL/PNIRL — an RLlib PPO agent picks each period's values.

The child's period loop drives everything (no env thread, no Ray):

- ``decide(state)`` at a period's start: builds the observation (:mod:`raytune_periodic.rl.mdp`),
  closes the previous transition (its reward arrived in ``observe``), runs a PPO update when
  ``train_batch_size`` transitions have been collected since the last one, then samples the action
  for this period from the RLlib module (exploration noise from the controller's own seeded RNG);
- ``observe(record)`` at its end: computes the reward (also written to ``record.extra`` as
  ``ppo/reward``) and whether an epoch ended (= episode end).

Importing this module does not import Ray; the agent is built in ``bind`` (the first moment the
model's regularizer groups and their valid ranges are known), so bad input is a one-line
``ConfigError`` before any RLlib object exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raytune_periodic.controllers._base import Controller
from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord, PeriodState
from raytune_periodic.rl.mdp import MDP, check_record, make_reward, parse_groups, resolve_groups

if TYPE_CHECKING:
    from raytune_periodic.rl.agent import PPOAgent, PPOOptions, Segment


class PPOController(Controller):
    """PPO (RLlib, new API stack) choosing the values of ``groups`` every period.

    Args:
        groups: ``{group: [low, high]}`` — one action dimension per group; glob patterns such as
            ``"dropout_*"`` expand to the matching per-layer groups. Ranges must lie inside the
            regularizer's valid range.
        reward: a ``REWARDS`` name: ``gap`` (the paper's, train F1 in eval mode),
            ``gap_train_mode``, ``val_f1``, ``val_f1_delta``, ``val_f1_minus_gap``.
        gap_lambda: λ of ``val_f1_minus_gap``.
        lr, gamma, gae_lambda, train_batch_size, minibatch_size, num_epochs, hidden,
        entropy_coeff: PPO settings (see :class:`raytune_periodic.rl.agent.PPOOptions`); the agent
            learns every ``train_batch_size`` periods. Clip ε is fixed at 0.2 (the paper).
        seed: seeds the networks, exploration noise and minibatch order.
        agent_checkpoint: folder written by :meth:`export_agent` → inference-only mode (no
            learning); its observation/action layout must match this run's.
        deterministic_eval: in inference-only mode, act with the policy mean (True) or sample.
    """

    name = "ppo"

    @classmethod
    def smoke_options(cls, spec: dict[str, Any]) -> None:
        spec.update({"train_batch_size": 2, "minibatch_size": 2, "num_epochs": 1})

    def __init__(
        self,
        groups: Mapping[str, Sequence[float]],
        reward: str = "val_f1_minus_gap",
        gap_lambda: float = 0.5,
        lr: float = 1e-3,
        gamma: float = 0.0,
        gae_lambda: float = 0.95,
        train_batch_size: int = 32,
        minibatch_size: int = 16,
        num_epochs: int = 8,
        hidden: Sequence[int] = (32, 32),
        entropy_coeff: float = 0.0,
        seed: int = 0,
        agent_checkpoint: str | None = None,
        deterministic_eval: bool = True,
    ) -> None:
        super().__init__()
        from raytune_periodic.rl.agent import PPOOptions, read_agent_meta

        self.ranges = parse_groups(groups)
        self.reward_name = str(reward)
        self.gap_lambda = gap_lambda
        self.reward = make_reward(self.reward_name, gap_lambda)
        self.options: PPOOptions = PPOOptions(
            lr=lr,
            gamma=gamma,
            gae_lambda=gae_lambda,
            train_batch_size=train_batch_size,
            minibatch_size=minibatch_size,
            num_epochs=num_epochs,
            hidden=tuple(hidden) if isinstance(hidden, Sequence) else hidden,  # type: ignore[arg-type]
            entropy_coeff=entropy_coeff,
            seed=int(seed),
        ).validate()
        self.agent_checkpoint = None if agent_checkpoint in (None, "") else str(agent_checkpoint)
        if self.agent_checkpoint is not None:
            read_agent_meta(self.agent_checkpoint, "controller.agent_checkpoint")
        self.deterministic_eval = bool(deterministic_eval)
        self.noise_rng = np.random.default_rng([self.options.seed, 17])
        self.mdp: MDP | None = None
        self.agent: PPOAgent | None = None
        self.segments: list[Segment] = []  #: finished episodes since the last update
        self.current: Segment | None = None  #: the episode in progress
        self.pending: dict[str, Any] | None = None  #: the last action, waiting for its reward
        self.steps_since_update = 0
        self.last_update: dict[str, float] = {}
        self._deferred: Mapping[str, Any] | None = None

    def controlled(self) -> list[str]:
        return list(self.mdp.groups) if self.mdp is not None else list(self.ranges)

    @property
    def needs_train_eval(self) -> bool:
        """The reward reads the eval-mode training subset (the engine then measures it)."""
        return bool(getattr(self.reward, "needs_train_eval", False))

    @property
    def learning(self) -> bool:
        return self.agent_checkpoint is None

    def bind(self, bounds: Mapping[str, tuple[float, float]], field: str = "controller") -> None:
        from raytune_periodic.rl.agent import PPOAgent

        self.bounds = dict(bounds)
        self.mdp = MDP.from_ranges(resolve_groups(self.ranges, self.bounds, f"{field}.groups"))
        self.close()
        if self.agent_checkpoint is not None:
            meta = self.mdp.meta()
            self.agent = PPOAgent.load(self.agent_checkpoint, meta, f"{field}.agent_checkpoint")
        else:
            self.agent = PPOAgent(self.mdp.obs_dim, self.mdp.action_dim, self.options)
        if self._deferred is not None:
            state, self._deferred = self._deferred, None
            self.load_state_dict(state)

    def _bound(self) -> tuple[MDP, PPOAgent]:
        if self.mdp is None or self.agent is None:
            raise RuntimeError("PPOController.bind() must be called before use")
        return self.mdp, self.agent

    # ------------------------------------------------------------------------------ the loop
    def decide(self, state: PeriodState) -> dict[str, float]:
        mdp, agent = self._bound()
        obs = mdp.observation(state)
        if self.learning:
            self._add_transition(obs)
            if self.steps_since_update >= self.options.train_batch_size:
                self._update()
        explore = self.learning or not self.deterministic_eval
        noise = (
            self.noise_rng.standard_normal(mdp.action_dim).astype(np.float32) if explore else None
        )
        action, dist_inputs, logp = agent.act(obs, noise)
        if self.learning:
            self.pending = {"action": action, "dist_inputs": dist_inputs, "logp": logp}
        return mdp.values(action)

    def observe(self, record: PeriodRecord) -> None:
        check_record(record, reward=self.reward)
        reward = float(self.reward(record))
        record.extra["ppo/reward"] = reward
        if self.last_update:
            record.extra.update({f"ppo/{k}": v for k, v in self.last_update.items()})
            self.last_update = {}
        if self.pending is not None:
            self.pending["reward"] = reward
            self.pending["done"] = record.epoch_ended

    def _add_transition(self, obs: np.ndarray) -> None:
        from raytune_periodic.rl.agent import Segment

        pending, self.pending = self.pending, None
        if self.current is None:
            self.current = Segment(obs=[obs])
            return
        if pending is None or "reward" not in pending:
            self.current.obs[-1] = obs  # the last action never got a reward: drop it
            return
        seg = self.current
        seg.obs.append(obs)
        seg.actions.append(pending["action"])
        seg.rewards.append(pending["reward"])
        seg.logps.append(pending["logp"])
        seg.dist_inputs.append(pending["dist_inputs"])
        self.steps_since_update += 1
        if pending["done"]:
            seg.done = True
            self.segments.append(seg)
            self.current = Segment(obs=[obs])

    def _update(self) -> None:
        from raytune_periodic.rl.agent import Segment

        _, agent = self._bound()
        assert self.current is not None
        self.last_update = agent.learn([*self.segments, self.current])
        self.last_update["updates"] = float(agent.updates)
        self.segments = []
        self.current = Segment(obs=[self.current.obs[-1]])
        self.steps_since_update = 0

    # ------------------------------------------------------------------------------ helpers
    def act(self, observation: np.ndarray, deterministic: bool = True) -> dict[str, float]:
        """Values the policy picks for ``observation`` (the mean when ``deterministic``)."""
        mdp, agent = self._bound()
        noise = None if deterministic else self.noise_rng.standard_normal(mdp.action_dim)
        action, _, _ = agent.act(np.asarray(observation, dtype=np.float32), noise)
        return mdp.values(action)

    def export_agent(self, path: str | Path) -> Path:
        """Write the agent as a checkpoint folder usable as ``agent_checkpoint`` in another run."""
        mdp, agent = self._bound()
        meta = {**mdp.meta(), "reward": self.reward_name, "gap_lambda": self.gap_lambda}
        return agent.export(path, meta)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.agent is None or self.mdp is None:
            return dict(self._deferred or {})
        return {
            "mdp": self.mdp.meta(),
            "agent": self.agent.get_state(),
            "noise_rng": self.noise_rng.bit_generator.state,
            "segments": [s.to_dict() for s in self.segments],
            "current": None if self.current is None else self.current.to_dict(),
            "pending": None if self.pending is None else dict(self.pending),
            "steps_since_update": self.steps_since_update,
            "reward": self.reward.state_dict(),
            "last_update": dict(self.last_update),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from raytune_periodic.rl.agent import Segment

        if not state:
            return
        if self.agent is None or self.mdp is None:
            self._deferred = state  # restored in bind()
            return
        if state["mdp"] != self.mdp.meta():
            raise ConfigError(
                "controller.groups",
                f"checkpoint controls {list(state['mdp']['groups'])}, this run"
                f" {list(self.mdp.groups)}",
            )
        self.agent.set_state(state["agent"])
        self.noise_rng.bit_generator.state = state["noise_rng"]
        self.segments = [Segment(**s) for s in state["segments"]]
        self.current = None if state["current"] is None else Segment(**state["current"])
        self.pending = None if state["pending"] is None else dict(state["pending"])
        self.steps_since_update = int(state["steps_since_update"])
        self.reward.load_state_dict(state["reward"])
        self.last_update = dict(state.get("last_update", {}))

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
