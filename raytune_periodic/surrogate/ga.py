"""The "EA-based" comparator of the surrogate paper's Table 5: a real-coded genetic algorithm.

§3.4: "When PSO is replaced with EA optimizer, the same crossover and mutation probabilities as
the heuristic algorithm [pySOT's, the HORD code of ref. 13] are employed, where the tournament
size for the selection operation is set to 2." pySOT's ``GeneticAlgorithm`` is generational:
tournament selection, an averaging crossover of each parent pair with probability ``p_cross``
(0.9; children ``α·a + (1−α)·b`` and ``α·b + (1−α)·a``, α ~ U(0, 1)), a Gaussian mutation of each
coordinate with probability ``p_mutation`` (1/dim) and standard deviation ``sigma`` (0.2) times
the box's width, clipping to the box, and the previous generation's best individual carried
into slot 0 (elitism). Nevergrad 1.0.12 has no tournament selection (its ``EvolutionStrategy``
ranks and truncates; its only tournament is a roulette for discrete mutations), so this is a
small optimizer of its own with Nevergrad's ask/tell surface (``ask``, ``tell``,
``provide_recommendation``, candidates with ``.value``), which is all
:class:`~raytune_periodic.surrogate.optimizers.PopulationOptimizer` uses.

It works in the unit box of the active names (log10 for λ, as DE and PSO: §2.3); the first
generation is a Latin hypercube sample (§2.3). It minimises the told loss. numpy only; pickles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytune_periodic.surrogate.sparseness import SearchSpace


@dataclass
class Candidate:
    """One asked individual: its index in the generation and its values (active names)."""

    index: int
    value: dict[str, float]


def latin_hypercube(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points in [0, 1]^dim, one per stratum ``[k/n, (k+1)/n)`` in every dimension."""
    strata = np.stack([rng.permutation(n) for _ in range(dim)], axis=1)
    return (strata + rng.random((n, dim))) / n


def tournament(losses: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` winners, each the lowest loss of ``size`` individuals drawn with
    replacement."""
    competitors = rng.integers(0, len(losses), (n, size))
    return competitors[np.arange(n), np.argmin(losses[competitors], axis=1)]


def next_generation(
    population: np.ndarray,
    losses: np.ndarray,
    rng: np.random.Generator,
    size: int = 2,
    p_cross: float = 0.9,
    p_mutation: float | None = None,
    sigma: float = 0.2,
) -> np.ndarray:
    """One generation of pySOT's GA in the unit box (see the module doc)."""
    n, dim = population.shape
    half = (n + 1) // 2
    winners = population[tournament(losses, 2 * half, size, rng)]
    first, second = winners[:half].copy(), winners[half:].copy()
    cross = np.flatnonzero(rng.random(half) < p_cross)
    alpha = rng.random((len(cross), 1))
    a, b = first[cross], second[cross]
    first[cross], second[cross] = alpha * a + (1 - alpha) * b, alpha * b + (1 - alpha) * a
    children = np.concatenate([first, second])[:n]
    rate = 1.0 / dim if p_mutation is None else p_mutation
    mutate = rng.random((n, dim)) < rate
    children = np.clip(children + mutate * rng.normal(0.0, sigma, (n, dim)), 0.0, 1.0)
    children[0] = population[int(np.argmin(losses))]  # elitism
    return children


class TournamentGA:
    """Generational GA over ``space``'s active names, asked and told a generation at a time."""

    def __init__(
        self,
        space: SearchSpace,
        popsize: int,
        seed: int = 0,
        size: int = 2,
        p_cross: float = 0.9,
        p_mutation: float | None = None,
        sigma: float = 0.2,
    ) -> None:
        self.space, self.names = space, list(space.active)
        self.popsize, self.size = int(popsize), int(size)
        self.p_cross, self.p_mutation, self.sigma = float(p_cross), p_mutation, float(sigma)
        self.rng = np.random.default_rng(seed)
        self.population = latin_hypercube(self.popsize, len(self.names), self.rng)
        self.losses = np.full(self.popsize, np.inf)
        self.generation = 0
        self._asked = 0
        self.best: tuple[float, np.ndarray] | None = None

    def _values(self, unit: np.ndarray) -> dict[str, float]:
        return self.space.from_unit(dict(zip(self.names, unit.tolist(), strict=True)))

    def ask(self) -> Candidate:
        if self._asked >= self.popsize:
            raise RuntimeError("tell the whole generation before asking again")
        index, self._asked = self._asked, self._asked + 1
        return Candidate(index, self._values(self.population[index]))

    def tell(self, candidate: Candidate, loss: float) -> None:
        self.losses[candidate.index] = float(loss)
        if self.best is None or loss < self.best[0]:
            self.best = (float(loss), self.population[candidate.index].copy())
        if candidate.index == self.popsize - 1:  # the generation is complete
            self.population = next_generation(
                self.population, self.losses, self.rng, self.size, self.p_cross,
                self.p_mutation, self.sigma,
            )  # fmt: skip
            self.losses = np.full(self.popsize, np.inf)
            self.generation, self._asked = self.generation + 1, 0

    def provide_recommendation(self) -> Candidate:
        """The best individual told so far (the first one before any tell)."""
        unit = self.population[0] if self.best is None else self.best[1]
        return Candidate(-1, self._values(unit))


__all__ = ["Candidate", "TournamentGA", "latin_hypercube", "next_generation", "tournament"]
