"""Experiment configs: one YAML file = one experiment, validated before Ray starts.

Shape (every key optional unless marked)::

    name: quickstart                     # required: MLflow experiment and Tune run name
    seeds: [0, 1]                        # each method runs once per seed (paired splits)
    budget: {periods: 40, trials: 4}     # per method and seed: trials x periods (the fair unit)
    base:                                # the run spec every trial starts from (see RunSpec)
      dataset: {name: digits, train_size: 500, label_noise: 0.3}
      model: {name: mlp}                 # or a plugin: {name: "mypkg.nets:build_net"}
      regularizers: [{kind: dropout, where: head}]
      train: {period_length: 20}
    methods:                             # required: name -> method entry
      BL: {controller: {type: constant, values: {dropout: 0.0}}}
      D:  {search: grid, grid: {dropout: [0.1, 0.3, 0.5, 0.7]}}
      PD: {controller: {type: periodic_random, ranges: {dropout: [0.0, 0.7]}}}
      PBT: {search: pbt, space: {dropout: [0.0, 0.7]}, perturbation_interval: 5}
    tune: {iteration_periods: auto, checkpoint_every: 5, max_concurrent: 0,
           resources: {cpu: 1, gpu: 0}, max_failures: 2, metric: objective, storage_path: null,
           reuse_actors: true,        # false: a fresh worker process per trial (Ray places each)
           tensorboard: false}        # true: also Tune's TensorBoard logs (MLflow has it all)
    mlflow: {tracking_uri: null, experiment: null}

Validation resolves the file once into an ``ExperimentConfig`` whose ``plan`` holds one
``MethodPlan`` per method (``config/plan.py``); the runner consumes it as-is. Errors are
``ConfigError`` with the dotted field path; the CLI prints them as one line, exit 2.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_periodic.config import sections
from raytune_periodic.config.plan import MethodPlan, deep_merge, method_base, resolve_method
from raytune_periodic.config.yaml_io import apply_overrides, parse_yaml, read_yaml
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import known_keys, mapping

TUNE_DEFAULTS = sections.TUNE_DEFAULTS
MLFLOW_DEFAULTS = sections.MLFLOW_DEFAULTS


@dataclass
class ExperimentConfig:
    """A validated experiment; ``raw`` is the resolved mapping (logged to MLflow as-is)."""

    name: str
    seeds: list[int]
    periods: int
    trials: int
    base: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    tune: dict[str, Any]
    mlflow: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, MethodPlan] = field(default_factory=dict)

    @property
    def mlflow_experiment(self) -> str:
        return self.mlflow.get("experiment") or self.name

    @property
    def plugins(self) -> dict[str, dict[str, str]]:
        """Every method's plugins merged: registry → name → import path."""
        out: dict[str, dict[str, str]] = {}
        for plan in self.plan.values():
            for reg, names in plan.plugins.items():
                out.setdefault(reg, {}).update(names)
        return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config file."""
    return validate_config(apply_overrides(read_yaml(path), overrides or []))


def _check_base(data: Mapping[str, Any]) -> dict[str, Any]:
    base = mapping(sections.section(data, "base", {}), "base")
    base.setdefault("dataset", {"name": "digits"})
    base.setdefault("model", {"name": "mlp"})
    if "controller" in base:
        raise ConfigError("base.controller", "controllers belong to methods, not to base")
    return base


def validate_config(data: Mapping[str, Any], check_data: bool = True) -> ExperimentConfig:
    """Validate everything that can be checked without Ray: shapes, types, ranges, names.

    With ``check_data`` the dataset is loaded once per distinct run spec (paths exist, shapes
    known) and the model and every method's controller are built against it, so bad names and
    ranges fail here.
    """
    data = copy.deepcopy(dict(mapping(data, "config")))
    known_keys(data, sections.TOP_KEYS, "")
    if "name" not in data:
        raise ConfigError("name", "missing: the experiment name")
    name = sections.safe_name(data["name"], "name")
    seeds = sections.check_seeds(data)
    periods, trials = sections.check_budget(data)
    tune = sections.check_tune(data, periods)
    mlflow = sections.check_mlflow(data)
    base = _check_base(data)
    methods = mapping(
        sections.section(data, "methods", {}), "methods", "a mapping of name -> method"
    )
    if not methods:
        raise ConfigError("methods", "missing: at least one method")
    checks: dict[str, Any] | None = {} if check_data else None
    plan = {
        str(m): resolve_method(m, e, base=base, trials=trials, periods=periods, data_checks=checks)
        for m, e in methods.items()
    }
    for p in plan.values():
        if p.method.runs_engine:
            sections.check_objective(tune, _train_options(p), f"methods.{p.name}.base")
    resolved = {
        "name": name,
        "seeds": seeds,
        "budget": {"periods": periods, "trials": trials},
        "base": base,
        "methods": {m: p.entry for m, p in plan.items()},
        "tune": tune,
        "mlflow": mlflow,
    }
    if "description" in data:
        resolved["description"] = data["description"]
    return ExperimentConfig(
        name=name, seeds=seeds, periods=periods, trials=trials, base=base,
        methods=resolved["methods"], tune=tune, mlflow=mlflow, raw=resolved, plan=plan,
    )  # fmt: skip


def _train_options(plan: MethodPlan) -> Any:
    from raytune_periodic.config.plan import parse_spec

    return parse_spec(plan.spec, "base").train


__all__ = [
    "MLFLOW_DEFAULTS",
    "TUNE_DEFAULTS",
    "ExperimentConfig",
    "MethodPlan",
    "apply_overrides",
    "deep_merge",
    "load_config",
    "method_base",
    "parse_yaml",
    "read_yaml",
    "validate_config",
]
