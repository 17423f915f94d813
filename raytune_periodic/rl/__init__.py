"""RLlib PPO for periodic regularization (the paper's PDRL/PNIRL); see ``README.md`` here.

- :mod:`.mdp` (numpy only): observation, action mapping, rewards (``REWARDS``).
- :mod:`.controller`: ``PPOController`` — the ``ppo`` controller, one agent per child run.
- :mod:`.agent`: the RLlib wiring (``PPOConfig``, ``LearnerGroup``, agent checkpoints).
- :mod:`.children`: one agent, many children (RLlib env runners each training a child).

Importing this package does not import Ray, RLlib or gymnasium; names resolve lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

# Load the controller registry first: it may import ``rl.controller`` to register ``ppo``, and
# doing so before any ``rl`` submodule starts executing avoids a circular partial import.
import raytune_periodic.controllers  # noqa: F401

_LAZY = {
    "MDP": "mdp",
    "REWARDS": "mdp",
    "make_reward": "mdp",
    "PPOController": "controller",
    "PPOAgent": "agent",
    "PPOOptions": "agent",
    "ppo_config": "agent",
    "ChildTrainingEnv": "children",
    "many_children_config": "children",
    "export_algo_agent": "children",
    "run_many_children": "children",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
