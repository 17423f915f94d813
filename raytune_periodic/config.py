"""Experiment configs: one YAML file = one experiment, validated before Ray starts.

Shape (every key optional unless marked)::

    name: quickstart                     # required: MLflow experiment and Tune run name
    seeds: [0, 1]                        # each method runs once per seed (paired splits)
    budget: {periods: 40, trials: 4}     # per method and seed: trials x periods (the fair unit)
    base:                                # the run spec every trial starts from (see RunSpec)
      dataset: {name: digits, train_size: 500, label_noise: 0.3}
      model: {name: mlp}
      regularizers: [{kind: dropout, where: head}]
      train: {period_length: 20}
    methods:                             # required: name -> method entry
      BL: {controller: {type: constant, values: {dropout: 0.0}}}
      D:  {search: grid, grid: {dropout: [0.1, 0.3, 0.5, 0.7]}}
      PD: {controller: {type: periodic_random, ranges: {dropout: [0.0, 0.7]}}}
      PBT: {search: pbt, space: {dropout: [0.0, 0.7]}, perturbation_interval: 5}
    tune: {iteration_periods: 1, checkpoint_every: 5, max_concurrent: 0,
           resources: {cpu: 1, gpu: 0}, max_failures: 2, metric: objective, storage_path: null,
           reuse_actors: true,        # false: a fresh worker process per trial (Ray places each)
           tensorboard: false}        # true: also Tune's TensorBoard logs (MLflow has it all)
    mlflow: {tracking_uri: null, experiment: null}

Errors are ``ConfigError`` with the dotted field path; the CLI prints them as one line, exit 2.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raytune_periodic.controllers import build_controller
from raytune_periodic.data import dataset_options, load_dataset
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model, compatible
from raytune_periodic.regularizers import REGULARIZERS, insert_regularizers
from raytune_periodic.training.spec import parse_run_spec

TOP_KEYS = {"name", "seeds", "budget", "base", "methods", "tune", "mlflow", "description"}
BUDGET_KEYS = {"periods", "trials"}
TUNE_DEFAULTS: dict[str, Any] = {
    "iteration_periods": 1,
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
MLFLOW_DEFAULTS: dict[str, Any] = {"tracking_uri": None, "experiment": None}


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

    @property
    def mlflow_experiment(self) -> str:
        return self.mlflow.get("experiment") or self.name


def _expect(value: Any, types: type | tuple[type, ...], fld: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(fld, f"expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(fld, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _int(value: Any, fld: str, low: int) -> int:
    _expect(value, int, fld, "an integer")
    if value < low:
        raise ConfigError(fld, f"must be >= {low}, got {value}")
    return value


def _unknown(section: Mapping[str, Any], allowed: set[str], fld: str) -> None:
    for key in section:
        if key not in allowed:
            where = f"{fld}.{key}" if fld else str(key)
            raise ConfigError(where, f"unknown key; valid: {', '.join(sorted(allowed))}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a config mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"expected key.path=value, got {item!r}")
        path, _, text = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError("--set", f"empty key in {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {path}", f"value is not valid YAML: {text!r}") from None
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {path}", f"{k!r} is not a mapping")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError("config", f"{p.name} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p.name} must hold a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config file."""
    return validate_config(apply_overrides(read_yaml(path), overrides or []))


