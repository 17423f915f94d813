"""Run a validated experiment: start the invocation, then one Tuner per method (per seed for
searchers and schedulers whose state must not mix seeds), each logged to MLflow.

Driver state (the invocation id, which Tuners finished or errored, a lock against a second
driver) lives in ``<storage>/<name>/`` (``driver_state.py``), so ``--resume`` can
``Tuner.restore`` the unfinished ones (errored trials retried) and re-attach to the same MLflow
runs. SIGTERM (what ``ray job stop`` sends) stops the searches as Ctrl-C does: Tune saves its
state, the MLflow store is flushed, and the run is resumable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_periodic.config import ExperimentConfig
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import TAG_STORAGE_PATH, default_tracking_uri
from raytune_periodic.protocol.trial_results import DONE as DONE_KEY
from raytune_periodic.tuning.driver_state import DONE, ERRORED, DriverState
from raytune_periodic.tuning.ray_session import plugin_modules, start_ray
from raytune_periodic.tuning.tuners import TunerJob, build_tuner, tuner_jobs


class TrialsErroredError(RuntimeError):
    """Some trials errored (after Tune's retries); ``outcome`` says which. Resumable."""

    def __init__(self, outcome: RunOutcome) -> None:
        self.outcome = outcome
        names = ", ".join(outcome.errored_trials[:10])
        more = len(outcome.errored_trials) - 10
        super().__init__(
            f"{len(outcome.errored_trials)} trial(s) errored: {names}"
            + (f" (+{more} more)" if more > 0 else "")
            + "; see Tune's error.txt under "
            + outcome.storage_path
            + "; `run --resume` retries them"
        )


class RunInterrupted(RuntimeError):
    """The driver was asked to stop (SIGINT/SIGTERM); the store was flushed, resume later."""


@dataclass
class RunOutcome:
    """What a run did: where it logged, its Tuners, errored trials, wall time."""

    invocation_id: str
    tracking_uri: str
    experiment: str
    storage_path: str
    tuner_paths: dict[str, str] = field(default_factory=dict)
    errored_trials: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errored_trials


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[list[int]]:
    """While searches run, SIGTERM is handled like Ctrl-C (Tune stops and saves its state)."""
    got: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield got
        return
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_invocation(cfg: ExperimentConfig, state: DriverState, uri: str, store: Any) -> str:
    base = cfg.base
    params = {
        "dataset": base["dataset"].get("name")
        if isinstance(base["dataset"], dict)
        else base["dataset"],
        "model": base["model"].get("name") if isinstance(base["model"], dict) else base["model"],
        "periods": cfg.periods,
        "trials": cfg.trials,
        "seeds": ",".join(map(str, cfg.seeds)),
        "methods": ",".join(cfg.methods),
    }
    tags = {TAG_STORAGE_PATH: str(state.dir)}
    return str(store.start_invocation(state.data["invocation_id"], cfg.raw, params, tags))


def _errored(results: Any) -> list[str]:
    """Trial ids of the errored trials of a ``ResultGrid``."""
    out = []
    for res in results:
        if res.error is not None:
            out.append(str((res.metrics or {}).get("trial_id") or Path(res.path).name))
    return out


def _interrupted(results: Any) -> bool:
    """Tune returned with trials neither done nor errored: it was stopped (SIGINT)."""
    return any(r.error is None and not (r.metrics or {}).get(DONE_KEY) for r in results)


def _fit(cfg: ExperimentConfig, job: TunerJob, ctx: dict[str, Any], resume: bool) -> Any:
    """Run (or restore) one Tuner; its ``ResultGrid``."""
    from raytune_periodic.tuning.mlflow_callback import MlflowCallback

    plan = job.plan
    callback = MlflowCallback(
        ctx["uri"], cfg.mlflow_experiment, ctx["invocation_id"], ctx["method_runs"][plan.name],
        plan.name, plan.search, new_invocation=not resume,
    )  # fmt: skip
    trainable = plan.method.trainable(cfg.tune["resources"])
    tuner = build_tuner(cfg, job, callback, resume, trainable, ctx["progress"])
    return tuner.fit()


def run_experiment(
    cfg: ExperimentConfig,
    *,
    address: str | None = None,
    storage_path: str | None = None,
    mlflow_uri: str | None = None,
    resume: bool = False,
    restart: bool = False,
    progress: str = "compact",
) -> RunOutcome:
    """Run (or resume) every method of ``cfg`` under Ray Tune, logging to MLflow.

    Returns the outcome; errored trials are listed in ``outcome.errored_trials`` (the Tuners
    stay resumable). Raises ``RunInterrupted`` after SIGINT/SIGTERM (state saved, resumable).
    ``progress``: ``compact`` (a line per Tuner now and then), ``tune`` (Tune's table), ``none``.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table
    start = time.perf_counter()
    if not (address or os.environ.get("RAY_ADDRESS")):  # a local Ray: refuse before it starts
        check_resources(cfg, local_resources(cfg.tune["num_cpus"]), "this machine")
    storage = Path(storage_path or cfg.tune["storage_path"] or "runs/ray_results").absolute()
    state = DriverState(storage / cfg.name)
    state.acquire()
    try:
        with _quiet_snapshot_warnings():
            return _run_locked(cfg, state, address, mlflow_uri, (resume, restart, progress), start)
    finally:
        state.release()


@contextlib.contextmanager
def _quiet_snapshot_warnings() -> Iterator[None]:
    """Tune's snapshot warning (trials checkpointing often) once, then a count at the end."""
    from raytune_periodic.tuning.progress import (
        SNAPSHOT_LOGGER,
        SNAPSHOT_NEEDLE,
        SummarisedWarnings,
    )

    flt = SummarisedWarnings(SNAPSHOT_NEEDLE)
    logger = logging.getLogger(SNAPSHOT_LOGGER)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)
        if flt.suppressed:
            print(
                f"(Tune's experiment-state snapshot warning repeated {flt.suppressed} more "
                f"times: trials checkpoint often; a larger tune.checkpoint_every quiets it)"
            )


