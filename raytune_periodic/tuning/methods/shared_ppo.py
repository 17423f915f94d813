"""``ppo_shared``: one RLlib PPO agent learns from all ``budget.trials`` children of a seed.

The per-trial ``ppo`` controller learns inside one child (100 periods ≈ 6 updates); here one agent
acts for every child of a seed and each update uses all of their transitions. The children are
the seed's ``budget.trials`` runs of ``budget.periods`` periods each (child k initialised as
replicate k of a per-trial method), so the method spends exactly the compute of every other
method, and each child is a trial run in MLflow like any other trial. The agent's updates are
step metrics ``agent/seed<s>/<stat>`` of the method run; the agent is its artifact
``agent/seed<s>``.

YAML::

    PPO_shared:
      search: ppo_shared
      controller: {type: ppo, groups: {dropout: [0.0, 0.7]}, reward: gap, ...}  # as per-trial PPO
      layout: local           # local: all children stepped in the trial's process (CPU)
                              # runners: one Ray actor per child, cpus_per_child CPUs and
                              # gpus_per_child GPUs each (e.g. 1 and 0.5: two children a GPU)
      cpus_per_child: 1
      gpus_per_child: 0
      warm_start: path/agent  # optional: start learning from an agent checkpoint

``controller.agent_checkpoint`` (as for per-trial PPO) acts inference-only with a trained agent.
One Tune trial per seed holds the agent and its children; its resources are one bundle for the
agent (``tune.resources``) plus, for ``runners``, one bundle per child — a single placement
group, nothing nested.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.tuning.methods._base import SearchMethod
from raytune_periodic.validation import choice, number

LAYOUTS = ("local", "runners")


class SharedPPOMethod(SearchMethod):
    """One PPO agent per seed acting for, and learning from, the seed's ``trials`` children."""

    search = "ppo_shared"
    keys = {"controller", "layout", "cpus_per_child", "gpus_per_child", "warm_start", "description"}

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        fld = f"methods.{name}"
        for key in ("scheduler", "perturbation_interval", "hyperparam_mutations"):
            if key in entry:
                raise ConfigError(
                    f"{fld}.{key}",
                    "ppo_shared runs one agent over its children in one trial; a PBT scheduler"
                    " (cloning children's weights under the agent) cannot be combined with it",
                )
        super().check(name, entry, trials, periods, bounds)
        ctrl = entry.get("controller")
        if not isinstance(ctrl, Mapping) or ctrl.get("type") != "ppo":
            raise ConfigError(f"{fld}.controller", "ppo_shared needs a controller of type ppo")
        choice(entry.get("layout", "local"), f"{fld}.layout", LAYOUTS)
        for key, default in (("gpus_per_child", 0.0), ("cpus_per_child", 1.0)):
            if key not in entry:
                continue
            amount = number(entry.get(key, default), f"{fld}.{key}", 0.0, 1024.0)
            if entry.get("layout", "local") != "runners":
                raise ConfigError(f"{fld}.{key}", "resources per child need layout: runners")
            if key == "cpus_per_child" and amount <= 0:
                raise ConfigError(f"{fld}.{key}", f"must be > 0, got {amount}")
        warm = entry.get("warm_start")
        if warm is not None:
            if ctrl.get("agent_checkpoint"):
                raise ConfigError(
                    f"{fld}.warm_start",
                    "warm_start keeps learning, controller.agent_checkpoint is inference-only:"
                    " give one",
                )
            if not isinstance(warm, str) or not Path(warm).expanduser().is_dir():
                raise ConfigError(f"{fld}.warm_start", f"{warm!r} is not an agent folder")
            from raytune_periodic.rl.agent import read_agent_meta

            read_agent_meta(Path(warm).expanduser(), f"{fld}.warm_start")
        if bounds is not None and warm is not None:
            _check_warm_layout(ctrl, bounds, str(warm), f"{fld}.warm_start")

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        ctrl = entry.get("controller")
        if isinstance(ctrl, dict):
            ctrl.update({"train_batch_size": 2, "minibatch_size": 2, "num_epochs": 1})

    def controller(self) -> dict[str, Any]:
        return dict(self.entry["controller"])

    def extra_rp(self) -> dict[str, Any]:
        warm = self.entry.get("warm_start")
        return {
            "shared": {
                "children": self.trials,
                "layout": self.entry.get("layout", "local"),
                "gpus_per_child": float(self.entry.get("gpus_per_child", 0.0)),
                "cpus_per_child": float(self.entry.get("cpus_per_child", 1.0)),
                "warm_start": None if warm is None else os.path.abspath(os.path.expanduser(warm)),
            }
        }

    def reporter_columns(self, seeds: list[int]) -> dict[str, str]:
        return {"rp/seed": "seed"} if len(seeds) > 1 else {}

    def static_params(self) -> dict[str, Any]:
        return {**self.entry, "children": self.trials}

    def trainable(self, resources: Mapping[str, float]) -> Any:
        from ray import tune

        from raytune_periodic.tuning.shared_trainable import SharedPPOTrainable

        head = {k.upper(): float(v) for k, v in resources.items() if v}
        if self.entry.get("layout", "local") == "local":
            return tune.with_resources(SharedPPOTrainable, tune.PlacementGroupFactory([head]))
        child = {"CPU": float(self.entry.get("cpus_per_child", 1.0))}
        gpus = float(self.entry.get("gpus_per_child", 0.0))
        if gpus:
            child["GPU"] = gpus
        bundles = [head, *([child] * self.trials)]
        return tune.with_resources(SharedPPOTrainable, tune.PlacementGroupFactory(bundles))

    def resource_demand(self, resources: Mapping[str, float]) -> dict[str, float]:
        """What one trial reserves (the runner checks it against the cluster)."""
        cpu = float(resources.get("cpu", 1) or 0)
        gpu = float(resources.get("gpu", 0) or 0)
        if self.entry.get("layout", "local") == "runners":
            cpu += self.trials * float(self.entry.get("cpus_per_child", 1.0))
            gpu += self.trials * float(self.entry.get("gpus_per_child", 0.0))
        return {"CPU": cpu, "GPU": gpu}


def _check_warm_layout(ctrl: Mapping[str, Any], bounds: Any, warm: str, fld: str) -> None:
    """The warm-start agent must observe and control exactly this run's groups."""
    from raytune_periodic.rl.agent import check_agent_meta, read_agent_meta
    from raytune_periodic.rl.mdp import MDP, parse_groups, resolve_groups

    ranges = resolve_groups(parse_groups(ctrl["groups"]), bounds)
    saved = read_agent_meta(Path(warm).expanduser(), fld)
    check_agent_meta(saved, MDP.from_ranges(ranges).meta(), fld)
