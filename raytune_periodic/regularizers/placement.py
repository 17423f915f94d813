"""Insert periodic regularizers into any ``nn.Module`` and address them by group name.

A placement says *what* (``kind``), *where* and under which *name* the controller sets it:

- ``head``: before the classifier (the last ``nn.Linear``): dropout on the penultimate features;
- ``before_linear``: before every ``nn.Linear`` (for two-FC heads: on both z and x);
- ``after_bn``: after every BatchNorm layer;
- ``block_bn``: after the first BatchNorm of each residual block only (one BN+ReLU unit per block);
- ``before_relu``: before every ReLU module (torchvision's BasicBlock reuses one ReLU module twice,
  so the regularizer acts at both of its call sites);
- ``after_relu``: after every ReLU module, on the *activated* nodes (the periodic paper's noise
  injection, "into activated nodes in a hidden layer", and its dropout layers); a shared ReLU
  module is one site with two call sites, as for ``before_relu``;
- ``model``: not inserted into a layer — model-level kinds (``ModelRegularizer``: penalties,
  max-norm, EWA, augmentation) act through engine hooks; only they may use it, and only it.

``options`` (a mapping) are extra keyword arguments of the kind's constructor (e.g. ``w0`` of the
adaptive penalty).

The target module is replaced by ``nn.Sequential(target, reg)`` (after) or
``nn.Sequential(reg, target)`` (before); state-dict keys of wrapped layers gain a ``.0``/``.1``
index, consistently for every run built from the same placements.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry
from raytune_periodic.regularizers._base import PeriodicRegularizer
from raytune_periodic.regularizers.augment import Augment
from raytune_periodic.regularizers.cliff_relu import AutoReLU, CliffReLU
from raytune_periodic.regularizers.dropout import PeriodicDropout
from raytune_periodic.regularizers.model_level import ModelRegularizer, WeightEWA
from raytune_periodic.regularizers.noise import GaussianNoise
from raytune_periodic.regularizers.penalties import (
    AdaptivePenalty,
    L1Penalty,
    L2Penalty,
    MaxNorm,
)
from raytune_periodic.regularizers.sign_flip import SignFlip

REGULARIZERS: Registry[type[PeriodicRegularizer]] = Registry("regularizer")
REGULARIZERS.add("dropout", PeriodicDropout)
REGULARIZERS.add("gaussian_noise", GaussianNoise)
REGULARIZERS.add("sign_flip", SignFlip)
REGULARIZERS.add("cliff_relu", CliffReLU)
REGULARIZERS.add("auto_relu", AutoReLU)
REGULARIZERS.add("ewa", WeightEWA)
REGULARIZERS.add("l1", L1Penalty)
REGULARIZERS.add("l2", L2Penalty)
REGULARIZERS.add("adaptive_penalty", AdaptivePenalty)
REGULARIZERS.add("max_norm", MaxNorm)
REGULARIZERS.add("augment", Augment)

WHERE = ("head", "before_linear", "after_bn", "block_bn", "before_relu", "after_relu", "model")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Placement:
    """Where to put one regularizer kind, and the group name its value is set under.

    ``per_layer=True`` makes one group per inserted layer, named ``{name}_{i}`` (for controllers
    that set a value per layer: ``constant`` and ``periodic_random`` read ``name`` as all of
    them, drawing independent values); otherwise every inserted layer shares the group
    ``name``.
    """

    kind: str
    where: str = "head"
    name: str | None = None
    value: float = 0.0
    per_layer: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return self.name or self.kind


def _targets(model: nn.Module, where: str, field: str) -> list[str]:
    named = [(n, m) for n, m in model.named_modules() if n]
    if where == "head":
        linears = [n for n, m in named if isinstance(m, nn.Linear)]
        found = linears[-1:]
    elif where == "before_linear":
        found = [n for n, m in named if isinstance(m, nn.Linear)]
    elif where == "after_bn":
        found = [n for n, m in named if isinstance(m, _BN)]
    elif where == "block_bn":
        found = []
        for n, m in named:
            if hasattr(m, "bn1") and hasattr(m, "conv2") and isinstance(m.bn1, _BN):
                found.append(f"{n}.bn1")
    elif where in ("before_relu", "after_relu"):
        found = [n for n, m in named if isinstance(m, nn.ReLU)]
    else:
        raise ConfigError(
            f"{field}.where", f"unknown placement {where!r}; valid: {', '.join(WHERE)}"
        )
    if not found:
        raise ConfigError(
            f"{field}.where", f"model {type(model).__name__} has no layer for placement {where!r}"
        )
    return found


def _replace(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class RegularizerSet:
    """The regularizer modules of one model, grouped by the names controllers use."""

    def __init__(self, groups: Mapping[str, Sequence[PeriodicRegularizer]]) -> None:
        self.groups: dict[str, list[PeriodicRegularizer]] = {k: list(v) for k, v in groups.items()}

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {k: (type(v[0]).low, type(v[0]).high) for k, v in self.groups.items()}

    def kinds(self) -> dict[str, str]:
        return {k: type(v[0]).kind for k, v in self.groups.items()}

    def set_values(self, values: Mapping[str, float]) -> None:
        """Set each named group's value in place; unknown names are an error."""
        for name, value in values.items():
            if name not in self.groups:
                raise ConfigError(
                    f"values.{name}", f"no regularizer group {name!r}; groups: {self.names}"
                )
            for module in self.groups[name]:
                module.set_value(value)

    def values(self) -> dict[str, float]:
        return {k: float(v[0].value) for k, v in self.groups.items()}

    def eval_states(self) -> dict[str, float]:
        """Per group whose kind acts in evaluation, the mean ``eval_state()`` of its modules."""
        out = {}
        for name, mods in self.groups.items():
            states = [s for s in (m.eval_state() for m in mods) if s is not None]
            if states:
                out[name] = sum(states) / len(states)
        return out

    def __iter__(self) -> Iterator[PeriodicRegularizer]:
        for mods in self.groups.values():
            yield from mods

    def model_level(self) -> list[ModelRegularizer]:
        """The model-level regularizers (engine hooks), in placement order."""
        return [m for m in self if isinstance(m, ModelRegularizer)]