def validate_config(data: Mapping[str, Any], check_data: bool = True) -> ExperimentConfig:
    """Validate everything that can be checked without Ray: shapes, types, ranges, names.

    With ``check_data`` the dataset is loaded once (paths exist, shapes known) and the model and
    every method's controller are built against it, so bad names and ranges fail here.
    """
    # no Ray import at module level in tuning.methods
    from raytune_periodic.tuning.methods import METHODS, check_method, method_search

    data = copy.deepcopy(dict(data))
    _unknown(data, TOP_KEYS, "")
    if "name" not in data:
        raise ConfigError("name", "missing: the experiment name")
    name = _expect(data["name"], str, "name", "a string")
    if not name or any(c in name for c in "/\\ "):
        raise ConfigError("name", f"must be non-empty without spaces or slashes, got {name!r}")
    seeds = data.get("seeds", [0])
    _expect(seeds, list, "seeds", "a list of integers")
    if not seeds:
        raise ConfigError("seeds", "needs at least one seed")
    for i, s in enumerate(seeds):
        _int(s, f"seeds[{i}]", 0)
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"duplicate seeds in {seeds}")

    budget = data.get("budget") or {}
    _expect(budget, dict, "budget", "a mapping")
    _unknown(budget, BUDGET_KEYS, "budget")
    periods = _int(budget.get("periods", 40), "budget.periods", 1)
    trials = _int(budget.get("trials", 1), "budget.trials", 1)

    tune = {**TUNE_DEFAULTS, **_expect(data.get("tune") or {}, dict, "tune", "a mapping")}
    _unknown(tune, set(TUNE_DEFAULTS), "tune")
    _int(tune["iteration_periods"], "tune.iteration_periods", 1)
    _int(tune["checkpoint_every"], "tune.checkpoint_every", 0)
    _int(tune["max_concurrent"], "tune.max_concurrent", 0)
    _int(tune["max_failures"], "tune.max_failures", -1)
    _int(tune["verbose"], "tune.verbose", 0)
    if tune["num_cpus"] is not None:
        _int(tune["num_cpus"], "tune.num_cpus", 1)
    _expect(tune["reuse_actors"], bool, "tune.reuse_actors", "true or false")
    _expect(tune["tensorboard"], bool, "tune.tensorboard", "true or false")
    if periods % tune["iteration_periods"]:
        raise ConfigError(
            "tune.iteration_periods",
            f"must divide budget.periods ({periods}), got {tune['iteration_periods']}",
        )
    res = _expect(tune["resources"], dict, "tune.resources", "a mapping")
    _unknown(res, {"cpu", "gpu"}, "tune.resources")
    for key in ("cpu", "gpu"):
        val = res.get(key, 0 if key == "gpu" else 1)
        _expect(val, (int, float), f"tune.resources.{key}", "a number")
        if val < 0 or not math.isfinite(val) or (key == "cpu" and val <= 0):
            raise ConfigError(f"tune.resources.{key}", f"must be {'>' if key == 'cpu' else '>='} 0")
    if tune["metric"] not in ("objective", "val_f1", "full_val_f1_last"):
        raise ConfigError(
            "tune.metric", f"unknown {tune['metric']!r}; valid: objective, val_f1, full_val_f1_last"
        )
    mlflow = {**MLFLOW_DEFAULTS, **_expect(data.get("mlflow") or {}, dict, "mlflow", "a mapping")}
    _unknown(mlflow, set(MLFLOW_DEFAULTS), "mlflow")

    base = _expect(data.get("base") or {}, dict, "base", "a mapping")
    base.setdefault("dataset", {"name": "digits"})
    base.setdefault("model", {"name": "mlp"})
    if "controller" in base:
        raise ConfigError("base.controller", "controllers belong to methods, not to base")
    try:
        spec = parse_run_spec({**base, "controller": {"type": "constant"}})
    except ConfigError as exc:
        raise ConfigError(f"base.{exc.field}", exc.message) from None
    for i, pl in enumerate(spec.regularizers):
        REGULARIZERS.get(pl.kind, field=f"base.regularizers[{i}].kind")

    methods = data.get("methods")
    if not methods:
        raise ConfigError("methods", "missing: at least one method")
    _expect(methods, dict, "methods", "a mapping of name -> method")
    bounds = input_shape = None
    if check_data:
        bounds, input_shape = _check_data_and_model(base, spec)
    for mname, entry in methods.items():
        fld = f"methods.{mname}"
        if not isinstance(mname, str) or not mname.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(fld, "method names are letters, digits, '-' and '_'")
        _expect(entry, dict, fld, "a mapping")
        ctrl_spec = entry.get("controller")
        if isinstance(ctrl_spec, dict) and ctrl_spec.get("agent_checkpoint"):
            # trials run in their own working directories: anchor a relative path here
            agent = Path(str(ctrl_spec["agent_checkpoint"])).expanduser()
            if not agent.exists():
                raise ConfigError(f"{fld}.controller.agent_checkpoint", f"{agent} does not exist")
            ctrl_spec["agent_checkpoint"] = str(agent.absolute())
        method_bounds, method_shape = bounds, input_shape
        if "base" in entry:  # the method trains a variant of base (e.g. another model option)
            _expect(entry["base"], dict, f"{fld}.base", "a mapping (a partial run spec)")
            merged = method_base(base, entry)
            try:
                mspec = parse_run_spec({**merged, "controller": {"type": "constant"}})
            except ConfigError as exc:
                raise ConfigError(f"{fld}.base.{exc.field}", exc.message) from None
            if check_data:
                try:
                    method_bounds, method_shape = _check_data_and_model(merged, mspec)
                except ConfigError as exc:
                    raise ConfigError(f"{fld}.{exc.field}", exc.message) from None
        check_method(mname, entry, trials=trials, periods=periods, bounds=method_bounds)
        METHODS.get(method_search(mname, entry)).check_base(
            mname, entry, method_base(base, entry), method_shape
        )
        bounds_here = method_bounds
        if bounds_here is not None and "controller" in entry:
            ctrl = build_controller(entry["controller"], field=f"{fld}.controller")
            ctrl.bind(bounds_here, field=f"{fld}.controller")
            ctrl.close()

    resolved = {
        "name": name,
        "seeds": seeds,
        "budget": {"periods": periods, "trials": trials},
        "base": base,
        "methods": methods,
        "tune": tune,
        "mlflow": mlflow,
    }
    if "description" in data:
        resolved["description"] = data["description"]
    return ExperimentConfig(
        name=name,
        seeds=list(seeds),
        periods=periods,
        trials=trials,
        base=base,
        methods=methods,
        tune=tune,
        mlflow=mlflow,
        raw=resolved,
    )


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def method_base(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The run spec a method's trials start from: ``base`` with the method's ``base`` merged in.

    Lists (``regularizers``) are replaced whole; a string ``model``/``dataset`` is a name.
    """
    over = dict(entry.get("base") or {})
    for key in ("model", "dataset"):
        if isinstance(over.get(key), str):
            over[key] = {"name": over[key]}
    merged_base = dict(base)
    for key in ("model", "dataset"):
        if isinstance(merged_base.get(key), str):
            merged_base[key] = {"name": merged_base[key]}
    if isinstance(over.get("model"), Mapping) and "name" in over["model"]:
        merged_base["model"] = {}  # another model: its options start fresh
    return deep_merge(merged_base, over)


def _check_data_and_model(
    base: dict[str, Any], spec: Any
) -> tuple[dict[str, tuple[float, float]], tuple[int, ...]]:
    """Load the dataset and build the model once: paths, names and shapes fail before Ray."""
    opts = dict(spec.dataset)
    dname = opts.pop("name")
    try:
        dataset_options(dname)
        data = load_dataset(dname, **opts)
        mopts = dict(spec.model)
        mname = mopts.pop("name")
        if not compatible(mname, data.input_shape):
            build_model(mname, data.input_shape, data.num_classes, **mopts)  # raises the error
        model = build_model(mname, data.input_shape, data.num_classes, **mopts)
        regs = insert_regularizers(model, spec.regularizers)
    except ConfigError as exc:
        raise ConfigError(f"base.{exc.field}", exc.message) from None
    return regs.bounds(), tuple(data.input_shape)
