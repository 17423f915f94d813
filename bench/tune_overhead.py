"""What Ray Tune + MLflow cost around the period engine, measured side by side in one run.

Every part runs ``--rounds`` rounds, the variants interleaved (order alternating); medians.

(a) steady-state time per period of one trial under Tune + the MLflow callback with the default
    config (``iteration_periods: auto``: Tune iterations of ~1 s) vs the same periods run bare in
    this process (goal <= 1.05x); also 1 period per iteration (the old default);
(b) whole-search wall time of 8 trials under Tune on 2 CPUs (default config, actors reused) vs
    the same 8 trials run serially bare in a fresh process, beside them in each round (goal
    <= 0.65x; 0.5x is the 2-CPU ideal);
(c) share of the search's wall time the driver spends in MLflow logging (goal <= 5%);
(d) synchronous PBT, a population of 2 on 2 CPUs: ours (``SyncSafePBT`` + ``KeepPausedActors``,
    period-based intervals, auto batching) vs stock Ray Tune PBT (``PopulationBasedTraining``,
    Tune's default searcher, 1 period per iteration) on the same trials: the extra time of a
    trial's first step after an exploit over a normal step of as many periods (goal <= 10% of a
    period), and the whole search's wall time.

Usage: python bench/tune_overhead.py [--periods 12] [--period-length 150] [--rounds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raytune_periodic.tracking.models import warm_up_in_background
from raytune_periodic.training import build_engine
from raytune_periodic.training.process import prepare_process
from raytune_periodic.training.spec import trial_spec
from raytune_periodic.tuning.methods.pbt import make_clip_explore
from raytune_periodic.tuning.mlflow_callback import MlflowCallback
from raytune_periodic.tuning.pbt_sync import KeepPausedActors, SyncSafePBT
from raytune_periodic.tuning.trainable import PeriodTrainable
from raytune_periodic.tuning.tuners import file_loggers

BASE = {
    "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "train": {"batch_size": 64, "eval_every_epochs": 0},
    "controller": {"type": "constant"},
}
INTERVAL = 3  #: (d) perturbation interval, periods


class Timeline(tune.Callback):
    """(trial, wall time at step end, periods in the step, donor, pid) for every result, and
    per step the time between results not spent inside periods (Tune's round trip)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int, Any, int]] = []
        #: (trial, wall) of a post-exploit result -> (when its checkpoint load began, seconds)
        self.restores: dict[tuple[str, float], tuple[float, float]] = {}
        self.round_trips: list[float] = []
        self.inside: list[float] = []  #: each period's own time (``period_seconds``)
        self._last: dict[str, float] = {}
        #: (trial, periods done) -> wall time of that result (the barrier's arrivals, PBT)
        self.at: dict[tuple[str, int], float] = {}
        self.in_actor: list[int] = []  #: per exploit: 1 if done in the running actor
        self.start = 0.0  #: wall clock when ``fit()`` was called (``run_tuner``)
        #: worker pid -> wall clock its first period began (start-up: process, imports, setup)
        self.first_period: dict[int, float] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        records = json.loads(result["rp_records"])
        donor = result.get("rp_donor_trial")
        tid, wall = trial.trial_id, result["rp_wall"]
        self.rows.append((tid, wall, len(records), donor, result["pid"]))
        self.at[(tid, int(result["rp_periods"]))] = wall
        if donor is not None:
            self.in_actor.append(int(result.get("rp_exploit_in_actor", 0)))
        if donor is not None and "rp_restore_start" in result:
            self.restores[(tid, wall)] = (result["rp_restore_start"], result["rp_restore_seconds"])
        self.inside += [r["period_seconds"] for r in records]
        inside = sum(r["period_seconds"] for r in records)
        pid = result["pid"]
        self.first_period[pid] = min(self.first_period.get(pid, wall), wall - inside)
        if tid in self._last and donor is None:
            self.round_trips.append(wall - self._last[tid] - inside)
        self._last[tid] = wall


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
    periods: int, period_length: int, values: Any, replicate: Any = 0, k: Any = "auto", **rp: Any
) -> dict[str, Any]:
    spec = {**BASE, "train": {**BASE["train"], "period_length": period_length}}
    rp = {"spec": spec, "periods": periods, "seed": 0, "replicate": replicate, "threads": 1, **rp}
    rp["iteration_periods"] = k
    return {"rp": rp, "values": {"dropout": values}}


