"""What Ray Tune + MLflow cost around the period engine, measured side by side in one run.

(a) steady-state period time of one trial under Tune + the MLflow callback vs the same periods
    run bare in this process (goal <= 1.05x);
(b) whole-search wall time of 8 trials under Tune on 2 CPUs vs the same 8 trials run serially
    bare (goal <= 0.75x; 0.5x is the 2-CPU ideal);
(c) share of the search's wall time the driver spends in MLflow logging (goal <= 5%);
(d) PBT exploit cost (pause, checkpoint, clone, restore) as a share of a period (goal <= 10%).

Usage: python bench/tune_overhead.py [--periods 12] [--period-length 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raytune_periodic.training import build_engine
from raytune_periodic.training.spec import trial_spec
from raytune_periodic.tuning.methods.pbt import make_clip_explore
from raytune_periodic.tuning.mlflow_callback import MlflowCallback
from raytune_periodic.tuning.trainable import PeriodTrainable

BASE = {
    "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"batch_size": 64, "eval_every_epochs": 0},
    "controller": {"type": "constant"},
}


class Timeline(tune.Callback):
    """Collects (trial, wall time at step end, donor) for every result."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, Any]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.rows.append((trial.trial_id, result["rp_wall"], result.get("rp_donor_trial")))


class TimedMlflow(MlflowCallback):
    """The real callback, timing the driver thread's time inside it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seconds = 0.0

    def on_trial_start(self, *a, **k) -> None:
        t = time.perf_counter()
        super().on_trial_start(*a, **k)
        self.seconds += time.perf_counter() - t

    def on_trial_result(self, *a, **k) -> None:
        t = time.perf_counter()
        super().on_trial_result(*a, **k)
        self.seconds += time.perf_counter() - t

    def on_trial_complete(self, *a, **k) -> None:
        t = time.perf_counter()
        super().on_trial_complete(*a, **k)
        self.seconds += time.perf_counter() - t


def config(
    periods: int, period_length: int, values: Any, replicate: Any = 0, k: int = 1
) -> dict[str, Any]:
    spec = {**BASE, "train": {**BASE["train"], "period_length": period_length}}
    rp = {"spec": spec, "periods": periods, "seed": 0, "replicate": replicate, "threads": 1}
    rp["iteration_periods"] = k
    return {"rp": rp, "values": {"dropout": values}}


def bare_periods(cfg: dict[str, Any]) -> list[float]:
    torch.set_num_threads(1)
    engine = build_engine(trial_spec(cfg))
    return [engine.step_period().seconds for _ in range(cfg["rp"]["periods"])]


def run_tuner(cfg, store_dir, uri, *, samples=1, scheduler=None, name="b") -> tuple[float, Any]:
    from raytune_periodic.tracking import MlflowStore

    store = MlflowStore(uri, "bench")
    inv = store.start_invocation(name, {}, {})
    method = store.start_method(inv, name, name, "bench", {})
    mlflow_cb = TimedMlflow(uri, "bench", name, method, name, "bench")
    timeline = Timeline()
    tuner = tune.Tuner(
        tune.with_resources(PeriodTrainable, {"cpu": 1}),
        param_space=cfg,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=samples,
            reuse_actors=True,
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(store_dir),
            verbose=0,
            callbacks=[mlflow_cb, timeline],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    store.flush()
    return wall, (mlflow_cb, timeline)


def steady_gap(rows: list[tuple[str, float, Any]]) -> float:
    """Median time between consecutive results of the same trial (ignoring exploits)."""
    by_trial: dict[str, list[tuple[float, Any]]] = {}
    for tid, wall, donor in rows:
        by_trial.setdefault(tid, []).append((wall, donor))
    gaps = []
    for seq in by_trial.values():
        for (a, _), (b, donor) in zip(seq[1:], seq[2:], strict=False):
            if donor is None:
                gaps.append(b - a)
    return statistics.median(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=12)
    ap.add_argument("--period-length", type=int, default=150)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rp-bench-"))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    # (a) one trial, steady state, vs bare periods of the same spec
    cfg = config(args.periods, args.period_length, 0.3)
    wall_a, (_, tl_a) = run_tuner(cfg, out / "ray", uri, name="a")
    tune_period = steady_gap(tl_a.rows)
    bare = bare_periods(cfg)
    bare_period = statistics.median(bare[1:])
    print(
        f"(a) period under Tune+MLflow {tune_period:.3f} s vs bare {bare_period:.3f} s: "
        f"{tune_period / bare_period:.3f}x (goal <= 1.05x; one Tune iteration = 1 period)"
    )
    k = 4  # tune.iteration_periods: the per-iteration round trip is paid once per k periods
    _, (_, tl_k) = run_tuner(
        config(args.periods, args.period_length, 0.3, k=k), out / "ray", uri, name="a4"
    )
    tune_period_k = steady_gap(tl_k.rows) / k
    print(
        f"    with iteration_periods={k}: {tune_period_k:.3f} s per period: "
        f"{tune_period_k / bare_period:.3f}x"
    )

    # (b)+(c) 8 trials on 2 CPUs vs the same 8 trials serially bare
    cfg8 = config(args.periods, args.period_length, tune.grid_search([0.1 * i for i in range(8)]))
    wall_b, (cb_b, _) = run_tuner(cfg8, out / "ray", uri, name="b")
    serial = len(range(8)) * sum(bare)  # the same trial spec; dropout rate does not change cost
    print(
        f"(b) 8 trials under Tune {wall_b:.1f} s vs serial bare {serial:.1f} s: "
        f"{wall_b / serial:.3f}x (goal <= 0.75x, ideal 0.5x on 2 CPUs)"
    )
    print(
        f"(c) driver time in MLflow logging {cb_b.seconds:.2f} s of {wall_b:.1f} s: "
        f"{100 * cb_b.seconds / wall_b:.1f}% (goal <= 5%)"
    )

    # (d) PBT: the extra gap of an exploited trial's step over a normal step
    pbt = tune.schedulers.PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=3,
        synch=True,
        quantile_fraction=0.5,
        resample_probability=1.0,
        hyperparam_mutations={"values": {"dropout": tune.uniform(0.0, 0.8)}},
        custom_explore_fn=make_clip_explore({"dropout": (0.0, 0.8)}),
    )
    cfg_pbt = config(
        args.periods, args.period_length, tune.uniform(0.0, 0.8), tune.grid_search([0, 1])
    )
    _, (_, tl_d) = run_tuner(cfg_pbt, out / "ray", uri, scheduler=pbt, name="d")
    normal = steady_gap(tl_d.rows)
    last: dict[str, float] = {}
    exploit_gaps = []
    for tid, wall, donor in tl_d.rows:
        if donor is not None and tid in last:
            exploit_gaps.append(wall - last[tid])
        last[tid] = wall
    if exploit_gaps:
        extra = statistics.median(exploit_gaps) - normal
        print(
            f"(d) PBT exploit: step after exploit {statistics.median(exploit_gaps):.3f} s vs "
            f"normal {normal:.3f} s: extra {extra:.3f} s = {100 * extra / normal:.1f}% of a "
            f"period (goal <= 10%; {len(exploit_gaps)} exploits, asynchronous PBT)"
        )
    else:
        print("(d) no exploit happened; rerun with more periods")
    ray.shutdown()


if __name__ == "__main__":
    main()
