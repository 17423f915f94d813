"""``SharedPPOTrainable``: one Tune trial = one PPO agent + its children (``ppo_shared``).

Each Tune iteration runs ``iteration_periods`` lockstep *rounds*: the agent acts for every running
child, every child trains one period (in this process for ``layout: local``; on its own Ray actor,
one CPU and ``gpus_per_child`` GPUs each, for ``layout: runners``), the agent observes the
records, and after the round updates when its batch is full (``rl/shared.py``).

What the MLflow callback gets (``protocol/trial_results.py``): ``rp_children`` — per child the
records of the iteration's periods (+ replays after a crash-restore), its status and whether it
is done, so each child becomes a trial run exactly like another method's trial; ``rp_agent`` — the
agent's updates in the iteration (losses, reward and value statistics), logged as step metrics of
the method run. ``rp_records`` stays empty: the wrapper trial is no trial run of its own.

A checkpoint holds the agent (learner weights + Adam, exploration RNG, open episode chunks), every
child's exact engine state (``child_<k>/engine.pt``, the layout of a ``PeriodTrainable``
checkpoint, so reports read a child as any trial) and the per-child period histories. A restored
trial continues every child and the agent from the same round, so ``--resume`` after a killed
driver loses and duplicates no period (the callback skips steps MLflow already has).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from ray import tune

from raytune_periodic.protocol import trial_results as R
from raytune_periodic.records import STATUS_DIVERGED, STATUS_OK, PeriodRecord
from raytune_periodic.rl.mdp import parse_groups
from raytune_periodic.rl.shared import ChildRunner, SharedAgent
from raytune_periodic.tracking import best_weights
from raytune_periodic.training.process import prepare_process
from raytune_periodic.training.spec import load_data, parse_run_spec, trial_spec

SHARED_FILE = "shared.pt"


def child_specs(config: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each child's run spec (child k initialised like replicate k of a per-trial method) and
    the method's ``ppo`` controller spec."""
    rp = config["rp"]
    specs = []
    for k in range(int(rp["shared"]["children"])):
        spec = trial_spec({**config, "rp": {**rp, "replicate": k}})
        ctrl = spec.pop("controller")
        specs.append(spec)
    return specs, ctrl


