"""The shared PPO agent's cost, measured side by side in one run.

(a) child periods per second with 1, 2 and 4 children in the ``local`` layout (one process, one
    agent, lockstep rounds: ``rl/shared.py``) vs the same periods under per-trial PPO (one
    ``ppo`` controller per child, each child run to its end in turn); goal: shared / per-trial
    time <= 1.10;
(b) the agent's update time per 1,000 transitions (RLlib PPO learner, ``num_epochs`` passes),
    shared and per-trial.

Both arms train the same children (same seeds, same data) for the same periods; repeats are
interleaved and medians reported. Usage: python bench/ppo_shared.py [--periods 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from raytune_periodic.records import PeriodRecord
from raytune_periodic.rl.controller import PPOController
from raytune_periodic.rl.shared import ChildRunner, SharedAgent
from raytune_periodic.training import build_engine
from raytune_periodic.training.spec import load_data, parse_run_spec

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3, "seed": 0},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"period_length": 20, "batch_size": 64, "val_batches": 2, "eval_every_epochs": 1},
}
PPO = {"train_batch_size": 16, "minibatch_size": 8, "num_epochs": 8}
GROUPS = {"dropout": [0.0, 0.7]}


def child_spec(k: int, periods: int) -> dict[str, Any]:
    return {**SPEC, "train": {**SPEC["train"], "periods": periods, "seed": k}}


def per_trial(children: int, periods: int) -> tuple[float, float, int]:
    """Seconds for ``children`` x ``periods`` periods with one PPO agent per child; the
    seconds spent in updates and the transitions they learned from."""
    total = update = 0.0
    transitions = 0
    for k in range(children):
        ctrl = PPOController(groups=GROUPS, reward="gap", seed=k, **PPO)
        engine = build_engine(child_spec(k, periods), controller=ctrl)
        learn = ctrl.agent.learn

        def timed(segments: Any, learn: Any = learn) -> Any:
            nonlocal update, transitions
            t = time.perf_counter()
            out = learn(segments)
            update += time.perf_counter() - t
            transitions += sum(len(s) for s in segments)
            return out

        ctrl.agent.learn = timed  # type: ignore[method-assign]
        t0 = time.perf_counter()
        engine.run(periods)
        total += time.perf_counter() - t0
        ctrl.close()
    return total, update, transitions


def shared(children: int, periods: int) -> tuple[float, float, int]:
    """The same children and periods with one shared agent (lockstep rounds, one process)."""
    data = load_data(parse_run_spec(child_spec(0, periods)))
    runners = [
        ChildRunner(child_spec(k, periods), GROUPS, train_eval=True, data=data)
        for k in range(children)
    ]
    ctrl = {"type": "ppo", "groups": GROUPS, "reward": "gap", **PPO}
    agent = SharedAgent.from_controller_spec(
        ctrl, runners[0].bounds(), children=children, periods=periods
    )
    update = 0.0
    transitions = 0
    last: list[Any] = [None] * children
    t0 = time.perf_counter()
    for t in range(periods):
        for k, runner in enumerate(runners):
            rec = PeriodRecord.from_dict(runner.step(agent.act(k, t, last[k])))
            agent.observe(k, rec)
            last[k] = rec
        steps = agent.steps
        u = time.perf_counter()
        if agent.maybe_update() is not None:
            update += time.perf_counter() - u
            transitions += steps
    total = time.perf_counter() - t0
    agent.close()
    return total, update, transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in (1, 2, 4):
        ratios, shared_rate, per_rate, upd_s, upd_p = [], [], [], [], []
        for _ in range(args.repeats):
            tp, up, np_ = per_trial(n, args.periods)
            ts, us, ns = shared(n, args.periods)
            ratios.append(ts / tp)
            shared_rate.append(n * args.periods / ts)
            per_rate.append(n * args.periods / tp)
            if ns:
                upd_s.append(1000 * us / ns)
            if np_:
                upd_p.append(1000 * up / np_)
        rows.append((n, statistics.median(shared_rate), statistics.median(per_rate),
                     statistics.median(ratios), min(ratios), max(ratios),
                     statistics.median(upd_s) if upd_s else float("nan"),
                     statistics.median(upd_p) if upd_p else float("nan")))  # fmt: skip
    print(f"{args.periods} periods per child, {args.repeats} interleaved repeats, medians")
    print("children | shared periods/s | per-trial periods/s | shared/per-trial time "
          "(min-max) | update s per 1000 transitions shared / per-trial")  # fmt: skip
    for n, rs, rp, ratio, lo, hi, us, up in rows:
        print(f"{n} | {rs:.2f} | {rp:.2f} | {ratio:.3f} ({lo:.3f}-{hi:.3f}) | {us:.2f} / {up:.2f}")


if __name__ == "__main__":
    main()
