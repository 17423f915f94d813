"""One Ray Tune ``Tuner`` for one method (and one seed, or all seeds): everything it needs comes
from the method's plan and the ``SearchMethod`` protocol; nothing here names a method."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_periodic.config import ExperimentConfig, MethodPlan


@dataclass
class TunerJob:
    """One Tuner of an invocation: its key in the driver state and where Tune keeps it."""

    plan: MethodPlan
    seeds: list[int]
    key: str  #: ``<method>`` or ``<method>-s<seed>`` (per-seed methods)
    path: Path  #: Tune's experiment folder of this Tuner


def tuner_jobs(cfg: ExperimentConfig, exp_dir: Path, invocation_id: str) -> list[TunerJob]:
    """The Tuners of an invocation in order: per method, one per seed or one for all seeds."""
    jobs = []
    for name, plan in cfg.plan.items():
        groups = [[s] for s in cfg.seeds] if plan.method.per_seed else [list(cfg.seeds)]
        for seeds in groups:
            key = f"{name}-s{seeds[0]}" if plan.method.per_seed else name
            jobs.append(TunerJob(plan, seeds, key, exp_dir / f"{key}-{invocation_id[:8]}"))
    return jobs


def trial_rp(cfg: ExperimentConfig, plan: MethodPlan) -> dict[str, Any]:
    """The static part of every trial's ``config["rp"]`` (the method adds seed, replicates)."""
    spec = dict(plan.spec)
    spec["controller"] = plan.method.controller()
    return {
        "experiment": cfg.name,
        "method": plan.name,
        "search": plan.search,
        "spec": spec,
        "periods": cfg.periods,
        "iteration_periods": cfg.tune["iteration_periods"],
        "checkpoint_every": cfg.tune["checkpoint_every"],
        "threads": max(1, int(cfg.tune["resources"].get("cpu", 1))),
        "plugins": cfg.plugins,
        "log_models": cfg.mlflow.get("log_models", "selected"),  # tracking/models.py (#16)
    }


def file_loggers(tensorboard: bool = False) -> list[Any]:
    """Tune's result.json and progress.csv per trial; TensorBoard files only on request.

    Tune adds a CSV, a JSON and a TensorBoardX logger unless told otherwise; the TensorBoardX one
    was the largest cost in Tune's driver loop after ours (bench/scale.py, py-spy) and MLflow
    already holds every metric, so it is off unless ``tune.tensorboard: true`` (``tensorboard``).
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no loggers beyond these
    loggers: list[Any] = [JsonLoggerCallback(), CSVLoggerCallback()]
    if tensorboard:
        loggers.append(TBXLoggerCallback())
    return loggers


def reporter(cfg: ExperimentConfig, job: TunerJob, progress: str) -> Any:
    """The console: ``compact`` (one line per report, ``tuning/progress.py``), ``tune``
    (Tune's table: status per trial with the values and the metrics that matter) or ``none``."""
    from ray.tune import CLIReporter

    from raytune_periodic.tuning.progress import CompactProgress

    if progress == "compact":
        seeds = "-".join(f"s{s}" for s in job.seeds)
        return CompactProgress(
            f"{job.plan.name} {seeds}", cfg.periods, _iteration_periods(job, cfg)
        )
    return CLIReporter(
        metric_columns={
            "training_iteration": "iter",
            "objective": "objective",
            "val_f1": "val F1",
            "gap": "gap",
        },
        parameter_columns=job.plan.method.reporter_columns(job.seeds),
        max_report_frequency=30,
        sort_by_metric=False,
    )


def _iteration_periods(job: TunerJob, cfg: ExperimentConfig) -> int:
    """Periods per Tune iteration (the surrogate searches: one Algorithm 1 iteration; ``auto``:
    1, the progress line counts the trials' ``rp_periods`` then)."""
    batch = cfg.tune["iteration_periods"]
    return int(batch) if job.plan.method.runs_engine and batch != "auto" else 1


def checkpoint_config(cfg: ExperimentConfig, method: Any, trainable: Any) -> Any:
    """Tune's ``CheckpointConfig``: a trainable that checkpoints by period (``PeriodTrainable``
    asks Tune every ``checkpoint_every`` periods) gets no iteration-based frequency."""
    from ray import tune

    every = int(cfg.tune["checkpoint_every"])
    by_period = getattr(trainable, "checkpoints_by_period", False)
    return tune.CheckpointConfig(
        checkpoint_frequency=0 if by_period else every,
        checkpoint_at_end=True,
        num_to_keep=method.checkpoint_keep(checkpoint_every=every),
    )


def build_tuner(
    cfg: ExperimentConfig,
    job: TunerJob,
    callback: Any,
    resume: bool,
    trainable: Any,
    progress: str = "compact",
) -> Any:
    """A restored Tuner (``--resume``, errored trials retried) or a new one."""
    from ray import tune

    if resume and tune.Tuner.can_restore(str(job.path)):
        return tune.Tuner.restore(
            str(job.path), trainable, resume_unfinished=True, resume_errored=True
        )
    method = job.plan.method
    random.seed(job.seeds[0])  # PBT's explore draws from Python's random module
    extra = method.tune_config(job.seeds[0])
    limit = cfg.tune["max_concurrent"] or None
    if limit and hasattr(extra.get("search_alg"), "max_concurrent"):
        extra["search_alg"].max_concurrent = limit  # Tune ignores the limit with a generator
        limit = None
    return tune.Tuner(
        trainable,
        param_space=method.param_space(trial_rp(cfg, job.plan), job.seeds),
        tune_config=tune.TuneConfig(
            metric=cfg.tune["metric"],
            mode="max",
            reuse_actors=cfg.tune["reuse_actors"],
            max_concurrent_trials=limit,
            **extra,
        ),
        run_config=tune.RunConfig(
            name=job.path.name,
            storage_path=str(job.path.parent),
            callbacks=[callback, *file_loggers(cfg.tune["tensorboard"])],
            verbose=0 if progress == "none" else max(1, cfg.tune["verbose"]),
            progress_reporter=None if progress == "none" else reporter(cfg, job, progress),
            failure_config=tune.FailureConfig(max_failures=cfg.tune["max_failures"]),
            checkpoint_config=checkpoint_config(cfg, method, trainable),
        ),
    )