class SharedPPOTrainable(tune.Trainable):
    """Steps ``children`` child runs in rounds with one shared PPO agent (module doc)."""

    def setup(self, config: dict[str, Any]) -> None:
        rp = config["rp"]
        prepare_process(rp.get("threads", 1))
        shared = rp["shared"]
        self.specs, ctrl = child_specs(config)
        self.iteration_periods = rp.get("iteration_periods", 1)
        reward = ctrl.get("reward", "val_f1_minus_gap")
        from raytune_periodic.controllers.rewards import make_reward

        train_eval = bool(make_reward(reward, float(ctrl.get("gap_lambda", 0.5))).needs_train_eval)
        patterns = {k: list(v) for k, v in parse_groups(ctrl["groups"]).items()}
        self.runners = self._start_children(shared, patterns, train_eval)
        bounds = self._call(0, "bounds")
        self.agent = SharedAgent.from_controller_spec(
            ctrl,
            bounds,
            children=len(self.specs),
            periods=int(rp["periods"]),
            warm_start=shared.get("warm_start") or None,
        )
        n = len(self.specs)
        self.period = [0] * n
        self.last: list[PeriodRecord | None] = [None] * n
        self.status = [STATUS_OK] * n
        self.full_val_last: list[float | None] = [None] * n
        self.history: list[list[dict[str, float]]] = [[] for _ in range(n)]
        self.replay: list[list[dict[str, float]]] = [[] for _ in range(n)]

    # ------------------------------------------------------------------ children
    def _start_children(
        self, shared: Mapping[str, Any], patterns: dict[str, Any], train_eval: bool
    ) -> list[Any]:
        if shared.get("layout", "local") == "local":
            data = load_data(parse_run_spec(self.specs[0]))  # one copy for every child
            return [
                ChildRunner(s, patterns, train_eval, data=data, name=self.child_id(k))
                for k, s in enumerate(self.specs)
            ]
        import ray

        actor = ray.remote(ChildRunner).options(
            num_cpus=float(shared.get("cpus_per_child", 1.0)),
            num_gpus=float(shared.get("gpus_per_child", 0.0)),
        )
        plugins = self.config["rp"].get("plugins") or {}
        return [
            actor.remote(s, patterns, train_eval, None, plugins, 1, self.child_id(k))
            for k, s in enumerate(self.specs)
        ]

    def child_id(self, k: int) -> str:
        """Child ``k``'s trial id (its MLflow trial run's ``rp.trial_id``)."""
        return f"{self.trial_id}-c{k}"

    @property
    def is_remote(self) -> bool:
        return not isinstance(self.runners[0], ChildRunner)

    def _call(self, k: int, method: str, *args: Any) -> Any:
        if not self.is_remote:
            return getattr(self.runners[k], method)(*args)
        import ray

        return ray.get(getattr(self.runners[k], method).remote(*args))

    def _call_all(self, ks: list[int], method: str, args: Mapping[int, tuple]) -> dict[int, Any]:
        if not self.is_remote:
            return {k: getattr(self.runners[k], method)(*args.get(k, ())) for k in ks}
        import ray

        refs = [getattr(self.runners[k], method).remote(*args.get(k, ())) for k in ks]
        return dict(zip(ks, ray.get(refs), strict=True))

    def _running(self) -> list[int]:
        periods = int(self.config["rp"]["periods"])
        return [
            k
            for k in range(len(self.specs))
            if self.status[k] == STATUS_OK and self.period[k] < periods
        ]

    # ------------------------------------------------------------------ one iteration
    def _round(self, out: list[list[dict[str, float]]], updates: list[dict[str, float]]) -> None:
        ks = self._running()
        values = {k: (self.agent.act(k, self.period[k], self.last[k]),) for k in ks}
        records = self._call_all(ks, "step", values)
        for k in ks:
            rec = PeriodRecord.from_dict(records[k])
            self.agent.observe(k, rec)
            self.last[k], self.period[k], self.status[k] = rec, self.period[k] + 1, rec.status
            if rec.full_val_f1 is not None:
                self.full_val_last[k] = rec.full_val_f1
            metrics = rec.metrics()
            out[k].append(metrics)
            self.history[k].append(metrics)
        stats = self.agent.maybe_update()
        if stats is not None:
            updates.append(stats)

    def step(self) -> dict[str, Any]:
        n = len(self.specs)
        out: list[list[dict[str, float]]] = [list(r) for r in self.replay]
        self.replay = [[] for _ in range(n)]
        updates: list[dict[str, float]] = []
        start, rounds = time.perf_counter(), 0
        budget = self.iteration_periods
        while self._running():
            self._round(out, updates)
            rounds += 1
            if isinstance(budget, int) and rounds >= budget:
                break
            if not isinstance(budget, int) and time.perf_counter() - start >= 1.0:
                break  # "auto": iterations of about a second
        return self._result(out, updates)

    def _result(
        self, out: list[list[dict[str, float]]], updates: list[dict[str, float]]
    ) -> dict[str, Any]:
        running = self._running()
        finals = [f for f in self.full_val_last if f is not None]
        objective = max(finals) if finals else 0.0
        last_val = [r.val_f1 for r in self.last if r is not None and math.isfinite(r.val_f1)]
        children = [
            {"child": k, "records": out[k], "status": self.status[k], "done": k not in running}
            for k in range(len(self.specs))
        ]
        all_diverged = all(s == STATUS_DIVERGED for s in self.status)
        result: dict[str, Any] = {
            "period": float(min(self.period)),
            R.PERIODS: min(self.period),  # per child (the progress line's periods)
            R.VAL_F1: max(last_val) if last_val else 0.0,
            R.FULL_VAL_LAST: objective,
            R.OBJECTIVE: objective,
            R.STATUS: STATUS_DIVERGED if all_diverged else STATUS_OK,
            R.WALL: time.time(),
            R.RECORDS: "[]",
            R.CHILDREN: json.dumps(children),
            R.AGENT: json.dumps(updates),
            "children_running": float(len(running)),
            "agent_updates": float(self.agent.agent.updates),
        }
        if updates:
            result["agent_reward_mean"] = updates[-1]["reward_mean"]
        if not running:
            result[R.DONE] = True
        if all_diverged:
            result.update(dict.fromkeys(R.RANKED_METRICS, R.WORST_SCORE))
        return result

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        n = len(self.specs)
        blobs = self._call_all(list(range(n)), "state", {})
        models = self._call_all(list(range(n)), "model_files", {})
        for k in range(n):
            child_dir = os.path.join(checkpoint_dir, f"child_{k}")
            os.makedirs(child_dir, exist_ok=True)
            for name, blob in {R.ENGINE_FILE: blobs[k], **models[k]}.items():
                with open(os.path.join(child_dir, name), "wb") as fh:
                    fh.write(blob)
            meta = {"trial_id": self.child_id(k), "period": self.period[k]}
            with open(os.path.join(child_dir, R.META_FILE), "w") as fh:
                json.dump(meta, fh)
        state = {
            "agent": self.agent.state_dict(),
            "period": self.period,
            "last": [None if r is None else r.to_dict() for r in self.last],
            "status": self.status,
            "full_val_last": self.full_val_last,
            "history": self.history,
        }
        torch.save(state, os.path.join(checkpoint_dir, SHARED_FILE))
        with open(os.path.join(checkpoint_dir, R.META_FILE), "w") as fh:
            json.dump({"trial_id": self.trial_id, "period": min(self.period)}, fh)
        self.agent.export(os.path.join(checkpoint_dir, R.AGENT_DIR))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        assert isinstance(checkpoint, str)
        state = torch.load(os.path.join(checkpoint, SHARED_FILE), weights_only=False)
        n = len(self.specs)
        blobs, models = {}, {}
        for k in range(n):
            child_dir = os.path.join(checkpoint, f"child_{k}")
            with open(os.path.join(child_dir, R.ENGINE_FILE), "rb") as fh:
                blobs[k] = (fh.read(),)
            files = {}
            for name in (best_weights.BEST_FILE, best_weights.LAST_FILE, best_weights.META_FILE):
                if os.path.isfile(os.path.join(child_dir, name)):
                    with open(os.path.join(child_dir, name), "rb") as fh:
                        files[name] = fh.read()
            models[k] = (files,)
        self._call_all(list(range(n)), "load", blobs)
        self._call_all(list(range(n)), "load_model_files", models)
        self.agent.load_state_dict(state["agent"])
        self.period = list(state["period"])
        self.last = [None if r is None else PeriodRecord.from_dict(r) for r in state["last"]]
        self.status = list(state["status"])
        self.full_val_last = list(state["full_val_last"])
        self.history = [list(h) for h in state["history"]]
        self.replay = [list(h) for h in self.history]  # the callback skips what MLflow has

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """An actor reused for another trial (``reuse_actors``): a new agent and new children
        (Tune has already switched ``trial_id``)."""
        self.cleanup()
        self.config = new_config
        self.setup(new_config)
        return True

    def cleanup(self) -> None:
        self.agent.close()
        if self.is_remote:
            import ray

            for runner in self.runners:
                ray.kill(runner)