def local_resources(num_cpus: int | None) -> dict[str, float]:
    """What a local Ray started by ``run`` will have."""
    import torch

    cpus = num_cpus or os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def check_resources(cfg: ExperimentConfig, available: Mapping[str, float], where: str) -> None:
    """A method one of whose trials needs more than ``available`` is a one-line error."""
    for name, plan in cfg.plan.items():
        need = plan.method.resource_demand(cfg.tune["resources"])
        for res, amount in need.items():
            have = float(available.get(res, 0.0))
            if amount > have + 1e-9:
                raise ConfigError(
                    f"methods.{name}",
                    f"one trial needs {amount:g} {res} (agent + children), {where} has {have:g}",
                )


def _run_locked(
    cfg: ExperimentConfig,
    state: DriverState,
    address: str | None,
    mlflow_uri: str | None,
    flags: tuple[bool, bool, str],
    start: float,
) -> RunOutcome:
    from raytune_periodic.tracking import MlflowStore

    resume, restart, progress = flags
    state.begin(resume, restart)
    uri = mlflow_uri or state.data.get("tracking_uri") or cfg.mlflow["tracking_uri"]
    uri = uri or default_tracking_uri()
    state.data["tracking_uri"] = uri
    state.save()
    store = MlflowStore(uri, cfg.mlflow_experiment)
    if cfg.mlflow.get("log_models", "selected") != "none":
        from raytune_periodic.tracking.models import warm_up_in_background

        warm_up_in_background()  # the first model export's imports, while Ray starts (#16)
    inv_run = _start_invocation(cfg, state, uri, store)
    ray = start_ray(address, cfg.tune["num_cpus"], plugin_modules(cfg.plugins))
    check_resources(cfg, ray.cluster_resources(), "the Ray cluster")
    inv_id = state.data["invocation_id"]
    outcome = RunOutcome(inv_id, uri, cfg.mlflow_experiment, str(state.dir))
    ctx = {"uri": uri, "invocation_id": inv_id, "method_runs": {}, "progress": progress}
    for name, plan in cfg.plan.items():
        ctx["method_runs"][name] = store.start_method(
            inv_run, inv_id, name, plan.search, plan.method.static_params()
        )
    with _sigterm_as_sigint() as signals:
        for job in tuner_jobs(cfg, state.dir, inv_id):
            outcome.tuner_paths[job.key] = str(job.path)
            if state.tuner_status(job.key) == DONE:
                continue
            results = _fit(cfg, job, ctx, resume)
            if signals or _interrupted(results):
                store.flush()
                why = f"signal {signals[0]}" if signals else "an interrupt"
                raise RunInterrupted(f"stopped by {why}: resume with `run CONFIG --resume`")
            errored = _errored(results)
            outcome.errored_trials += errored
            state.set_tuner(job.key, ERRORED if errored else DONE)
    for run_id in ctx["method_runs"].values():
        store.finish_run(run_id)
    store.finish_run(inv_run)
    state.data["finished"] = not outcome.errored_trials
    state.save()
    outcome.seconds = time.perf_counter() - start
    return outcome


__all__ = ["ConfigError", "RunInterrupted", "RunOutcome", "TrialsErroredError", "run_experiment"]
