"""Run a validated experiment: one Tuner per method (per seed for searchers/schedulers).

Driver state (the invocation id and which Tuners finished) lives in
``<storage>/<name>/rp_state.json`` so ``--resume`` can ``Tuner.restore`` the unfinished ones and
re-attach to the same MLflow runs.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.config import ExperimentConfig, method_base
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import TAG_STORAGE_PATH, default_tracking_uri
from raytune_periodic.protocol.trial_results import DRIVER_STATE_FILE
from raytune_periodic.tuning.methods import SearchMethod, build_method

STATE_FILE = DRIVER_STATE_FILE


@dataclass
class RunOutcome:
    invocation_id: str
    tracking_uri: str
    experiment: str
    storage_path: str
    tuner_paths: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _param_space(cfg: ExperimentConfig, method: SearchMethod, seeds: list[int]) -> dict[str, Any]:
    from ray import tune

    spec = method_base(cfg.base, method.entry)
    spec["controller"] = method.controller()
    rp: dict[str, Any] = {
        "experiment": cfg.name,
        "method": method.name,
        "search": method.search,
        "spec": spec,
        "periods": cfg.periods,
        "iteration_periods": cfg.tune["iteration_periods"],
        "threads": max(1, int(cfg.tune["resources"].get("cpu", 1))),
        "seed": seeds[0] if len(seeds) == 1 else tune.grid_search(seeds),
        **method.extra_rp(),
    }
    space: dict[str, Any] = {"rp": rp}
    if method.search == "controller":
        rp["replicate"] = tune.grid_search(list(range(method.trials)))
    values = method.values_space(seeds[0])
    if values is not None:
        space["values"] = values
    return space


def _file_loggers(cfg: ExperimentConfig) -> list[Any]:
    """Tune's result.json and progress.csv per trial; TensorBoard files only on request.

    Tune adds a CSV, a JSON and a TensorBoardX logger unless told otherwise; the TensorBoardX one
    was the largest cost in Tune's driver loop after ours (bench/scale.py, py-spy) and MLflow
    already holds every metric, so it is off unless ``tune.tensorboard: true``.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no loggers beyond these
    loggers: list[Any] = [JsonLoggerCallback(), CSVLoggerCallback()]
    if cfg.tune["tensorboard"]:
        loggers.append(TBXLoggerCallback())
    return loggers


def _tune_config(cfg: ExperimentConfig, method: SearchMethod, seed: int) -> dict[str, Any]:
    kwargs = method.tune_config(seed, cfg.tune["metric"])
    if method.search == "controller":
        kwargs["num_samples"] = 1  # replicates come from the grid over "replicate"
    scheduler = kwargs.get("scheduler")
    if scheduler is not None and hasattr(scheduler, "_custom_explore_fn"):
        from raytune_periodic.tuning.methods import _space_entry
        from raytune_periodic.tuning.trainable import make_clip_explore

        bounds = {
            g: _space_entry(v, "", None, g)[:2] for g, v in method.entry.get("space", {}).items()
        }
        scheduler._custom_explore_fn = make_clip_explore(bounds)
    return kwargs


def _reporter(method: SearchMethod, seeds: list[int]) -> Any:
    """Tune's progress table: status per trial with the values and the metrics that matter."""
    from ray.tune import CLIReporter

    params = {"rp/seed": "seed"} if len(seeds) > 1 else {}
    if method.search == "controller":
        params["rp/replicate"] = "replicate"
    space = method.entry.get("space") or method.entry.get("grid") or {}
    params.update({f"values/{g}": g for g in space})
    return CLIReporter(
        metric_columns={
            "training_iteration": "iter",
            "objective": "objective",
            "val_f1": "val F1",
            "gap": "gap",
        },
        parameter_columns=params,
        max_report_frequency=30,
        sort_by_metric=False,
    )


