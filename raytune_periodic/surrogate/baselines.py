"""The paper's comparators (§3.3–3.4, Tables 3–5) on the same network, data and solver.

- :func:`train_original`: the original alone with fixed values for MaxIter epochs (the baseline
  ``HypParaSet()``, Table 4's fixed ``1e-5 / 0.5`` settings, one grid point). It trains in
  NI-epoch segments with the same seeds and learning-rate steps as Algorithm 1's stage (a), so a
  fixed setting and Algorithm 1 see the same batches at the same seed.
- :func:`tied_grid` / :func:`run_grid`: grid search over tied values (§3.4): every active λ takes
  one value, every active p another. The paper states p ∈ 0.2…0.8 by 0.1 and log10 λ ∈ −8…−2 by
  1 (7 × 7 = 49 points) but N_grid = 8 · 8 = 64; we keep both ranges and N_grid = 64 by spacing
  8 values evenly over each (``n_p``, ``n_lambda`` change it). Cost: N_grid · T_ori.
- "EA without surrogate": :func:`ea_config` — Algorithm 1 whose candidates are trained on copies
  of the original instead of the surrogate (cost (2 + N) original runs per iteration). Not from
  the paper: Table 5's "EA-based" row is a GA on the surrogate (``optimizer="ga"``, same cost as
  Algorithm 1), and its RBF row is :mod:`.rbf`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.algorithm import SurrogateHPOConfig, ea_config
from raytune_periodic.surrogate.executors import Executor, make_executor
from raytune_periodic.surrogate.objective import evaluate
from raytune_periodic.surrogate.original import build_original
from raytune_periodic.surrogate.sparseness import LAMBDAS, NAMES, HypParaSet
from raytune_periodic.surrogate.training import (
    current_task_id,
    derive_seed,
    make_sgd,
    plain_loss,
    set_lr,
    steps_per_epoch,
    train_steps,
)
from raytune_periodic.training.engine import resolve_device
from raytune_periodic.training.process import prepare_process
from raytune_periodic.validation import bounded_range, choice, integer


def tied_grid(
    n_p: int = 8,
    n_lambda: int = 8,
    p_range: tuple[float, float] = (0.2, 0.8),
    log10_lambda_range: tuple[float, float] = (-8.0, -2.0),
    names: Sequence[str] = NAMES,
    fixed: HypParaSet | None = None,
    field: str = "grid",
) -> list[HypParaSet]:
    """``n_lambda × n_p`` settings: the λ of ``names`` tied to one value, their p to another."""
    n_p = integer(n_p, f"{field}.n_p", 1)
    n_lambda = integer(n_lambda, f"{field}.n_lambda", 1)
    for key, rng in (("p_range", p_range), ("log10_lambda_range", log10_lambda_range)):
        lo, hi = bounded_range(rng, f"{field}.{key}")
        if lo == hi:
            raise ConfigError(f"{field}.{key}", f"lower must be < upper, got [{lo:g}, {hi:g}]")
    for name in names:
        choice(name, f"{field}.names", NAMES)
    base = (fixed or HypParaSet()).to_dict()
    points = []
    for log_lam in np.linspace(*log10_lambda_range, n_lambda):
        for p in np.linspace(*p_range, n_p):
            values = dict(base)
            for name in names:
                values[name] = float(10.0**log_lam) if name in LAMBDAS else float(p)
            points.append(HypParaSet(**values))
    return points


def train_original(
    config: SurrogateHPOConfig, data: DataSplits, hyp: HypParaSet | Mapping[str, float]
) -> dict[str, float]:
    """Train the original alone with fixed ``hyp`` for MaxIter epochs; val/test metrics + cost."""
    cfg = config.validate()
    hyp = HypParaSet.from_dict(hyp)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    device = resolve_device(cfg.device, "surrogate.device")
    model = build_original(cfg, data, hyp)[0].to(device)
    opts = cfg.solver
    steps = max(1, round(cfg.ni_epochs * steps_per_epoch(data.train, opts.batch_size)))
    sgd = make_sgd(model.parameters(), opts, opts.lr)
    loss_fn = plain_loss(model)
    fit: dict[str, float] = {}
    for t in range(cfg.iterations):
        set_lr(sgd, opts.lr_at(t * steps))
        seed = derive_seed(cfg.seed, t, "original")
        fit = train_steps(model, loss_fn, sgd, data.train, steps, opts.batch_size, seed, device)
    val = evaluate(model, data.val, device, opts.eval_batch_size, cfg.kappa)
    test = evaluate(model, data.test, device, opts.eval_batch_size, cfg.kappa)
    return {
        "val_accuracy": val["accuracy"],
        "val_f1": val["macro_f1"],
        "val_objective": val["objective"],
        "test_accuracy": test["accuracy"],
        "test_f1": test["macro_f1"],
        "train_loss": fit.get("train_loss", math.nan),
        "original_runs": 1.0,
        "original_epochs": cfg.iterations * cfg.ni_epochs,
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        **{f"value/{k}": v for k, v in hyp.to_dict().items()},
    }


def evaluate_setting(
    payload: Mapping[str, Any], *, data: DataSplits, config: SurrogateHPOConfig
) -> dict[str, Any]:
    """Executor task: :func:`train_original` for ``{"index", "hyp", "threads", "executor"}``."""
    prepare_process(payload.get("threads"))
    out: dict[str, Any] = train_original(config, data, payload["hyp"])
    return {
        "index": int(payload["index"]),
        **out,
        "task_id": current_task_id(payload.get("executor") == "ray"),
    }


def run_grid(
    config: SurrogateHPOConfig,
    data: DataSplits,
    points: Sequence[HypParaSet] | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train the original at every grid point (in parallel through ``executor``); pick by val.

    Returns ``best`` (the point with the highest validation accuracy), ``points`` (every point's
    metrics) and the cost (``original_runs`` = N_grid, summed ``cpu_seconds``, ``wall_seconds``).
    """
    cfg = config.validate()
    points = list(points if points is not None else tied_grid())
    if not points:
        raise ConfigError("grid", "no grid points")
    executor = executor or make_executor(
        cfg.executor, cfg.cpus_per_candidate, cfg.gpus_per_candidate
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    payloads = [
        {"index": i, "hyp": h.to_dict(), "threads": executor.threads, "executor": executor.name}
        for i, h in enumerate(points)
    ]
    results = executor.map(evaluate_setting, payloads, data=executor.share(data), config=cfg)
    best = max(results, key=lambda r: r["val_accuracy"])
    remote = executor.name != "serial"
    cpu = time.process_time() - cpu0 + (sum(r["cpu_seconds"] for r in results) if remote else 0)
    return {
        "best": best,
        "points": results,
        "original_runs": float(len(points)),
        "original_epochs": float(sum(r["original_epochs"] for r in results)),
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": cpu,
    }


__all__ = ["ea_config", "evaluate_setting", "run_grid", "tied_grid", "train_original"]
