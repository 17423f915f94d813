"""Cost of the ``ppo`` controller, measured side by side in one run (interleaved periods).

(a) a period with the PPO controller vs the same period with the ``constant`` controller, at a
    200-pass period on the digits testbed (MLP 64-512-512-10, dropout on the head): the PPO side
    pays the decision (observation + RLlib module forward) every period and a PPO update every
    ``train_batch_size`` periods. Goal: mean ratio <= 1.10x (the mean includes the updates).
(b) the decision latency alone: ``decide()`` as called by the engine (median, p95; the periods
    that run an update are reported separately), and a bare ``act()`` loop. Goal: < 5 ms median.

Usage: python bench/ppo_overhead.py [--periods 64] [--period-length 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from raytune_periodic.records import PeriodState
from raytune_periodic.rl.controller import PPOController
from raytune_periodic.training import build_engine

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"batch_size": 64, "seed": 0},
}


class TimedPPO(PPOController):
    """Records the wall time of each ``decide`` and whether it ran a PPO update."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.decisions: list[tuple[float, bool]] = []

    def decide(self, state: PeriodState) -> dict[str, float]:
        updates = self.agent.updates if self.agent else 0
        start = time.perf_counter()
        values = super().decide(state)
        elapsed = time.perf_counter() - start
        self.decisions.append((elapsed, bool(self.agent and self.agent.updates != updates)))
        return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=64, help="timed periods per controller")
    ap.add_argument("--period-length", type=int, default=200)
    ap.add_argument("--train-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = {**SPEC["train"], "period_length": args.period_length, "periods": args.periods + 4}
    spec = {**SPEC, "train": train}
    const = build_engine({**spec, "controller": {"type": "constant", "values": {"dropout": 0.35}}})
    ppo_ctrl = TimedPPO(
        groups={"dropout": [0.0, 0.7]},
        train_batch_size=args.train_batch_size,
        minibatch_size=min(16, args.train_batch_size),
    )
    ppo = build_engine(spec, controller=ppo_ctrl)
    for engine in (const, ppo):  # warm-up
        engine.run(2)
    ppo_ctrl.decisions.clear()
    times: dict[str, list[float]] = {"constant": [], "ppo": []}
    for _ in range(args.periods):  # interleaved, so machine load drift hits both
        for name, engine in (("constant", const), ("ppo", ppo)):
            start = time.perf_counter()
            engine.step_period()
            times[name].append(time.perf_counter() - start)

    mean_c, mean_p = statistics.fmean(times["constant"]), statistics.fmean(times["ppo"])
    med_c, med_p = statistics.median(times["constant"]), statistics.median(times["ppo"])
    plain = [t for t, upd in ppo_ctrl.decisions if not upd]
    with_update = [t for t, upd in ppo_ctrl.decisions if upd]
    assert ppo_ctrl.mdp is not None
    obs = np.random.default_rng(0).uniform(0, 1, (1000, ppo_ctrl.mdp.obs_dim)).astype(np.float32)
    act = []
    for o in obs:
        start = time.perf_counter()
        ppo_ctrl.act(o)
        act.append(time.perf_counter() - start)

    ms = 1e3
    print(f"torch threads {args.threads}; {args.periods} periods x {args.period_length} passes;")
    print(f"ppo learns every {args.train_batch_size} periods ({len(with_update)} updates timed)")
    print(f"{'':28s}{'constant':>12s}{'ppo':>12s}{'ratio':>9s}")
    ratio = mean_p / mean_c
    print(f"{'period, mean (s)':28s}{mean_c:12.4f}{mean_p:12.4f}{ratio:8.3f}x  goal <= 1.10x")
    print(f"{'period, median (s)':28s}{med_c:12.4f}{med_p:12.4f}{med_p / med_c:8.3f}x")
    print(
        f"decide() median {statistics.median(plain) * ms:.3f} ms "
        f"(p95 {np.percentile(plain, 95) * ms:.3f} ms) over {len(plain)} periods  goal < 5 ms"
    )
    if with_update:
        print(f"decide() with a PPO update: mean {statistics.fmean(with_update) * ms:.1f} ms")
    # The same overhead from its parts (robust to load noise on a shared machine).
    per_period = statistics.median(plain) + sum(with_update) / len(ppo_ctrl.decisions)
    print(f"overhead from parts: +{per_period * ms:.2f} ms/period = {per_period / mean_c:.2%}")
    print(f"act() alone: median {statistics.median(act) * ms:.3f} ms over {len(act)} calls")
    ppo_ctrl.close()


if __name__ == "__main__":
    main()