def _load_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def run_experiment(
    cfg: ExperimentConfig,
    *,
    address: str | None = None,
    storage_path: str | None = None,
    mlflow_uri: str | None = None,
    resume: bool = False,
) -> RunOutcome:
    """Run (or resume) every method of ``cfg`` under Ray Tune, logging to MLflow."""
    # the classic progress table (status per trial) instead of a config box per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray = require("ray")
    from ray import tune

    from raytune_periodic.tracking import MlflowStore
    from raytune_periodic.tuning.mlflow_callback import MlflowCallback

    start = time.perf_counter()
    storage = Path(storage_path or cfg.tune["storage_path"] or "runs/ray_results").absolute()
    exp_dir = storage / cfg.name
    state_path = exp_dir / STATE_FILE
    state = _load_state(state_path)
    if resume and not state:
        raise ConfigError("--resume", f"no previous run of {cfg.name!r} under {storage}")
    if not resume or not state:
        state = {"invocation_id": uuid.uuid4().hex, "tuners": {}}
    invocation_id = state["invocation_id"]
    uri = mlflow_uri or state.get("tracking_uri") or cfg.mlflow["tracking_uri"]
    uri = uri or default_tracking_uri()
    state["tracking_uri"] = uri
    _save_state(state_path, state)

    store = MlflowStore(uri, cfg.mlflow_experiment)
    base = cfg.base
    inv_run = store.start_invocation(
        invocation_id,
        cfg.raw,
        params={
            "dataset": base["dataset"].get("name")
            if isinstance(base["dataset"], dict)
            else base["dataset"],
            "model": base["model"].get("name")
            if isinstance(base["model"], dict)
            else base["model"],
            "periods": cfg.periods,
            "trials": cfg.trials,
            "seeds": ",".join(map(str, cfg.seeds)),
            "methods": ",".join(cfg.methods),
        },
        tags={TAG_STORAGE_PATH: str(exp_dir)},
    )
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if target == "local" and cfg.tune["num_cpus"]:
            init_kwargs["num_cpus"] = cfg.tune["num_cpus"]
        ray.init(address=target, **init_kwargs)

    outcome = RunOutcome(invocation_id, uri, cfg.mlflow_experiment, str(exp_dir))
    short = invocation_id[:8]
    for mname, entry in cfg.methods.items():
        method = build_method(mname, entry, cfg.trials)
        trainable = method.trainable(cfg.tune["resources"])
        method_run = store.start_method(
            inv_run, invocation_id, mname, method.search, method.static_params()
        )
        groups = [[s] for s in cfg.seeds] if method.per_seed else [list(cfg.seeds)]
        for seeds in groups:
            key = f"{mname}-s{seeds[0]}" if method.per_seed else mname
            run_name = f"{key}-{short}"
            path = exp_dir / run_name
            outcome.tuner_paths[key] = str(path)
            if state["tuners"].get(key) == "done":
                continue
            random.seed(seeds[0])  # PBT's explore draws from Python's random module
            callback = MlflowCallback(
                uri,
                cfg.mlflow_experiment,
                invocation_id,
                method_run,
                mname,
                method.search,
                new_invocation=not resume,
            )
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(
                    str(path), trainable, resume_unfinished=True, resume_errored=True
                )
            else:
                kwargs = _tune_config(cfg, method, seeds[0])
                max_conc = cfg.tune["max_concurrent"] or None
                pbt_like = method.search in ("pbt", "pb2")
                tuner = tune.Tuner(
                    trainable,
                    param_space=_param_space(cfg, method, seeds),
                    tune_config=tune.TuneConfig(
                        metric=cfg.tune["metric"],
                        mode="max",
                        reuse_actors=cfg.tune["reuse_actors"],
                        max_concurrent_trials=max_conc,
                        **kwargs,
                    ),
                    run_config=tune.RunConfig(
                        name=run_name,
                        storage_path=str(exp_dir),
                        callbacks=[callback, *_file_loggers(cfg)],
                        verbose=cfg.tune["verbose"],
                        progress_reporter=_reporter(method, seeds),
                        failure_config=tune.FailureConfig(max_failures=cfg.tune["max_failures"]),
                        checkpoint_config=tune.CheckpointConfig(
                            checkpoint_frequency=cfg.tune["checkpoint_every"],
                            checkpoint_at_end=True,
                            num_to_keep=None if pbt_like else 2,
                        ),
                    ),
                )
            tuner.fit()
            state["tuners"][key] = "done"
            _save_state(state_path, state)
        store.finish_run(method_run)
    store.finish_run(inv_run)
    state["finished"] = True
    _save_state(state_path, state)
    outcome.seconds = time.perf_counter() - start
    return outcome
