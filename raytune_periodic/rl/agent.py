"""The PPO agent: RLlib's PPO (new API stack) driven from the child's training loop.

RLlib supplies the policy/value networks (``DefaultPPOTorchRLModule``), the PPO-clip loss, GAE and
the Adam updates (its ``LearnerGroup`` with a local ``PPOLearner``); this module only

- samples actions from the module's Gaussian with a private RNG (``act``),
- turns the transitions collected by the controller into ``SingleAgentEpisode`` chunks and hands
  them to ``LearnerGroup.update`` (``learn``),
- snapshots/restores module + optimizer state (``get_state``/``set_state``) and writes/reads agent
  checkpoints (an ``RLModule`` checkpoint folder plus ``raytune_periodic_agent.json``).

Nothing here starts Ray: with ``num_learners=0`` the learner lives in the caller's process (a Tune
trial's actor), so there are no nested placement groups. RLlib seeds the global RNGs when it
builds a learner and draws from them when it shuffles minibatches; every such call runs inside
:func:`isolated_rng`, so the child's random stream is untouched and updates are reproducible.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.rl.mdp import OBS_HIGH
from raytune_periodic.validation import fraction, integer, number, sequence

META_FILE = "raytune_periodic_agent.json"
AGENT_FORMAT = "raytune_periodic.ppo_agent/1"


@dataclass
class PPOOptions:
    """PPO hyperparameters (RLlib ``PPOConfig.training`` / ``rl_module`` settings)."""

    lr: float = 1e-3  #: Adam learning rate of policy and value networks
    #: discount per period. 0 is the paper's advantage A = R − b (reward minus the value head's
    #: baseline); > 0 also credits an action with later periods' rewards (episode = one epoch,
    #: bootstrapped at its end because the child keeps training).
    gamma: float = 0.0
    gae_lambda: float = 0.95  #: GAE λ
    train_batch_size: int = 32  #: periods (transitions) collected per update
    minibatch_size: int = 16  #: SGD minibatch size within an update
    num_epochs: int = 8  #: passes over each collected batch
    hidden: tuple[int, ...] = (32, 32)  #: hidden sizes of the policy MLP and the value MLP
    entropy_coeff: float = 0.0  #: entropy bonus
    clip_param: float = 0.2  #: PPO clip ε (the paper's 0.2)
    seed: int = 0  #: seeds network init, exploration noise and minibatch shuffling

    def validate(self, field: str = "controller") -> PPOOptions:
        number(self.lr, f"{field}.lr", 0.0, low_open=True)
        for key in ("gamma", "gae_lambda"):
            fraction(getattr(self, key), f"{field}.{key}")
        for key in ("entropy_coeff", "clip_param"):
            number(getattr(self, key), f"{field}.{key}")
        for key, low in (("train_batch_size", 2), ("minibatch_size", 1), ("num_epochs", 1)):
            integer(getattr(self, key), f"{field}.{key}", low)
        if self.minibatch_size > self.train_batch_size:
            raise ConfigError(
                f"{field}.minibatch_size",
                f"must be <= train_batch_size ({self.train_batch_size}), got {self.minibatch_size}",
            )
        what, where = "a list of positive ints", f"{field}.hidden"
        hidden = tuple(integer(h, where, 1) for h in sequence(self.hidden, where, what))
        if not hidden:
            raise ConfigError(where, f"expected {what}, got {self.hidden!r}")
        self.hidden = hidden
        return self


class _RLlibOwnDeprecation(logging.Filter):
    """RLlib 2.60's ``RLModule.__init__`` builds the deprecated ``RLModuleConfig`` itself and
    then warns about it on every module it creates; nothing a caller passes avoids it (ours
    passes no ``config``). Dropped so ``validate`` and every trial stay quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`RLModule(config=[RLModuleConfig object])`" not in record.getMessage()


logging.getLogger("ray._common.deprecation").addFilter(_RLlibOwnDeprecation())


def spaces(obs_dim: int, action_dim: int) -> tuple[Any, Any]:
    gym = require("gymnasium")
    obs = gym.spaces.Box(0.0, OBS_HIGH, (obs_dim,), np.float32)
    act = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    return obs, act


