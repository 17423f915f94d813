"""compare at scale: a SQLite MLflow store of 2,000 trial runs × 100 periods.

Writes the store once (MLflow's client, the run tree and metric names of docs/MLFLOW.md: 5
methods × 20 seeds × 20 trials, ~1,080 metric points per trial; kept in ``--db`` and reused),
then, in interleaved rounds:

- *bulk*: ``load_experiment`` as compare runs it (three ``search_runs`` and the histories
  read in bulk, ``report/history.py``);
- *naive*: the same ``load_experiment`` with the histories read the old way, one
  ``get_metric_history`` call per run per metric;
- *compare*: the whole ``compare_experiment`` (bulk load, paired statistics, ranks, and every
  plot written as PNG, ``--out``), end to end.

Prints the medians and the naive / bulk ratio (rounds alternate their order).

    .venv/bin/python bench/compare_scale.py --trials 2000 --periods 100 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag

from raytune_periodic.protocol.mlflow_layout import (
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_METHOD,
    TAG_SEARCH,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
)
from raytune_periodic.records import STATUS_OK
from raytune_periodic.report import compare as compare_mod
from raytune_periodic.report.history import naive_histories
from raytune_periodic.report.output import compare_experiment
from raytune_periodic.tracking import summarize

PARENT = "mlflow.parentRunId"
INVOCATION = "bench-compare-scale"
METHODS = ("BL", "D", "PD", "PBT", "TPE")
BATCH = 1000  #: MLflow's limit of metrics per log_batch


def _records(periods: int, level: float, rng: Any) -> list[dict[str, float]]:
    recs = []
    for p in range(periods):
        val = level - 0.1 * math.exp(-p / 20) + rng.gauss(0, 0.01)
        rec = {"step": p, "period": p, "epoch": p / 5, "passes": 20.0 * (p + 1),
               "train_loss": 1 / (p + 1), "val_loss": 1.0, "train_f1": val + 0.05,
               "val_f1": val, "gap": 0.05, "period_seconds": 0.3 + rng.random() * 0.1,
               "value/dropout": rng.random() * 0.7}  # fmt: skip
        if p % 5 == 4:  # an epoch ends every 5 periods
            rec |= {"full_val_f1": val + 0.01, "test_f1": val, "full_val_loss": 1.0,
                    "test_loss": 1.0}  # fmt: skip
        recs.append(rec)
    return recs


def build_store(uri: str, experiment: str, trials: int, periods: int) -> None:
    import random

    rng = random.Random(0)
    client = mlflow.MlflowClient(tracking_uri=uri)
    eid = client.create_experiment(experiment)
    inv = client.create_run(eid, tags={TAG_KIND: KIND_INVOCATION, TAG_INVOCATION: INVOCATION})
    per_method = trials // len(METHODS)
    seeds = 20
    for i, name in enumerate(METHODS):
        tags = {PARENT: inv.info.run_id, TAG_KIND: KIND_METHOD, TAG_INVOCATION: INVOCATION,
                TAG_METHOD: name, TAG_SEARCH: "grid"}  # fmt: skip
        method = client.create_run(eid, tags=tags, run_name=name)
        for k in range(per_method):
            seed = k % seeds
            tags = {PARENT: method.info.run_id, TAG_KIND: KIND_TRIAL, TAG_INVOCATION: INVOCATION,
                    TAG_METHOD: name, TAG_TRIAL: f"{name}-{k:05d}", TAG_SEED: str(seed),
                    TAG_STATUS: STATUS_OK}  # fmt: skip
            run_id = client.create_run(eid, tags=tags, run_name=f"{name}-{k}").info.run_id
            recs = _records(periods, 0.75 + 0.01 * i + 0.005 * (seed % 3), rng)
            ts = int(time.time() * 1000)
            points = [Metric(key, float(v), ts, int(r["step"]))
                      for r in recs for key, v in r.items() if key != "step"]  # fmt: skip
            points += [Metric(k, v, ts, 0) for k, v in summarize(recs).items()]
            for start in range(0, len(points), BATCH):
                client.log_batch(run_id, metrics=points[start : start + BATCH])
            client.set_terminated(run_id)
        print(f"  wrote method {name}: {per_method} trials", flush=True)
    client.log_batch(inv.info.run_id, tags=[RunTag("bench", "compare_scale")])


def _naive_fetch(client: Any, wanted: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The old reader: one get_metric_history call per run per metric."""
    out: dict[str, dict[str, Any]] = {run_id: {} for run_id in wanted}
    for run_id, keys in wanted.items():
        for key in keys:
            ((_, points),) = naive_histories(client, key, [run_id])
            out[run_id][key] = points
    return out


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--periods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "rp_compare_scale"))
    parser.add_argument("--skip-naive", action="store_true", help="only bulk and compare")
    args = parser.parse_args()
    folder = Path(args.db)
    folder.mkdir(parents=True, exist_ok=True)
    experiment = f"compare-scale-{args.trials}x{args.periods}"
    uri = f"sqlite:///{folder / (experiment + '.db')}"
    if not (folder / (experiment + ".db")).exists():
        print(f"writing {args.trials} trial runs x {args.periods} periods to {uri} ...")
        t = _timed(lambda: build_store(uri, experiment, args.trials, args.periods))
        print(f"  written in {t:.0f} s")
    out = folder / "out"

    def naive() -> None:
        original = compare_mod.fetch_histories
        compare_mod.fetch_histories = _naive_fetch
        try:
            compare_mod.load_experiment(uri, experiment)
        finally:
            compare_mod.fetch_histories = original

    runs: dict[str, Callable[[], Any]] = {
        "bulk load": lambda: compare_mod.load_experiment(uri, experiment),
        "compare (md + plots)": lambda: compare_experiment(experiment, uri, out, "md"),
    }
    if not args.skip_naive:
        runs["naive load"] = naive
    compare_mod.load_experiment(uri, experiment)  # warm-up: the store's engine, the page cache
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate the order
            times[name].append(_timed(fn))
            print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{args.trials} trial runs x {args.periods} periods, medians of {args.rounds}:")
    for name, value in med.items():
        print(f"  {name:22s} {value:7.1f} s")
    if "naive load" in med:
        print(f"  naive / bulk load: {med['naive load'] / med['bulk load']:.1f}x")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
