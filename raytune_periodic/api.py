"""The Python API for notebooks and scripts, re-exported by ``raytune_periodic``::

    import raytune_periodic as rp

    cfg = rp.load("configs/quickstart.yaml", overrides=["budget.periods=10"])  # or a dict
    outcome = rp.run(cfg, mlflow_uri="sqlite:///mlflow.db")  # raises if trials errored
    table = rp.compare(cfg.name, tracking_uri="sqlite:///mlflow.db")  # a pandas DataFrame

Each function does what the CLI command of the same name does, with the same defaults
(``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``) and the same one-line ``ConfigError`` for bad
input. Heavy dependencies (Ray, MLflow, pandas) are imported when a function is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_periodic.config import ExperimentConfig, apply_overrides, read_yaml, validate_config
from raytune_periodic.errors import ConfigError

if TYPE_CHECKING:
    import pandas

    from raytune_periodic.tuning.runner import RunOutcome


def load(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    overrides: Sequence[str] = (),
    *,
    smoke_dir: str | Path | None = None,
) -> ExperimentConfig:
    """A validated experiment from a YAML path or a mapping, with ``key.path=value`` overrides.

    ``smoke_dir``: rewrite it as ``--smoke`` does (tiny data written there, 2 periods, 1 seed).
    """
    if isinstance(config, ExperimentConfig):
        if overrides or smoke_dir:
            return load(config.raw, overrides, smoke_dir=smoke_dir)
        return config
    if isinstance(config, str | Path):
        raw = read_yaml(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise ConfigError("config", f"expected a path or a mapping, got {type(config).__name__}")
    raw = apply_overrides(raw, list(overrides))
    if smoke_dir is not None:
        from raytune_periodic.smoke import smoke_config

        raw = smoke_config(raw, smoke_dir)
    return validate_config(raw)


def validate(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> str:
    """Validate without running; a one-line summary (raises ``ConfigError`` if invalid)."""
    cfg = load(config, overrides)
    per_seed = [plan.method.trials_per_seed() for plan in cfg.plan.values()]
    n_trials = sum(per_seed) * len(cfg.seeds)
    return (
        f"{cfg.name}: {len(cfg.plan)} methods x {len(cfg.seeds)} seeds, {n_trials} trials of "
        f"{cfg.periods} periods"
    )


def run(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    overrides: Sequence[str] = (),
    *,
    mlflow_uri: str | None = None,
    storage_path: str | Path | None = None,
    address: str | None = None,
    resume: bool = False,
    restart: bool = False,
    raise_on_error: bool = True,
    progress: str = "compact",
) -> RunOutcome:
    """Run every method of an experiment under Ray Tune, logging to MLflow.

    Returns the ``RunOutcome``. If any trial errored, raises ``TrialsErroredError`` (its
    ``outcome`` attribute has the details; ``run(..., resume=True)`` retries them) unless
    ``raise_on_error=False``, in which case check ``outcome.ok``. ``progress``: ``compact``
    (a line per Tuner now and then), ``tune`` (Tune's table) or ``none``.
    """
    from raytune_periodic.tuning.runner import TrialsErroredError, run_experiment

    cfg = load(config, overrides)
    outcome = run_experiment(
        cfg,
        address=address,
        storage_path=str(storage_path) if storage_path is not None else None,
        mlflow_uri=mlflow_uri,
        resume=resume,
        restart=restart,
        progress=progress,
    )
    if raise_on_error and not outcome.ok:
        raise TrialsErroredError(outcome)
    return outcome


def compare(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    invocation_id: str | None = None,
    baseline: str | None = None,
) -> pandas.DataFrame:
    """The comparison ``raytune-periodic compare`` prints, as a DataFrame: one row per method
    (the method table, then the paired statistics vs ``baseline`` and a verdict); ``attrs``
    holds the baseline, verdicts, notes and the long-form paired records."""
    from raytune_periodic.report import compare_frame

    return compare_frame(
        experiment, tracking_uri=tracking_uri, invocation_id=invocation_id, baseline=baseline
    )


def export(
    experiment: str,
    method: str,
    seed: int | str,
    out: str | Path,
    *,
    tracking_uri: str | None = None,
    invocation_id: str | None = None,
    register: str | None = None,
) -> Any:
    """What ``raytune-periodic export`` does: download the trial ``compare`` selects for
    ``method`` and ``seed`` (its best-epoch and last models, config, schedule, spec) from MLflow
    into ``out``; ``register`` also registers its best model. Returns ``report.export.Exported``
    (``.models["best"]`` loads with ``mlflow.pytorch.load_model``)."""
    from raytune_periodic.report.export import export_model

    return export_model(
        experiment, method, seed, out, tracking_uri=tracking_uri,
        invocation_id=invocation_id, register=register,
    )  # fmt: skip


__all__ = ["compare", "export", "load", "run", "validate"]