def ppo_config(options: PPOOptions, obs_dim: int, action_dim: int) -> Any:
    """The ``PPOConfig`` shared by the per-trial controller and the many-children mode."""
    require("ray.rllib")
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    obs_space, act_space = spaces(obs_dim, action_dim)
    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(observation_space=obs_space, action_space=act_space)
        .env_runners(num_env_runners=0)
        .learners(num_learners=0, num_gpus_per_learner=0)
        .training(
            lr=options.lr,
            gamma=options.gamma,
            lambda_=options.gae_lambda,
            train_batch_size_per_learner=options.train_batch_size,
            minibatch_size=options.minibatch_size,
            num_epochs=options.num_epochs,
            clip_param=options.clip_param,
            vf_clip_param=1e6,
            use_kl_loss=False,  # the paper's PPO-clip objective
            entropy_coeff=options.entropy_coeff,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(options.hidden), vf_share_layers=False
            )
        )
        .debugging(seed=options.seed, log_level="ERROR")
    )


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed Python/numpy/torch-CPU global RNGs for the block, then restore their states."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the agent's tiny tensor ops on one intra-op thread, then restore the child's setting.

    Multi-threaded kernels on a few-thousand-weight MLP only spin: with three processes on two
    cores the synthetic test took ~38 s with torch's default threads and ~10 s with one.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Segment:
    """Transitions of one episode chunk: ``obs`` has one more entry than ``actions``."""

    obs: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    dist_inputs: list[np.ndarray] = field(default_factory=list)
    done: bool = False  #: ended at an epoch boundary (truncated, not terminal)

    def __len__(self) -> int:
        return len(self.actions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PPOAgent:
    """RLlib PPO module (+ learner when learning) for ``obs_dim`` inputs, ``action_dim`` outputs."""

    def __init__(self, obs_dim: int, action_dim: int, options: PPOOptions, module: Any = None):
        require("ray.rllib")
        self.obs_dim, self.action_dim, self.options = obs_dim, action_dim, options
        self.learner_group: Any = None
        self.updates = 0
        self.steps_trained = 0
        if module is None:
            from ray.rllib.core import DEFAULT_MODULE_ID

            config = ppo_config(options, obs_dim, action_dim)
            with isolated_rng(options.seed), one_thread():
                self.learner_group = config.build_learner_group(
                    spaces={DEFAULT_MODULE_ID: spaces(obs_dim, action_dim)}
                )
            module = self.learner_group._learner.module[DEFAULT_MODULE_ID]
        self.module = module
        from ray.rllib.core.columns import Columns

        self._cols = Columns
        self._dist_cls = module.get_exploration_action_dist_cls()

    @property
    def learning(self) -> bool:
        return self.learner_group is not None

    # ------------------------------------------------------------------------------ acting
    def act(
        self, obs: np.ndarray, noise: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Raw action (mean + std·noise; the mean when ``noise`` is None), dist inputs, log-prob."""
        with torch.no_grad(), one_thread():
            x = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
            out = self.module.forward_inference({self._cols.OBS: x})
            logits = out[self._cols.ACTION_DIST_INPUTS]
            mean, log_std = logits[0].chunk(2)
            action = mean if noise is None else mean + log_std.exp() * torch.as_tensor(noise)
            logp = self._dist_cls.from_logits(logits).logp(action.reshape(1, -1))
        return action.numpy().astype(np.float32), logits[0].numpy(), float(logp[0])

    # ------------------------------------------------------------------------------ learning
    def learn(self, segments: Sequence[Segment]) -> dict[str, float]:
        """One PPO update (``num_epochs`` passes) on the given chunks; returns loss statistics."""
        if not self.learning:
            raise RuntimeError("this agent was loaded for inference only")
        from ray.rllib.core import DEFAULT_MODULE_ID
        from ray.rllib.env.single_agent_episode import SingleAgentEpisode
        from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

        cols = self._cols
        obs_space, act_space = spaces(self.obs_dim, self.action_dim)
        episodes = []
        for seg in segments:
            if len(seg) == 0:
                continue
            ep = SingleAgentEpisode(observation_space=obs_space, action_space=act_space)
            ep.add_env_reset(seg.obs[0])
            last = len(seg) - 1
            for t in range(len(seg)):
                ep.add_env_step(
                    seg.obs[t + 1],
                    seg.actions[t],
                    seg.rewards[t],
                    # An epoch end is a time limit of a continuing process (the child keeps
                    # training): truncate, so GAE bootstraps from the value of the next state.
                    truncated=seg.done and t == last,
                    extra_model_outputs={
                        cols.ACTION_DIST_INPUTS: seg.dist_inputs[t],
                        cols.ACTION_LOGP: np.float32(seg.logps[t]),
                    },
                )
            episodes.append(ep.to_numpy())
        n = sum(len(e) for e in episodes)
        self.steps_trained += n
        with isolated_rng(self.options.seed * 1_000_003 + self.updates + 1), one_thread():
            results = self.learner_group.update(
                episodes=episodes,
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.steps_trained},
                num_epochs=self.options.num_epochs,
                minibatch_size=self.options.minibatch_size,
                shuffle_batch_per_epoch=True,
            )
        self.updates += 1
        stats = results[0].get(DEFAULT_MODULE_ID, {}) if results else {}
        out: dict[str, float] = {}
        for key in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss"):
            val = stats.get(key)
            with contextlib.suppress(TypeError, ValueError):
                out[key] = float(val.peek() if hasattr(val, "peek") else val)
        return out

    # ------------------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Module weights and (when learning) optimizer state, as numpy arrays."""
        if self.learning:
            learner = self.learner_group.get_state(
                components=["learner/rl_module", "learner/optimizer"]
            )
            # RLlib's numpy arrays may share memory with the live parameters: copy them.
            learner = copy.deepcopy(learner)
            return {"learner": learner, "updates": self.updates, "steps": self.steps_trained}
        module = copy.deepcopy(self.module.get_state())
        return {"module": module, "updates": self.updates, "steps": 0}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if self.learning:
            if "learner" not in state:
                raise ConfigError("controller", "checkpoint has no learner state to resume from")
            self.learner_group.set_state(state["learner"])
        elif "module" in state:
            self.module.set_state(state["module"])
        else:
            rl = state["learner"]["learner"]["rl_module"]
            self.module.set_state(next(iter(rl.values())))
        self.updates = int(state.get("updates", 0))
        self.steps_trained = int(state.get("steps", 0))

    def close(self) -> None:
        if self.learner_group is not None:
            self.learner_group.shutdown()
            self.learner_group = None

    # ------------------------------------------------------------------------------ checkpoints
    def export(self, path: str | Path, meta: Mapping[str, Any]) -> Path:
        """Write an agent checkpoint folder (RLModule checkpoint + our JSON metadata)."""
        return export_module(self.module, path, meta, self.options)

    def warm_start(self, path: str | Path, meta: Mapping[str, Any], field: str) -> None:
        """Start learning from an agent checkpoint's policy and value weights (fresh Adam)."""
        saved = read_agent_meta(path, field)
        check_agent_meta(saved, meta, field)
        hidden = tuple(saved.get("ppo", {}).get("hidden", self.options.hidden))
        if hidden != tuple(self.options.hidden):
            raise ConfigError(
                field, f"agent checkpoint has hidden sizes {list(hidden)}, this run"
                f" {list(self.options.hidden)}"
            )  # fmt: skip
        from ray.rllib.core.rl_module.rl_module import RLModule

        loaded = RLModule.from_checkpoint(str(Path(path).resolve()))
        with one_thread():
            self.module.set_state(loaded.get_state())

    @classmethod
    def load(cls, path: str | Path, meta: Mapping[str, Any], field: str) -> PPOAgent:
        """Load an inference-only agent; a layout that differs from ``meta`` is a ConfigError."""
        saved = read_agent_meta(path, field)
        check_agent_meta(saved, meta, field)
        from ray.rllib.core.rl_module.rl_module import RLModule

        module = RLModule.from_checkpoint(str(Path(path).resolve()))
        got = (module.observation_space.shape, module.action_space.shape)
        want = ((meta["obs_dim"],), (meta["action_dim"],))
        if got != want:
            raise ConfigError(field, f"agent spaces (obs, action) {got} do not match {want}")
        ppo = dict(saved.get("ppo", {}))
        options = PPOOptions(**ppo) if ppo else PPOOptions()
        return cls(meta["obs_dim"], meta["action_dim"], options, module=module)


def export_module(
    module: Any, path: str | Path, meta: Mapping[str, Any], options: PPOOptions | None = None
) -> Path:
    """Save ``module`` (an RLlib single-agent RLModule) as an agent checkpoint folder."""
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    module.save_to_path(str(path))
    data = {"format": AGENT_FORMAT, **meta}
    if options is not None:
        data["ppo"] = {**asdict(options), "hidden": list(options.hidden)}
    (path / META_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def read_agent_meta(path: str | Path, field: str) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ConfigError(field, f"{path} is not an agent checkpoint (no {META_FILE})")
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(field, f"unreadable {meta_path}: {exc}") from None
    if data.get("format") != AGENT_FORMAT:
        raise ConfigError(field, f"{path} has format {data.get('format')!r}, need {AGENT_FORMAT}")
    return data


def check_agent_meta(saved: Mapping[str, Any], want: Mapping[str, Any], field: str) -> None:
    """The checkpoint's observation/action layout must equal the configured one."""
    for key in ("obs_version", "obs_dim", "action_dim"):
        if saved.get(key) != want[key]:
            raise ConfigError(
                field,
                f"agent checkpoint {key}={saved.get(key)} does not match this run's {want[key]}"
                f" (groups {list(saved.get('groups', {}))} vs {list(want['groups'])})",
            )
    if list(saved.get("groups", {})) != list(want["groups"]):
        raise ConfigError(
            field,
            f"agent checkpoint controls groups {list(saved.get('groups', {}))},"
            f" this run {list(want['groups'])}",
        )
