"""One training run described as plain data (``RunSpec``) and built into a ``PeriodEngine``.

A run spec is what an experiment config resolves to per trial::

    {"dataset": {"name": "digits", "train_size": 500, "label_noise": 0.3},
     "model": {"name": "mlp", "hidden": [512, 512]},
     "regularizers": [{"kind": "dropout", "where": "head", "value": 0.0}],
     "controller": {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}},
     "train": {"period_length": 20, "periods": 100, "seed": 0}}

The dataset's split/noise seed defaults to ``train.seed``, so methods compared at the same seed
see the same split.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from raytune_periodic.controllers import build_controller
from raytune_periodic.data import load_dataset
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.registry import install_plugins
from raytune_periodic.regularizers import WHERE, Placement, insert_regularizers
from raytune_periodic.training.engine import PeriodEngine, TrainOptions
from raytune_periodic.validation import boolean, choice, known_keys, mapping, sequence

_PLACEMENT_KEYS = {f.name for f in fields(Placement)}
_TRAIN_KEYS = {f.name for f in fields(TrainOptions)}


@dataclass
class RunSpec:
    dataset: dict[str, Any]
    model: dict[str, Any]
    regularizers: list[Placement] = field(default_factory=list)
    controller: dict[str, Any] = field(default_factory=lambda: {"type": "constant"})
    train: TrainOptions = field(default_factory=TrainOptions)


def _named(section: Any, field_name: str) -> dict[str, Any]:
    if isinstance(section, str):
        section = {"name": section}
    section = mapping(section, field_name, "a mapping with 'name'")
    if "name" not in section:
        raise ConfigError(f"{field_name}.name", "missing")
    return section


def parse_placements(items: Any, field_name: str = "regularizers") -> list[Placement]:
    if items is None:
        return []
    out = []
    for i, raw in enumerate(sequence(items, field_name)):
        f = f"{field_name}[{i}]"
        item = mapping(raw, f)
        known_keys(item, _PLACEMENT_KEYS, f)
        if "kind" not in item:
            raise ConfigError(f"{f}.kind", "missing")
        choice(item.get("where", "head"), f"{f}.where", WHERE)
        if "per_layer" in item:
            boolean(item["per_layer"], f"{f}.per_layer")
        out.append(Placement(**item))
    names = [p.group for p in out if not p.per_layer]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(field_name, f"duplicate group names {sorted(dup)}: give each a 'name'")
    return out


def parse_train(section: Any, field_name: str = "train") -> TrainOptions:
    section = mapping(section or {}, field_name)
    known_keys(section, _TRAIN_KEYS, field_name)
    return TrainOptions(**section).validate(field_name)


def parse_run_spec(data: Mapping[str, Any]) -> RunSpec:
    """Validate the shape of a run spec (names are checked when it is built)."""
    known_keys(data, ("dataset", "model", "regularizers", "controller", "train"), "")
    controller = data.get("controller") or {"type": "constant"}
    return RunSpec(
        dataset=_named(data.get("dataset", "digits"), "dataset"),
        model=_named(data.get("model", "mlp"), "model"),
        regularizers=parse_placements(data.get("regularizers")),
        controller=mapping(controller, "controller", "a mapping with 'type'"),
        train=parse_train(data.get("train")),
    )


def load_data(spec: RunSpec) -> DataSplits:
    opts = dict(spec.dataset)
    name = opts.pop("name")
    opts.setdefault("seed", spec.train.seed)
    return load_dataset(name, **opts)


def build_engine(
    spec: RunSpec | Mapping[str, Any], data: DataSplits | None = None, controller: Any = None
) -> PeriodEngine:
    """Build model (seeded by ``train.seed``), regularizers, controller and engine from a spec.

    ``data`` may be passed to reuse already-loaded splits; ``controller`` overrides the spec's
    (for integrations such as the PPO bridge that build their own).
    """
    if not isinstance(spec, RunSpec):
        spec = parse_run_spec(spec)
    data = data if data is not None else load_data(spec)
    model_opts = dict(spec.model)
    name = model_opts.pop("name")
    torch.manual_seed(spec.train.seed)
    model = build_model(name, data.input_shape, data.num_classes, **model_opts)
    regs = insert_regularizers(model, spec.regularizers)
    if controller is None:
        controller = build_controller(spec.controller, seed=spec.train.seed)
    torch.manual_seed(spec.train.seed + 1)
    return PeriodEngine(model, data, regs, controller, spec.train)


def trial_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run spec of one trial: the method's spec with its seed, budget and searched values.

    The dataset split and label noise use the experiment seed (paired across methods); the model
    initialisation and the controller use ``seed * 1000 + replicate``.
    """
    rp = config["rp"]
    install_plugins(rp.get("plugins") or {})  # names the driver registered (a Ray worker)
    spec = copy.deepcopy(rp["spec"])
    seed, replicate = int(rp["seed"]), int(rp.get("replicate", 0))
    spec["dataset"] = {"seed": seed, **spec.get("dataset", {})}
    spec["train"] = {**spec.get("train", {}), "periods": rp["periods"]}
    spec["train"]["seed"] = seed * 1000 + replicate
    values = config.get("values")
    if values:
        spec["controller"] = {
            "type": "constant",
            "values": {k: float(v) for k, v in values.items()},
        }
    return spec
