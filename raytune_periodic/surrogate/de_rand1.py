"""DE/rand/1/bin as a thin extension of Nevergrad's differential evolution (eq. 12).

Nevergrad 1.0.12's DE only builds current-to-best donors ``x_i + F1·(x_a − x_b) + F2·(x_best −
x_i)`` (a, b drawn with replacement). :class:`DERand1Bin` is a configured Nevergrad DE whose
optimizer class :class:`_DERand1Bin` overrides one method, ``_internal_ask_candidate``, after the
initialisation phase: it draws ``r0, r1, r2`` mutually distinct and different from the target
``i`` (so a population needs ≥ 4), builds the donor ``x_r0 + F·(x_r1 − x_r2)`` and applies
Nevergrad's own binomial ``Crossover`` (donor coordinate kept when ``u ≤ CR`` or ``j = j_rand``).
Everything else is Nevergrad's: the parametrization and its bounds, LHS initialisation, ask/tell,
the greedy one-to-one selection ``X_i ← U_i if loss(U_i) ≤ loss(X_i)``, recommendation, pickling.
The arithmetic runs in Nevergrad's standardized space, an affine image of (log10 λ, p) for the
parametrization below, so eq. 12 holds in the log scale the paper asks for (§2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.sparseness import SearchSpace

ng = require("nevergrad")
from nevergrad.optimization import base as ng_base  # noqa: E402
from nevergrad.optimization.differentialevolution import (  # noqa: E402
    _DE,
    Crossover,
    DifferentialEvolution,
)


@dataclass
class Rand1Draw:
    """One DE/rand/1/bin trial: the parents ``(r0, r1, r2)``, the donor and the trial vector."""

    parents: tuple[int, int, int]
    donor: np.ndarray
    trial: np.ndarray


def rand1_bin(
    population: np.ndarray, target: int, F: float, CR: float, rng: np.random.RandomState
) -> Rand1Draw:
    """Eq. 12 for individual ``target`` of ``population`` (n × d), drawing from ``rng``.

    Draw order (what a test replays): ``rng.choice(others, 3, replace=False)`` for r0, r1, r2,
    then Nevergrad's ``Crossover.variablewise``: ``j_rand = rng.randint(d)`` and one
    ``rng.uniform(0, 1)`` per coordinate ``j != j_rand``.
    """
    n = len(population)
    if n < 4:
        raise ValueError(f"DE/rand/1 needs a population of at least 4, got {n}")
    others = np.array([k for k in range(n) if k != target])
    r0, r1, r2 = (int(k) for k in rng.choice(others, size=3, replace=False))
    donor = population[r0] + F * (population[r1] - population[r2])
    trial = donor.copy()
    Crossover(rng, float(CR)).apply(trial, np.array(population[target], copy=True))
    return Rand1Draw((r0, r1, r2), donor, trial)


class _DERand1Bin(_DE):
    """Nevergrad's DE with the rand/1 donor (see the module doc)."""

    def _internal_ask_candidate(self) -> Any:
        if len(self.population) < self.llambda:  # initialisation phase (LHS): Nevergrad's
            return super()._internal_ask_candidate()
        lineage = self._uid_queue.ask()
        uids = list(self.population)
        ref = self.parametrization
        pop = np.array([self.population[u].get_standardized_data(reference=ref) for u in uids])
        draw = rand1_bin(
            pop, uids.index(lineage), self._config.F1, self._config.crossover, self._rng
        )
        candidate = self.population[lineage].spawn_child()
        candidate.heritage["lineage"] = lineage
        candidate.parents_uids.extend(uids[k] for k in draw.parents)
        candidate.set_standardized_data(draw.trial, reference=ref)
        return candidate


class DERand1Bin(DifferentialEvolution):
    """Configured DE/rand/1/bin: ``DERand1Bin(F=0.1, CR=0.6, popsize=6)(parametrization)``."""

    def __init__(
        self,
        *,
        F: float = 0.1,
        CR: float = 0.6,
        popsize: int = 6,
        initialization: str = "LHS",
        recommendation: str = "optimistic",
    ) -> None:
        if popsize < 4:
            raise ConfigError("search.popsize", f"DE/rand/1 needs a population >= 4, got {popsize}")
        ng_base.ConfiguredOptimizer.__init__(self, _DERand1Bin, locals(), as_config=True)
        self.F, self.CR = float(F), float(CR)
        # the attributes Nevergrad's _DE reads from its configuration
        self.initialization = initialization
        self.scale = 1.0
        self.recommendation = recommendation
        self.crossover = float(CR)
        self.F1, self.F2 = float(F), 0.0
        self.popsize = int(popsize)
        self.propagate_heritage = False
        self.multiobjective_adaptation = False
        self.high_speed = False


def parametrization(space: SearchSpace, seed: int) -> Any:
    """``ng.p.Dict`` of the active names: ``ng.p.Log`` for λ, bounded ``ng.p.Scalar`` for p."""
    params = {}
    for name in space.active:
        lo, hi = space.bounds(name)
        params[name] = (
            ng.p.Log(lower=lo, upper=hi) if space.is_log(name) else ng.p.Scalar(lower=lo, upper=hi)
        )
    param = ng.p.Dict(**params)
    param.random_state.seed(int(seed) % 2**32)
    return param


__all__ = ["DERand1Bin", "Rand1Draw", "parametrization", "rand1_bin"]
