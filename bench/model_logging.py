"""What logging the trials' models to MLflow costs a search, measured side by side in one run.

The same search (the quickstart's MLP 64-256-256-10 on noisy digits, one method, ``--trials``
trials on 2 CPUs, one Ray session for all runs) with ``mlflow.log_models: none`` (the spec only),
``selected`` (the default) and ``all``, ``--rounds`` rounds with the variants interleaved (order
rotating); prints the median wall time of each and its ratio to ``none`` (goal: ``selected`` <=
1.05x), and the model artifacts' size per trial that has them.

``--fresh``: every search is its own ``raytune-periodic run`` process (Ray started and stopped
each time, wall time of the whole command), so each pays the once-per-process cost of the first
model export (torch.export / mlflow.pytorch imports) as a user's command does.

Usage: python bench/model_logging.py [--rounds 3] [--trials 4] [--periods 30] [--fresh]
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

from raytune_periodic.config import validate_config
from raytune_periodic.tuning.runner import run_experiment

MODES = ("none", "selected", "all")


def config(mode: str, trials: int, periods: int) -> dict[str, Any]:
    return {
        "name": f"bench-models-{mode}",
        "seeds": [0],
        "budget": {"periods": periods, "trials": trials},
        "base": {
            "dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
            "model": {"name": "mlp", "hidden": [256, 256]},
            "regularizers": [{"kind": "dropout", "where": "head"}],
            "train": {"period_length": 20, "batch_size": 32},
        },
        "methods": {
            "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}}
        },
        "tune": {"verbose": 0, "num_cpus": 2},
        "mlflow": {"log_models": mode},
    }


def one(mode: str, args: argparse.Namespace, root: Path, i: int) -> tuple[float, list[int]]:
    """Wall time of one search and the bytes of model artifacts of each trial that has them."""
    cfg = validate_config(config(mode, args.trials, args.periods))
    tmp = root / f"{mode}-{i}"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    start = time.perf_counter()
    if args.fresh:  # the whole command in a new process (JSON is YAML)
        tmp.mkdir(parents=True)
        (tmp / "exp.yaml").write_text(json.dumps(config(mode, args.trials, args.periods)))
        main = "import sys; from raytune_periodic.cli import main; sys.exit(main())"
        cli = [sys.executable, "-c", main, "run", str(tmp / "exp.yaml"), "-q"]
        cli += ["--mlflow-uri", uri, "--storage-path", str(tmp / "ray")]
        subprocess.run(cli, check=True, cwd=tmp, env={**os.environ, "RAY_ADDRESS": ""})
    else:
        run_experiment(cfg, storage_path=str(tmp / "ray"), mlflow_uri=uri, progress="none")
    wall = time.perf_counter() - start
    sizes = []
    for model_dir in (tmp / "mlartifacts").rglob("artifacts/model"):
        sizes.append(sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()))
    return wall, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--periods", type=int, default=30)
    ap.add_argument("--fresh", action="store_true", help="each search: its own CLI process")
    args = ap.parse_args()
    if not args.fresh:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    sizes: dict[str, list[int]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        one("none", args, Path(tmp), -1)  # warm-up: worker processes, imports
        for r in range(args.rounds):
            for mode in MODES[r % 3 :] + MODES[: r % 3]:
                wall, size = one(mode, args, Path(tmp), r)
                walls[mode].append(wall)
                sizes[mode] += size
    if not args.fresh:
        ray.shutdown()
    base = statistics.median(walls["none"])
    how = "a CLI process per search" if args.fresh else "one Ray session"
    print(f"{args.trials} trials x {args.periods} periods, {args.rounds} rounds (medians), {how}")
    for mode in MODES:
        med = statistics.median(walls[mode])
        per = f"{statistics.median(sizes[mode]) / 1e6:.2f} MB" if sizes[mode] else "-"
        logged = len(sizes[mode]) / args.rounds
        print(
            f"log_models {mode:8s}: {med:6.1f} s  x{med / base:.3f}  "
            f"trials with models/search {logged:.1f}, model artifacts per such trial {per}"
        )


if __name__ == "__main__":
    main()