def bare_periods(cfg: dict[str, Any]) -> list[float]:
    prepare_process(1)  # what a trial process does: one thread, freed memory kept (malloc)
    engine = build_engine(trial_spec(cfg))
    return [engine.step_period().seconds for _ in range(cfg["rp"]["periods"])]


@ray.remote(num_cpus=1)
class BareActor:
    """The bare loop inside a plain Ray worker process (no Tune, no MLflow)."""

    def run(self, cfg: dict[str, Any]) -> list[float]:
        return bare_periods(cfg)


def run_tuner(cfg, store_dir, uri, *, samples=1, scheduler=None, search_alg=None, name="b"):
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
            search_alg=search_alg,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(store_dir),
            verbose=0,
            callbacks=[mlflow_cb, timeline, *file_loggers()],  # the CLI's Tune loggers
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    timeline.start = time.time()
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    store.flush()
    return wall, (mlflow_cb, timeline)


def per_period(rows: list[tuple[str, float, int, Any, int]]) -> float:
    """Median over steady steps (each trial's third result on, no exploit) of the time between
    consecutive results of the same trial divided by the step's periods."""
    by_trial: dict[str, list[tuple[float, int, Any]]] = {}
    for tid, wall, n, donor, _ in rows:
        by_trial.setdefault(tid, []).append((wall, n, donor))
    gaps = []
    for seq in by_trial.values():
        for (a, _, _), (b, n, donor) in zip(seq[1:], seq[2:], strict=False):
            if donor is None:
                gaps.append((b - a) / n)
    return statistics.median(gaps)


def exploit_extra(rows: list[tuple[str, float, int, Any, int]]) -> list[float]:
    """Per exploit: the post-exploit step's gap minus as many normal periods."""
    normal = per_period(rows)
    last: dict[str, float] = {}
    out = []
    for tid, wall, n, donor, _ in rows:
        if donor is not None and tid in last:
            out.append(wall - last[tid] - n * normal)
        last[tid] = wall
    return out


def exploit_parts(tl: Timeline) -> list[tuple[float, float, float, float]]:
    """Per exploit: (the clone's wait at the barrier for the last member to arrive — synchronous
    PBT's own wait, which every member pays; from that arrival to the start of the clone's
    checkpoint load — Tune's pause/save/exploit and hand-over, or the in-actor call; the load
    in the trial; the rest of the step beyond as many normal periods)."""
    normal = per_period(tl.rows)
    last: dict[str, float] = {}
    out = []
    for tid, wall, n, donor, _ in tl.rows:
        hit = tl.restores.get((tid, wall))
        if donor is not None and tid in last and hit is not None:
            began, secs = hit
            own = [p for (t, p), w in tl.at.items() if t == tid and w == last[tid]]
            arrivals = [w for (_, p), w in tl.at.items() if own and p == own[0]]
            barrier = max([last[tid], *arrivals])
            out.append(
                (barrier - last[tid], began - barrier, secs, wall - began - secs - n * normal)
            )
        last[tid] = wall
    return out


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f}x ({', '.join(f'{x:.3f}' for x in xs)})"


def part_a(args, out: Path, uri: str) -> list[float]:
    """(a): ratios auto / bare and 1-per-iteration / bare per round; returns the bare periods."""
    auto, one, bare_all, trips, sizes, inside, in_actor = [], [], [], [], [], [], []
    for r in range(args.rounds):
        order = ["bare", "auto", "one", "actor"]
        order = order if r % 2 == 0 else order[::-1]
        got: dict[str, float] = {}
        for what in order:
            if what == "bare":
                bare = bare_periods(config(args.periods, args.period_length, 0.3))
                bare_all += bare
                got[what] = statistics.median(bare[1:])
            elif what == "actor":
                actor = BareActor.remote()
                cfg = config(args.periods, args.period_length, 0.3)
                got[what] = statistics.median(ray.get(actor.run.remote(cfg))[1:])
                ray.kill(actor)
            else:
                k = "auto" if what == "auto" else 1
                cfg = config(args.periods, args.period_length, 0.3, k=k)
                _, (_, tl) = run_tuner(cfg, out / "ray", uri, name=f"a-{what}-{r}")
                got[what] = per_period(tl.rows)
                if what == "auto":
                    sizes += [n for _, _, n, _, _ in tl.rows]
                    got["inside"] = statistics.median(tl.inside[1:])
                else:
                    trips += tl.round_trips
        auto.append(got["auto"] / got["bare"])
        inside.append(got["inside"] / got["bare"])
        in_actor.append(got["actor"] / got["bare"])
        one.append(got["one"] / got["bare"])
    print(f"(a) period under Tune+MLflow vs bare, default (auto): {_med(auto)} (goal <= 1.05x)")
    print(
        f"    periods per iteration with auto: median {statistics.median(sizes)} "
        f"(bare period {statistics.median(bare_all):.3f} s)"
    )
    print(f"    the period's own time inside the Tune worker vs bare: {_med(inside)}")
    print(f"    the bare loop in a plain Ray actor (no Tune, no MLflow) vs bare: {_med(in_actor)}")
    print(f"    1 period per Tune iteration: {_med(one)}")
    print(
        f"    Tune's round trip per iteration (gap between results minus the periods' own "
        f"time, 1 period per iteration): median {statistics.median(trips):.3f} s"
    )
    return bare_all


