"""Side-by-side costs of the core, measured in one run (ratios of medians, interleaved).

(a) train step of an MLP with PeriodicDropout vs the same MLP with nn.Dropout (goal <= 1.02x);
(b) one engine period vs a bare hand-written loop doing the same passes on the same data
    (goal <= 1.05x): the engine adds the controller decision, in-place value setting, on-device
    loss/F1 accumulation and the end-of-period validation mini-batches.

Times are this thread's CPU time by default (``--clock cpu``): on a shared 2-core machine wall
time mostly measures the neighbours; ``--clock wall`` is there for a quiet machine.

Usage: python bench/regularizers.py [--repeats 15] [--period-length 200] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from raytune_periodic.regularizers import PeriodicDropout
from raytune_periodic.training import build_engine

CLOCK = time.thread_time


def mlp(drop: nn.Module, width: int = 512) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        drop,
        nn.Linear(width, 10),
    )


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> float:
    model.train()
    start = CLOCK()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (CLOCK() - start) / steps


def bench_dropout(repeats: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    models = {"periodic": mlp(PeriodicDropout(0.5)), "nn.Dropout": mlp(nn.Dropout(0.5))}
    models["nn.Dropout"].load_state_dict(models["periodic"].state_dict())
    opts = {k: torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for k in models:  # warm-up
        time_steps(models[k], opts[k], x, y, 20)
    for i in range(repeats):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for k in order:  # interleaved, alternating order, so drift hits both alike
            times[k].append(time_steps(models[k], opts[k], x, y, steps))
    return statistics.median(times["periodic"]), statistics.median(times["nn.Dropout"])


SPEC = {
    "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "controller": {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}},
    "train": {"batch_size": 64, "periods": 10_000, "seed": 0, "eval_every_epochs": 0},
}


def bare_period(model, opt, x_all, y_all, gen: torch.Generator, passes: int, bs: int) -> None:
    """What a researcher would write by hand: shuffled mini-batches, forward, backward, step."""
    model.train()
    n = len(y_all)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(passes):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bench_engine(repeats: int, period_length: int) -> tuple[float, float]:
    engine = build_engine({**SPEC, "train": {**SPEC["train"], "period_length": period_length}})
    bare = build_engine({**SPEC, "controller": {"type": "constant", "values": {"dropout": 0.3}}})
    bare.regularizers.set_values({"dropout": 0.3})  # the bare loop never asks a controller
    model, opt = bare.model, bare.optimizer
    x_all, y_all = bare.train_batches.x, bare.train_batches.y
    gen = torch.Generator().manual_seed(0)
    engine.step_period()  # warm-up both
    bare_period(model, opt, x_all, y_all, gen, period_length, 64)
    t_engine, t_bare = [], []

    def run_engine() -> None:
        start = CLOCK()
        engine.step_period()
        t_engine.append(CLOCK() - start)

    def run_bare() -> None:
        start = CLOCK()
        bare_period(model, opt, x_all, y_all, gen, period_length, 64)
        t_bare.append(CLOCK() - start)

    for i in range(repeats):  # alternating order, so drift and caches hit both alike
        for run in (run_engine, run_bare) if i % 2 == 0 else (run_bare, run_engine):
            run()
    return statistics.median(t_engine), statistics.median(t_bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100, help="train steps per dropout sample")
    ap.add_argument("--period-length", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    p, d = bench_dropout(args.repeats, args.steps)
    print(f"clock: {args.clock} time; medians of {args.repeats} interleaved samples")
    print(f"(a) train step, MLP 64-512-512-10, batch 64, {args.threads} thread(s)")
    print(
        f"    PeriodicDropout {p * 1e3:.3f} ms   nn.Dropout {d * 1e3:.3f} ms   "
        f"ratio {p / d:.3f}x (goal <= 1.02x)"
    )
    e, b = bench_engine(args.repeats, args.period_length)
    print(f"(b) period of {args.period_length} passes, noisy digits (500 train), same model")
    print(
        f"    engine {e * 1e3:.1f} ms   bare loop {b * 1e3:.1f} ms   "
        f"ratio {e / b:.3f}x (goal <= 1.05x)"
    )


if __name__ == "__main__":
    main()
