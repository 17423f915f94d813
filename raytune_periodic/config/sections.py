"""Validators of the experiment file's top-level sections; each returns the resolved section.

Strict by design: a section that is present must have the right type (no ``or {}`` fallback
turns ``budget: 5`` into the defaults), booleans are real booleans, names are from a safe
character set, and counts have sanity limits. Every error is one line naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.trial_results import RANKED_METRICS
from raytune_periodic.validation import (
    boolean,
    choice,
    integer,
    known_keys,
    mapping,
    number,
    sequence,
    string,
)

TOP_KEYS = {"name", "seeds", "budget", "base", "methods", "tune", "mlflow", "description"}
BUDGET_KEYS = {"periods", "trials"}
MAX_PERIODS, MAX_TRIALS, MAX_SEEDS = 1_000_000, 10_000, 1_000
TUNE_DEFAULTS: dict[str, Any] = {
    "iteration_periods": "auto",  #: periods per Tune iteration; auto: iterations of ~1 s
    "checkpoint_every": 5,
    "max_concurrent": 0,
    "resources": {"cpu": 1, "gpu": 0},
    "max_failures": 2,
    "metric": "objective",
    "storage_path": None,
    "num_cpus": None,
    "verbose": 1,
    "reuse_actors": True,
    "tensorboard": False,
}
MLFLOW_DEFAULTS: dict[str, Any] = {
    "tracking_uri": None,
    "experiment": None,
    "log_models": "selected",
}
#: ``mlflow.log_models``: which trials' weights become MLflow models (tracking/models.py)
LOG_MODELS = ("selected", "all", "none")
#: experiment names become MLflow experiment names, Tune folders and spool file names
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
METHOD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def section(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``data[key]`` or ``default`` when the key is absent (a present ``null`` is refused)."""
    if key not in data:
        return default
    if data[key] is None:
        raise ConfigError(key, "is empty: remove the key or give it a value")
    return data[key]


def safe_name(value: Any, field: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    """A name that is safe as a folder, run and file name: letters, digits, ``._-``."""
    text = string(value, field)
    if not pattern.fullmatch(text) or ".." in text:
        limit = pattern.pattern.rsplit(",", 1)[-1].rstrip("}")
        raise ConfigError(
            field,
            f"must start with a letter or digit and hold only letters, digits, "
            f"{'._-' if pattern is NAME_RE else '_-'} (at most {int(limit) + 1} characters, "
            f"no '..'), got {text[:40]!r}",
        )
    return text


def check_seeds(data: Mapping[str, Any]) -> list[int]:
    seeds = sequence(section(data, "seeds", [0]), "seeds", "a list of integers")
    if not seeds:
        raise ConfigError("seeds", "needs at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError("seeds", f"at most {MAX_SEEDS} seeds, got {len(seeds)}")
    out = [integer(s, f"seeds[{i}]", 0, 2**31 - 1) for i, s in enumerate(seeds)]
    if len(set(out)) != len(out):
        raise ConfigError("seeds", f"duplicate seeds in {out}")
    return out


def check_budget(data: Mapping[str, Any]) -> tuple[int, int]:
    budget = mapping(section(data, "budget", {}), "budget")
    known_keys(budget, BUDGET_KEYS, "budget")
    periods = integer(budget.get("periods", 40), "budget.periods", 1, MAX_PERIODS)
    trials = integer(budget.get("trials", 1), "budget.trials", 1, MAX_TRIALS)
    return periods, trials


def check_tune(data: Mapping[str, Any], periods: int) -> dict[str, Any]:
    tune = {**TUNE_DEFAULTS, **mapping(section(data, "tune", {}), "tune")}
    known_keys(tune, TUNE_DEFAULTS, "tune")
    if tune["iteration_periods"] != "auto":
        integer(tune["iteration_periods"], "tune.iteration_periods", 1, periods)
    integer(tune["checkpoint_every"], "tune.checkpoint_every", 0)
    integer(tune["max_concurrent"], "tune.max_concurrent", 0)
    integer(tune["max_failures"], "tune.max_failures", -1)
    integer(tune["verbose"], "tune.verbose", 0, 3)
    if tune["num_cpus"] is not None:
        integer(tune["num_cpus"], "tune.num_cpus", 1)
    if tune["storage_path"] is not None:
        string(tune["storage_path"], "tune.storage_path")
    boolean(tune["reuse_actors"], "tune.reuse_actors")
    boolean(tune["tensorboard"], "tune.tensorboard")
    if tune["iteration_periods"] != "auto" and periods % tune["iteration_periods"]:
        raise ConfigError(
            "tune.iteration_periods",
            f"must divide budget.periods ({periods}), got {tune['iteration_periods']}",
        )
    res = {"cpu": 1, "gpu": 0, **mapping(tune["resources"], "tune.resources")}
    known_keys(res, {"cpu", "gpu"}, "tune.resources")
    number(res["cpu"], "tune.resources.cpu", 0.0, low_open=True)
    number(res["gpu"], "tune.resources.gpu", 0.0)
    tune["resources"] = res
    choice(tune["metric"], "tune.metric", RANKED_METRICS)
    return tune


def check_mlflow(data: Mapping[str, Any]) -> dict[str, Any]:
    mlflow = {**MLFLOW_DEFAULTS, **mapping(section(data, "mlflow", {}), "mlflow")}
    known_keys(mlflow, MLFLOW_DEFAULTS, "mlflow")
    if mlflow["tracking_uri"] is not None:
        string(mlflow["tracking_uri"], "mlflow.tracking_uri")
    if mlflow["experiment"] is not None:
        safe_name(mlflow["experiment"], "mlflow.experiment")
    choice(mlflow["log_models"], "mlflow.log_models", LOG_MODELS)
    return mlflow


def check_objective(tune: Mapping[str, Any], train: Any, fld: str) -> None:
    """Refuse metric/evaluation combinations whose objective is NaN or constant.

    ``train`` is the method's ``TrainOptions``; ``val_f1`` needs validation mini-batches, the
    full-validation metrics need epoch-end evaluation (or, for ``objective``, mini-batches).
    """
    metric = tune["metric"]
    vb, every = int(train.val_batches), int(train.eval_every_epochs)
    if metric == "val_f1" and vb < 1:
        raise ConfigError(f"{fld}.train.val_batches", "tune.metric val_f1 needs val_batches >= 1")
    if metric == "full_val_f1_last" and every < 1:
        msg = "tune.metric full_val_f1_last needs eval_every_epochs >= 1"
        raise ConfigError(f"{fld}.train.eval_every_epochs", msg)
    if metric == "objective" and vb < 1 and every < 1:
        msg = "the objective needs val_batches >= 1 or eval_every_epochs >= 1 (else it is 0)"
        raise ConfigError(f"{fld}.train", msg)