def serial_bare(periods: int, period_length: int, rates: list[float]) -> float:
    """The 8 trials of (b) one after another, bare, in a fresh process of their own (no Ray,
    no MLflow, none of the driver's threads or heap): each engine built and run for its
    periods, first periods included; wall seconds, measured inside that process after one
    untimed warm-up period (its first optimizer step imports ``torch._dynamo``, ~1 s, which
    the reference leaves out as it leaves out importing torch: the stricter comparison)."""
    code = (
        "import json, sys, time; import tune_overhead as T; "
        "from raytune_periodic.training.process import prepare_process; prepare_process(1); "
        "a = json.loads(sys.argv[1])\n"
        "T.build_engine(T.trial_spec(T.config(1, a['length'], 0.0))).run()\n"
        "start = time.perf_counter()\n"
        "for rate in a['rates']:\n"
        "    T.build_engine(T.trial_spec(T.config(a['periods'], a['length'], rate))).run()\n"
        "print(time.perf_counter() - start)"
    )
    arg = json.dumps({"periods": periods, "length": period_length, "rates": rates})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code, arg], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def part_bc(args, out: Path, uri: str) -> None:
    """(b) with the default ``mlflow.log_models: selected`` (a trial that is the best so far is
    logged as MLflow models at its end, on the driver's writer thread) and with ``none``.

    Each round runs the serial bare reference itself, beside its two searches (first in even
    rounds, last in odd ones), in a fresh process: a reference measured once per run moved (b)
    by up to +-8 % on this shared machine (its period varied 0.41-0.47 s within one session),
    and one run in this driver slowed as the driver filled with Ray's and MLflow's state
    (39 s before the first search, 43-44 s after)."""
    rates = [0.1 * i for i in range(8)]
    grid = tune.grid_search(rates)
    ratios: dict[str, list[float]] = {"selected": [], "none": []}
    serials, shares, startups = [], [], []
    walls_all: dict[str, list[float]] = {"selected": [], "none": []}
    for r in range(args.rounds):
        order = ["serial", "selected", "none"] if r % 2 == 0 else ["none", "selected", "serial"]
        walls: dict[str, float] = {}
        for what in order:
            if what == "serial":
                walls[what] = serial_bare(args.periods, args.period_length, rates)
                continue
            cfg8 = config(args.periods, args.period_length, grid, log_models=what)
            walls[what], (cb, tl) = run_tuner(cfg8, out / "ray", uri, name=f"b-{what}-{r}")
            walls_all[what].append(walls[what])
            startups.append(max(tl.first_period.values()) - tl.start)
            if what == "selected":
                shares.append(100 * cb.seconds / walls[what])
        serials.append(walls["serial"])
        for mode in ratios:
            ratios[mode].append(walls[mode] / walls["serial"])
    print(f"    serial bare runs of the 8 trials: {', '.join(f'{x:.1f}' for x in serials)} s")
    for mode, xs in walls_all.items():
        print(f"    searches, log_models {mode}: {', '.join(f'{x:.1f}' for x in xs)} s")
    print(
        f"    start-up: the later worker's first period began {statistics.median(startups):.2f} s "
        f"after fit() (median; {min(startups):.2f}-{max(startups):.2f})"
    )
    for mode, xs in ratios.items():
        print(
            f"(b) 8 trials under Tune on 2 CPUs vs the same 8 serially bare, "
            f"mlflow.log_models: {mode}: {_med(xs)} (goal <= 0.65x, ideal 0.5x)"
        )
    print(
        f"(c) driver time in MLflow logging: {statistics.median(shares):.1f}% of the search "
        f"({', '.join(f'{x:.1f}' for x in shares)}) (goal <= 5%)"
    )


