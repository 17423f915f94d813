"""Options of Algorithm 1 (:class:`SurrogateHPOConfig`), validated with one-line errors.

``SurrogateHPOConfig.from_dict`` reads plain (YAML) data: nested ``search`` (a
:class:`~raytune_periodic.surrogate.sparseness.SearchSpace`), ``solver``
(:class:`~raytune_periodic.surrogate.training.SolverOptions`), ``eta``
(:class:`~raytune_periodic.surrogate.networks.EtaWeights`) and ``initial`` (a HypParaSet mapping);
unknown keys are errors naming the field. Importing it needs neither Nevergrad nor Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.executors import EXECUTORS
from raytune_periodic.surrogate.networks import EtaWeights, parse_conv
from raytune_periodic.surrogate.objective import KAPPA
from raytune_periodic.surrogate.optimizers import OptimizerOptions
from raytune_periodic.surrogate.sparseness import HypParaSet, SearchSpace
from raytune_periodic.surrogate.training import SolverOptions
from raytune_periodic.training.engine import resolve_device

EVALUATE_ON = ("surrogate", "original")


@dataclass
class SurrogateHPOConfig:
    """Options of Algorithm 1; defaults are the paper's (§3.1) where it gives one."""

    model: str = "lenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "pso"  #: "de" (DE/rand/1/bin) or "pso"
    popsize: int = 6
    F: float = 0.1
    CR: float = 0.6
    omega: float = 0.6
    phip: float = 0.2
    phig: float = 0.9
    ni_epochs: float = 1.0  #: NI: epochs per iteration (of the original and of each candidate)
    max_iter_epochs: float = 10.0  #: MaxIter in epochs: iterations = floor(MaxIter / NI)
    search: SearchSpace = field(default_factory=SearchSpace)
    initial: HypParaSet | None = None  #: X_ib at t = 0 (default: the centre of the search box)
    solver: SolverOptions = field(default_factory=SolverOptions)
    kappa: float = KAPPA
    eta: EtaWeights = field(default_factory=EtaWeights)
    conv: Any = "auto"  #: surrogate convolution (num_output, kernel, stride, pad) or "auto"
    evaluate_on: str = "surrogate"  #: "original" = EA without surrogate
    executor: str = "auto"  #: "auto" (Ray if initialised), "ray" or "serial"
    cpus_per_candidate: float = 0.5
    gpus_per_candidate: float = 0.0
    inverted_dropout: bool = True
    device: str = "cpu"
    seed: int = 0

    @property
    def iterations(self) -> int:
        return int(math.floor(self.max_iter_epochs / self.ni_epochs + 1e-9))

    def optimizer_options(self) -> OptimizerOptions:
        return OptimizerOptions(
            self.optimizer, self.popsize, self.F, self.CR, self.omega, self.phip, self.phig
        )

    def validate(self, field: str = "surrogate") -> SurrogateHPOConfig:
        self.search.validate(f"{field}.search")
        self.optimizer_options().validate(field)
        self.solver.validate(f"{field}.solver")
        for key in ("ni_epochs", "max_iter_epochs", "kappa"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"{field}.{key}", f"must be a finite number, got {v!r}")
            if v < 0 or (v == 0 and key != "kappa"):
                raise ConfigError(f"{field}.{key}", f"must be > 0, got {v}")
        if self.iterations < 1:
            raise ConfigError(
                f"{field}.max_iter_epochs",
                f"MaxIter {self.max_iter_epochs} < NI {self.ni_epochs}: no iteration",
            )
        for name in ("x", "z", "w", "v"):
            v = getattr(self.eta, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{field}.eta.{name}", f"must be a number >= 0, got {v!r}")
        if self.evaluate_on not in EVALUATE_ON:
            raise ConfigError(f"{field}.evaluate_on", f"unknown {self.evaluate_on!r}; valid: "
                              "surrogate, original")  # fmt: skip
        if self.executor not in EXECUTORS:
            raise ConfigError(f"{field}.executor", f"unknown {self.executor!r}; valid: {EXECUTORS}")
        parse_conv(self.conv, f"{field}.conv")
        if self.initial is not None:
            self.initial = HypParaSet.from_dict(self.initial, f"{field}.initial")
        resolve_device(self.device, f"{field}.device")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: str = "surrogate") -> SurrogateHPOConfig:
        """From plain data (YAML): nested ``search``, ``solver``, ``eta``, ``initial`` mappings."""
        nested: dict[str, Callable[[Any], Any]] = {
            "search": lambda d: _build(SearchSpace, d, f"{field}.search", tuples=True),
            "solver": lambda d: _build(SolverOptions, d, f"{field}.solver"),
            "eta": lambda d: _build(EtaWeights, d, f"{field}.eta"),
            "initial": lambda d: None if d is None else HypParaSet.from_dict(d, f"{field}.initial"),
        }
        kwargs = {k: nested[k](v) if k in nested else v for k, v in dict(data).items()}
        return _build(cls, kwargs, field).validate(field)


def _build(cls: Any, data: Any, field: str, tuples: bool = False) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(field, f"expected a mapping, got {data!r}")
    valid = {f.name for f in fields(cls)}
    for key in data:
        if key not in valid:
            raise ConfigError(f"{field}.{key}", f"unknown key; valid: {', '.join(sorted(valid))}")
    values = dict(data)
    if tuples:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "fixed" in values:
            values["fixed"] = HypParaSet.from_dict(values["fixed"], f"{field}.fixed")
    return cls(**values)


__all__ = ["EVALUATE_ON", "SurrogateHPOConfig"]
