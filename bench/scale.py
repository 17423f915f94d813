"""Trials per minute and Tune/MLflow overhead on a local multi-node Ray cluster.

Starts ``launch/local_cluster.sh`` (a head + N worker raylets on this machine, token auth) and,
unless ``--mlflow-uri`` is given, a real MLflow server on 127.0.0.1 (``launch/mlflow_server.sh``)
on SQLite (``--backend sqlite``) or on the cluster's stack, PostgreSQL + S3 (``--backend
postgres``: ``mlflow_server.sh --postgres-s3``, PostgreSQL from the ``pgserver`` wheel or
Debian's binaries, moto's S3); then runs one method with 16 ... 256 short trials through the
CLI (``run --address``) and
prints, per count: the CLI's wall time, the Tune span (first trial step started to last trial
step ended, from the trials' own timestamps: no CLI/Ray start-up), trials per minute over that
span, the mean trial's own training time (Tune's ``time_total_s``), the overhead per trial
(``span × slots / trials − training``: scheduling, actor reuse, checkpoints, the driver-side
MLflow writes) and how many MLflow trial runs hold every period exactly once. The cost per trial
should stay flat as the count grows.
Everything it starts is stopped by PID.

    .venv/bin/python bench/scale.py --workers 2 --counts 16 64 256 --backend postgres
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
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str, trials: int, periods: int) -> dict[str, Any]:
    return {
        "name": name,
        "seeds": [0],
        "budget": {"periods": periods, "trials": trials},
        "base": {
            "dataset": {"name": "digits", "train_size": 200},
            "model": {"name": "mlp", "hidden": [64]},
            "regularizers": [{"kind": "dropout", "where": "head"}],
            "train": {"period_length": 10, "batch_size": 32, "val_batches": 1},
        },
        "methods": {
            "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}}
        },
        "tune": {"checkpoint_every": 5, "verbose": 0},
    }


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.2)


def _mlflow_trials(uri: str, experiment: str, periods: int) -> int:
    """How many trial runs of ``experiment`` hold every period exactly once."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'", max_results=5000)
    ok = 0
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")]
        ok += steps == list(range(periods))
    return ok


def _start_server(backend: str, port: int, work: Path, env: dict[str, str]) -> Any:
    """``launch/mlflow_server.sh`` on SQLite or on PostgreSQL + S3 (moto), its own session."""
    script = str(ROOT / "launch" / "mlflow_server.sh")
    args = [script, "--port", str(port), "--data-dir", str(work / "srv")]
    if backend == "postgres":
        sys.path.insert(0, str(ROOT / "tests"))
        from mlflow_server import postgres_bin_dir, runnable_postgres

        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL binaries (pip install pgserver, or Debian's)")
        env = {**env, "PG_BIN": str(runnable_postgres(bin_dir, work / "install"))}
        args += ["--postgres-s3", "--s3-port", str(port + 1)]
    else:
        args += ["--backend-store-uri", f"sqlite:///{work}/mlflow.db",
                 "--artifacts-destination", str(work / "artifacts")]  # fmt: skip
    log = (work / "server.log").open("ab")
    return subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="worker raylets (1 CPU each)")
    ap.add_argument("--counts", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the counts (medians)")
    ap.add_argument("--periods", type=int, default=5)
    ap.add_argument("--port", type=int, default=6490, help="head GCS port")
    ap.add_argument("--mlflow-uri", help="use this tracking server instead of starting one")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args(argv)

    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    work = Path(tempfile.mkdtemp(prefix="rps-", dir="/tmp"))
    work.chmod(0o755)  # under root, PostgreSQL runs as nobody and needs to reach its folder
    script = str(ROOT / "launch" / "local_cluster.sh")
    cluster = ["--dir", str(work / "c"), "--port", str(args.port),
               "--dashboard-port", str(args.port + 120)]  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    rows_out: list[tuple[Any, ...]] = []
    try:
        uri = args.mlflow_uri
        if uri is None:
            port = args.port + 200
            uri = f"http://127.0.0.1:{port}"
            server = _start_server(args.backend, port, work, env)
            _wait_healthy(uri, server, timeout=180)
        subprocess.run(
            [script, "start", "--workers", str(args.workers), "--cpus", "1", "--head-cpus", "0",
             *cluster], env=env, check=True, timeout=300,
        )  # fmt: skip
        for n, rep in [(n, r) for r in range(args.repeats) for n in args.counts]:
            name = f"scale{n}-{rep}"
            cfg = work / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(_config(name, n, args.periods)))
            began = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "raytune_periodic.cli", "run", str(cfg), "--address",
                 f"127.0.0.1:{args.port}", "--mlflow-uri", uri, "--storage-path",
                 str(work / "ray")],
                env=env, check=True, cwd=work, stdout=subprocess.DEVNULL, timeout=3600,
            )  # fmt: skip
            wall = time.monotonic() - began
            train, starts, ends = [], [], []
            for result in (work / "ray" / name).glob("**/result.json"):
                rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
                train.append(float(rows[-1]["time_total_s"]))
                starts.append(rows[0]["rp_wall"] - rows[0]["time_this_iter_s"])
                ends.append(rows[-1]["rp_wall"])
            # the Tune span: first trial step started -> last trial step ended (no CLI start-up)
            span = max(ends) - min(starts)
            mean_train = sum(train) / max(1, len(train))
            per_trial = span * args.workers / n
            logged = _mlflow_trials(uri, name, args.periods)
            overhead = per_trial - mean_train
            rows_out.append((n, wall, span, 60 * n / span, mean_train, overhead, logged))
            print(f"{n} trials (round {rep + 1}): span {span:.1f} s", flush=True)
    finally:
        subprocess.run([script, "stop", *cluster], env=env, timeout=120, check=False)
        if server is not None and server.poll() is None:
            if args.backend == "postgres":  # the script stops MLflow, moto, PostgreSQL itself
                os.kill(server.pid, 15)
            else:
                os.killpg(server.pid, 15)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
    print(
        f"\n{args.workers} worker raylets x 1 CPU, {args.periods} periods x 10 steps per trial, "
        f"MLflow server on {args.backend if args.mlflow_uri is None else args.mlflow_uri}"
    )
    print(
        "| trials | CLI wall s | Tune span s | trials/min | train s/trial | overhead s/trial "
        "| MLflow trial runs with every period once |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.counts:
        runs = [r for r in rows_out if r[0] == n]
        med = [statistics.median(r[i] for r in runs) for i in range(1, 6)]
        logged = min(r[6] for r in runs)
        wall, span, tpm, tr, ov = med
        print(f"| {n} | {wall:.1f} | {span:.1f} | {tpm:.0f} | {tr:.2f} | {ov:.2f} | {logged} |")
    per = {n: statistics.median(r[5] for r in rows_out if r[0] == n) for n in args.counts}
    lo, hi = min(args.counts), max(args.counts)
    print(
        f"\nmedians of {args.repeats} rounds; overhead per trial {hi} vs {lo} trials: "
        f"{per[hi] / per[lo]:.2f}x; MLflow column: the fewest complete runs over the rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
