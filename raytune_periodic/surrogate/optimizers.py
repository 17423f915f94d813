"""Nevergrad's DE and PSO (and a GA) for the sparseness hyperparameters (§2.3, §3.1, §3.4), in
populations.

- **DE/rand/1/bin** (F = 0.1, CR = 0.6): :class:`~raytune_periodic.surrogate.de_rand1.DERand1Bin`,
  a thin extension of Nevergrad's DE (Nevergrad has no rand/1), with Nevergrad's LHS
  initialisation.
- **PSO** (w = 0.6, c1 = 0.2, c2 = 0.9): ``ng.families.ConfPSO(popsize, omega, phip, phig)``. It has
  no LHS option, so its first population is an LHS sample (Nevergrad's ``LHSSearch``) fed through
  ``suggest``.

- **GA** (Table 5's "EA-based" comparator: tournament size 2, pySOT's p_cross 0.9 and p_mutation
  1/dim): :class:`~raytune_periodic.surrogate.ga.TournamentGA` (Nevergrad has no tournament
  selection), LHS initialisation.

DE and PSO search ``ng.p.Log`` λ and bounded ``ng.p.Scalar`` p (:func:`de_rand1.parametrization`);
the GA the same box in log10 λ.
:class:`PopulationOptimizer` asks a whole population, then tells it (never more than ``popsize``
asks before the tells: ng#1461), and maximises the objective (Nevergrad minimises ``−obj``).
Nevergrad is imported when an optimizer is built, not when this module is imported.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.ga import TournamentGA
from raytune_periodic.surrogate.sparseness import HypParaSet, SearchSpace
from raytune_periodic.validation import choice, integer, number

OPTIMIZERS = ("de", "pso", "ga")
#: loss told for a candidate whose objective is not finite (a diverged training)
WORST_LOSS = 1e6


@dataclass
class OptimizerOptions:
    """Which optimizer and its coefficients (defaults: §3.1)."""

    name: str = "pso"  #: "de" (DE/rand/1/bin), "pso" or "ga"
    popsize: int = 6
    F: float = 0.1  #: DE mutation factor
    CR: float = 0.6  #: DE crossover probability
    omega: float = 0.6  #: PSO inertia w
    phip: float = 0.2  #: PSO personal-best weight c1
    phig: float = 0.9  #: PSO global-best weight c2
    tournament: int = 2  #: GA tournament size (§3.4)
    p_cross: float = 0.9  #: GA crossover probability (pySOT's)
    p_mutation: float | None = None  #: GA per-coordinate mutation probability (None: 1/dim)
    sigma: float = 0.2  #: GA mutation std, in units of the box's width (pySOT's)

    def validate(self, field: str = "search") -> OptimizerOptions:
        choice(self.name, f"{field}.optimizer", OPTIMIZERS)
        p = integer(self.popsize, f"{field}.popsize", 1)
        if self.name == "de" and p < 4:
            raise ConfigError(
                f"{field}.popsize", f"DE/rand/1 needs a population >= 4 (r0, r1, r2 != i), got {p}"
            )
        if self.name == "ga" and p < 2:
            raise ConfigError(f"{field}.popsize", f"a GA needs a population >= 2, got {p}")
        for key, hi in (("F", 2.0), ("CR", 1.0), ("omega", 2.0), ("phip", 4.0), ("phig", 4.0)):
            number(getattr(self, key), f"{field}.{key}", 0.0, hi)
        integer(self.tournament, f"{field}.tournament", 1)
        number(self.p_cross, f"{field}.p_cross", 0.0, 1.0)
        number(self.sigma, f"{field}.sigma", 0.0, 1.0)
        if self.p_mutation is not None:
            number(self.p_mutation, f"{field}.p_mutation", 0.0, 1.0)
        return self


class PopulationOptimizer:
    """A Nevergrad DE/PSO over a :class:`SearchSpace`, asked and told a population at a time."""

    def __init__(
        self,
        space: SearchSpace,
        options: OptimizerOptions | None = None,
        seed: int = 0,
        field: str = "search",
    ) -> None:
        self.space = space.validate(field)
        self.options = (options or OptimizerOptions()).validate(field)
        self.popsize = self.options.popsize
        self._pending: list[Any] = []
        o = self.options
        if o.name == "ga":
            self.optimizer: Any = TournamentGA(
                space, o.popsize, seed, o.tournament, o.p_cross, o.p_mutation, o.sigma
            )
            return
        from raytune_periodic.surrogate import de_rand1

        ng = de_rand1.ng
        conf: Any
        if o.name == "de":
            conf = de_rand1.DERand1Bin(F=o.F, CR=o.CR, popsize=o.popsize)
        else:
            conf = ng.families.ConfPSO(popsize=o.popsize, omega=o.omega, phip=o.phip, phig=o.phig)
        self.optimizer = conf(
            de_rand1.parametrization(space, seed), budget=None, num_workers=o.popsize
        )
        if o.name == "pso":
            self._suggest_lhs(seed)

    def _suggest_lhs(self, seed: int) -> None:
        from raytune_periodic.surrogate import de_rand1

        param = de_rand1.parametrization(self.space, seed + 1)
        lhs = de_rand1.ng.optimizers.LHSSearch(param, budget=self.popsize)
        points = [lhs.ask().value for _ in range(self.popsize)]
        for value in reversed(points):  # suggestions are asked last-in first-out
            self.optimizer.suggest(value)

    @property
    def pending(self) -> int:
        """Candidates asked and not yet told."""
        return len(self._pending)

    def ask_population(self) -> list[HypParaSet]:
        """The next ``popsize`` candidates (the previous population must have been told)."""
        if self._pending:
            raise RuntimeError("tell_population() the previous population before asking again")
        self._pending = [self.optimizer.ask() for _ in range(self.popsize)]
        return [self.space.complete(c.value) for c in self._pending]

    def tell_population(self, objectives: Sequence[float]) -> None:
        """Objectives (larger is better) of the asked population, in the asked order."""
        if len(objectives) != len(self._pending):
            raise ValueError(f"expected {len(self._pending)} objectives, got {len(objectives)}")
        for candidate, obj in zip(self._pending, objectives, strict=True):
            loss = -float(obj) if math.isfinite(obj) else WORST_LOSS
            self.optimizer.tell(candidate, loss)
        self._pending = []

    def recommend(self) -> HypParaSet:
        return self.space.complete(self.optimizer.provide_recommendation().value)

    def state_dict(self) -> dict[str, Any]:
        """The pickled Nevergrad optimizer (RNG included); only between populations."""
        if self._pending:
            raise RuntimeError("cannot checkpoint with a population asked but not told")
        return {"optimizer": pickle.dumps(self.optimizer), "name": self.options.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer = pickle.loads(state["optimizer"])
        self._pending = []


__all__ = ["OPTIMIZERS", "WORST_LOSS", "OptimizerOptions", "PopulationOptimizer"]