def _pbt(ours: bool) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {
        "perturbation_interval": INTERVAL,
        "synch": True,
        "quantile_fraction": 0.5,
        "resample_probability": 1.0,
        "hyperparam_mutations": {"values": {"dropout": tune.uniform(0.0, 0.8)}},
        "custom_explore_fn": make_clip_explore({"dropout": (0.0, 0.8)}),
    }
    if ours:
        sched = SyncSafePBT(time_attr="rp_periods", **kwargs)
        return sched, KeepPausedActors(sched)
    return tune.schedulers.PopulationBasedTraining(time_attr="training_iteration", **kwargs), None


def part_d(args, out: Path, uri: str) -> None:
    walls: dict[str, list[float]] = {"ours": [], "stock": []}
    extras: dict[str, list[float]] = {"ours": [], "stock": []}
    pids: dict[str, list[int]] = {"ours": [], "stock": []}
    normal: dict[str, list[float]] = {"ours": [], "stock": []}
    parts: dict[str, list[tuple[float, float, float, float]]] = {"ours": [], "stock": []}
    in_actor: dict[str, list[int]] = {"ours": [], "stock": []}
    for r in range(args.rounds):
        for what in ["ours", "stock"] if r % 2 == 0 else ["stock", "ours"]:
            ours = what == "ours"
            cfg = config(
                args.periods, args.period_length, tune.uniform(0.0, 0.8),
                tune.grid_search([0, 1]), k="auto" if ours else 1,
                **({"align": INTERVAL} if ours else {}),
            )  # fmt: skip
            sched, search = _pbt(ours)
            wall, (_, tl) = run_tuner(
                cfg, out / "ray", uri, scheduler=sched, search_alg=search, name=f"d-{what}-{r}"
            )
            walls[what].append(wall)
            extras[what] += exploit_extra(tl.rows)
            parts[what] += exploit_parts(tl)
            in_actor[what] += tl.in_actor
            normal[what].append(per_period(tl.rows))
            pids[what].append(len({row[4] for row in tl.rows}))
    for what in ("ours", "stock"):
        ex, per = extras[what], statistics.median(normal[what])
        if ex:
            med = statistics.median(ex)
            print(
                f"(d) {what}: extra time of the step after an exploit {med:+.3f} s = "
                f"{100 * med / per:.1f}% of a period ({per:.3f} s; {len(ex)} exploits; "
                f"worker processes per search {pids[what]}) (goal <= 10%)"
            )
            if parts[what]:
                wait, hand, load, rest = (
                    statistics.median(x) for x in zip(*parts[what], strict=True)
                )
                cost = [h + ld + r for _, h, ld, r in parts[what]]
                print(
                    f"    of which: waiting at the barrier for the last member {wait:+.3f} s "
                    f"(synchronous PBT, every member); last arrival -> the clone's checkpoint "
                    f"load starts {hand:+.3f} s; the load {load:.3f} s; rest of the step "
                    f"{rest:+.3f} s"
                )
                med = statistics.median(cost)
                print(
                    f"    the exploit without the barrier wait: {med:+.3f} s = "
                    f"{100 * med / per:.1f}% of a period (goal <= 10%); in the running actor: "
                    f"{sum(in_actor[what])} of {len(in_actor[what])} exploits"
                )
        else:
            print(f"(d) {what}: no exploit happened; rerun with more periods")
    ratio = [o / s for o, s in zip(walls["ours"], walls["stock"], strict=True)]
    print(
        f"(d) whole PBT search, ours vs stock Ray Tune PBT: {_med(ratio)} "
        f"(walls ours {[round(w, 1) for w in walls['ours']]}, "
        f"stock {[round(w, 1) for w in walls['stock']]} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=12)
    ap.add_argument("--period-length", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="abd", help="which parts to run (a, b (with c), d)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rp-bench-"))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    # Ray runs its workers at nice 15; on a machine shared with other jobs the trial would then
    # lose the CPU to them while the bare side (nice 0) does not. Same priority for both sides.
    os.environ.setdefault("RAY_worker_niceness", "0")
    warm_up_in_background()  # as the CLI does while Ray starts (tuning/runner.py)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    if "a" in args.parts:
        part_a(args, out, uri)
    if "b" in args.parts:
        part_bc(args, out, uri)
    if "d" in args.parts:
        part_d(args, out, uri)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
