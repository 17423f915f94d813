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
from pathlib import Path
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.executors import EXECUTORS
from raytune_periodic.surrogate.networks import EtaWeights, parse_conv
from raytune_periodic.surrogate.objective import KAPPA
from raytune_periodic.surrogate.optimizers import OptimizerOptions
from raytune_periodic.surrogate.sparseness import HypParaSet, SearchSpace
from raytune_periodic.surrogate.training import SolverOptions
from raytune_periodic.training.engine import resolve_device
from raytune_periodic.validation import boolean, choice, known_keys, mapping, number, string

EVALUATE_ON = ("surrogate", "original")


@dataclass
class SurrogateHPOConfig:
    """Options of Algorithm 1; defaults are the paper's (§3.1) where it gives one."""

    model: str = "lenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "pso"  #: "de" (DE/rand/1/bin), "pso" or "ga" (Table 5's EA)
    popsize: int = 6
    F: float = 0.1
    CR: float = 0.6
    omega: float = 0.6
    phip: float = 0.2
    phig: float = 0.9
    tournament: int = 2  #: GA: tournament size (§3.4)
    p_cross: float = 0.9  #: GA: crossover probability (pySOT's, §3.4)
    p_mutation: float | None = None  #: GA: per-coordinate mutation probability (None: 1/dim)
    sigma: float = 0.2  #: GA: mutation std in units of the box's width
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
    x_before_activation: bool = True  #: x = Vᵀz before FC1's activation, as Table 1 defines it
    pretrained: str | None = None  #: a state dict the original starts from (Algorithm 1, line 4)
    pretrained_strict: bool = False  #: every tensor must match (else only matching ones load)
    device: str = "cpu"
    seed: int = 0

    @property
    def iterations(self) -> int:
        return int(math.floor(self.max_iter_epochs / self.ni_epochs + 1e-9))

    def optimizer_options(self) -> OptimizerOptions:
        return OptimizerOptions(
            self.optimizer, self.popsize, self.F, self.CR, self.omega, self.phip, self.phig,
            self.tournament, self.p_cross, self.p_mutation, self.sigma,
        )  # fmt: skip

    def validate(self, field: str = "surrogate") -> SurrogateHPOConfig:
        self.search.validate(f"{field}.search")
        self.optimizer_options().validate(field)
        self.solver.validate(f"{field}.solver")
        for key in ("ni_epochs", "max_iter_epochs", "kappa"):
            number(getattr(self, key), f"{field}.{key}", 0.0, low_open=key != "kappa")
        if self.iterations < 1:
            raise ConfigError(
                f"{field}.max_iter_epochs",
                f"MaxIter {self.max_iter_epochs} < NI {self.ni_epochs}: no iteration",
            )
        for name in ("x", "z", "w", "v"):
            number(getattr(self.eta, name), f"{field}.eta.{name}", 0.0)
        choice(self.evaluate_on, f"{field}.evaluate_on", EVALUATE_ON)
        choice(self.executor, f"{field}.executor", EXECUTORS)
        boolean(self.inverted_dropout, f"{field}.inverted_dropout")
        boolean(self.x_before_activation, f"{field}.x_before_activation")
        boolean(self.pretrained_strict, f"{field}.pretrained_strict")
        if self.pretrained is not None:
            path = Path(string(self.pretrained, f"{field}.pretrained")).expanduser()
            if not path.is_file():
                raise ConfigError(f"{field}.pretrained", f"{path} does not exist")
            self.pretrained = str(path.absolute())  # trials run in their own directories
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
    values = mapping(data, field)
    known_keys(values, (f.name for f in fields(cls)), field)
    if tuples:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "fixed" in values:
            values["fixed"] = HypParaSet.from_dict(values["fixed"], f"{field}.fixed")
    return cls(**values)


__all__ = ["EVALUATE_ON", "SurrogateHPOConfig"]