def _construct(cls: type[PeriodicRegularizer], pl: Placement, field: str) -> PeriodicRegularizer:
    if not isinstance(pl.options, Mapping):
        raise ConfigError(f"{field}.options", f"expected a mapping, got {pl.options!r}")
    reg = REGULARIZERS.build(pl.kind, pl.options, f"{field}.options", pl.value)
    if not isinstance(reg, PeriodicRegularizer):
        raise ConfigError(f"{field}.kind", f"{pl.kind!r} is not a PeriodicRegularizer subclass")
    return reg


def insert_regularizers(
    model: nn.Module, placements: Sequence[Placement], field: str = "regularizers"
) -> RegularizerSet:
    """Insert one regularizer module per target layer of each placement; returns their groups.

    Targets of every placement are resolved on the model *before* any insertion, so placements do
    not see each other's wrappers.
    """
    resolved = []
    for i, pl in enumerate(placements):
        cls = REGULARIZERS.get(pl.kind, field=f"{field}[{i}].kind")
        if not (isinstance(cls, type) and issubclass(cls, PeriodicRegularizer)):
            msg = f"{pl.kind!r} is not a PeriodicRegularizer subclass"
            raise ConfigError(f"{field}[{i}].kind", msg)
        cls.check(pl.value, f"{field}[{i}].value")
        _construct(cls, pl, f"{field}[{i}]")  # validates options before the model is touched
        model_level = issubclass(cls, ModelRegularizer)
        if model_level != (pl.where == "model"):
            need = "'model'" if model_level else f"a layer placement ({', '.join(WHERE[:-1])})"
            raise ConfigError(f"{field}[{i}].where", f"{pl.kind!r} needs where {need}")
        targets = [""] if model_level else _targets(model, pl.where, f"{field}[{i}]")
        resolved.append((i, pl, cls, targets))
    groups: dict[str, list[PeriodicRegularizer]] = {}
    for i, pl, cls, targets in resolved:
        for j, target in enumerate(targets):
            reg = _construct(cls, pl, f"{field}[{i}]")
            if not target:  # model-level: not inserted into the model
                groups.setdefault(pl.group, []).append(reg)
                continue
            layer = model.get_submodule(target)
            after = pl.where in ("after_bn", "block_bn", "after_relu")
            _replace(
                model, target, nn.Sequential(layer, reg) if after else nn.Sequential(reg, layer)
            )
            group = f"{pl.group}_{j}" if pl.per_layer else pl.group
            if group in groups and pl.per_layer:
                raise ConfigError(f"{field}.name", f"duplicate regularizer group {group!r}")
            groups.setdefault(group, []).append(reg)
    kinds: dict[str, set[str]] = {}
    for name, mods in groups.items():
        kinds[name] = {m.kind for m in mods}
        if len(kinds[name]) > 1:
            raise ConfigError(f"{field}.name", f"group {name!r} mixes kinds {sorted(kinds[name])}")
    return RegularizerSet(groups)
