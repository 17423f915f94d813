"""Surrogate paper §2.3: DE/rand/1/bin (eq. 12) on Nevergrad, PSO (eq. 13) settings, LHS; §3.4's
GA (Table 5's EA-based comparator: tournament size 2)."""

from __future__ import annotations

import numpy as np
import pytest

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.de_rand1 import DERand1Bin, rand1_bin
from raytune_periodic.surrogate.ga import TournamentGA, next_generation, tournament
from raytune_periodic.surrogate.optimizers import OptimizerOptions, PopulationOptimizer
from raytune_periodic.surrogate.sparseness import NAMES, HypParaSet, SearchSpace


def unit_matrix(space: SearchSpace, population: list[HypParaSet]) -> np.ndarray:
    return np.array([[space.to_unit(h)[k] for k in space.active] for h in population])


def sphere(u: np.ndarray) -> list[float]:
    return [-float(np.sum((row - 0.3) ** 2)) for row in u]


# ----------------------------------------------------------------------------- eq. 12
def test_rand1_bin_formula_on_a_fixed_rng() -> None:
    pop = np.random.RandomState(0).normal(size=(6, 8))
    draw = rand1_bin(pop, 2, F=0.1, CR=0.6, rng=np.random.RandomState(42))
    # replay the documented draws: r0, r1, r2 among the others, then Nevergrad's binomial crossover
    ref = np.random.RandomState(42)
    r0, r1, r2 = ref.choice([0, 1, 3, 4, 5], size=3, replace=False)
    j_rand = ref.randint(8)
    u = {j: ref.uniform(0, 1) for j in range(8) if j != j_rand}
    donor = pop[r0] + 0.1 * (pop[r1] - pop[r2])
    expected = np.array([donor[j] if j == j_rand or u[j] <= 0.6 else pop[2, j] for j in range(8)])
    assert draw.parents == (r0, r1, r2)
    assert np.allclose(draw.donor, donor) and np.allclose(draw.trial, expected)
    assert 0 < sum(j == j_rand or u[j] <= 0.6 for j in range(8)) < 8  # a real mixture here


def test_rand1_bin_parents_are_distinct_and_crossover_extremes() -> None:
    rng = np.random.RandomState(1)
    pop = rng.normal(size=(4, 5))
    for target in range(4):
        for _ in range(50):
            draw = rand1_bin(pop, target, 0.5, 0.6, rng)
            assert len({*draw.parents, target}) == 4
    full = rand1_bin(pop, 0, 0.5, 1.0, rng)
    assert np.allclose(full.trial, full.donor)  # CR = 1: the donor
    none = rand1_bin(pop, 0, 0.5, 0.0, rng)
    assert np.sum(np.isclose(none.trial, none.donor) & ~np.isclose(none.donor, pop[0])) == 1
    with pytest.raises(ValueError):
        rand1_bin(pop[:3], 0, 0.5, 0.5, rng)


def test_nevergrad_de_asks_rand1_trials_and_selects_greedily() -> None:
    space = SearchSpace()
    opt = PopulationOptimizer(space, OptimizerOptions("de", popsize=6, F=0.1, CR=0.6), seed=3)
    ng_opt = opt.optimizer
    assert type(ng_opt).__name__ == "_DERand1Bin" and ng_opt.llambda == 6
    assert (ng_opt._config.F1, ng_opt._config.F2, ng_opt._config.crossover) == (0.1, 0.0, 0.6)
    first = opt.ask_population()
    opt.tell_population(sphere(unit_matrix(space, first)))
    ref = ng_opt.parametrization
    uids = list(ng_opt.population)
    parents = np.array([ng_opt.population[u].get_standardized_data(reference=ref) for u in uids])
    target = uids.index(ng_opt._uid_queue.told[0])
    rng = np.random.RandomState()
    rng.set_state(ng_opt._rng.get_state())
    expected = rand1_bin(parents, target, 0.1, 0.6, rng).trial
    candidate = ng_opt.ask()
    want = ref.spawn_child().set_standardized_data(expected)
    assert candidate.value == pytest.approx(want.value)
    assert candidate.heritage["lineage"] == uids[target]
    # greedy one-to-one selection: a worse trial leaves its target in the population
    ng_opt.tell(candidate, 1e9)
    assert ng_opt.population[uids[target]].uid == uids[target]


def test_de_population_search_improves_a_toy_objective() -> None:
    space = SearchSpace()
    opt = PopulationOptimizer(space, OptimizerOptions("de"), seed=0)
    best = []
    for _ in range(25):
        pop = opt.ask_population()
        scores = sphere(unit_matrix(space, pop))
        opt.tell_population(scores)
        best.append(max(scores))
    assert max(best[-5:]) > max(best[:1])
    assert isinstance(opt.recommend(), HypParaSet)


# ----------------------------------------------------------------------------- eq. 13
def test_pso_parameters_reach_nevergrad_and_drive_the_velocity() -> None:
    space = SearchSpace()
    opt = PopulationOptimizer(space, OptimizerOptions("pso", popsize=6), seed=4)
    ng_opt = opt.optimizer
    cfg = ng_opt._config
    assert type(ng_opt).__name__ == "_PSO" and ng_opt.llambda == 6
    assert (cfg.omega, cfg.phip, cfg.phig, cfg.popsize) == (0.6, 0.2, 0.9, 6)
    opt.tell_population(sphere(unit_matrix(space, opt.ask_population())))
    ref = ng_opt.parametrization
    particle = ng_opt.population[ng_opt._uid_queue.told[0]]
    x = particle.get_standardized_data(reference=ref)
    p_best = particle.heritage.get("best_parent", particle).get_standardized_data(reference=ref)
    g_best = ng_opt._best.get_standardized_data(reference=ref)
    rng = np.random.RandomState()
    rng.set_state(ng_opt._rng.get_state())
    rp, rg = rng.uniform(0, 1, size=8), rng.uniform(0, 1, size=8)
    speed = 0.6 * particle.heritage["speed"] + 0.2 * rp * (p_best - x) + 0.9 * rg * (g_best - x)
    assert np.allclose(ng_opt.ask().heritage["speed"], speed)


# ----------------------------------------------------------------------------- §3.4's GA
def test_tournament_of_two_keeps_the_better_of_two_random_draws() -> None:
    losses = np.array([3.0, 0.0, 2.0, 1.0])
    winners = tournament(losses, 1000, 2, np.random.default_rng(0))
    ref = np.random.default_rng(0).integers(0, 4, (1000, 2))
    assert np.array_equal(winners, np.where(losses[ref[:, 0]] <= losses[ref[:, 1]], *ref.T))
    # the worst individual wins only against itself: P = 1/16
    assert np.mean(winners == 0) == pytest.approx(1 / 16, abs=0.02)


def test_ga_generation_crosses_averages_mutates_and_keeps_the_elite() -> None:
    rng = np.random.default_rng(1)
    pop, losses = rng.random((6, 4)), np.array([5.0, 4.0, 0.5, 3.0, 2.0, 1.0])
    # p_cross 1, no mutation: each pair's children are α·a + (1−α)·b and α·b + (1−α)·a
    kids = next_generation(pop, losses, np.random.default_rng(2), 2, 1.0, 0.0)
    replay = np.random.default_rng(2)
    winners = pop[tournament(losses, 6, 2, replay)]
    assert np.array_equal(kids[0], pop[2])  # elitism: the best individual in slot 0
    assert np.allclose(kids[1:3] + kids[4:6], winners[1:3] + winners[4:6])  # pair sums kept
    assert not np.allclose(kids[1:3], winners[1:3])
    mutated = next_generation(pop, losses, np.random.default_rng(3), 2, 0.0, 1.0, 0.2)
    assert ((mutated >= 0) & (mutated <= 1)).all()  # clipped to the box
    assert TournamentGA(SearchSpace(), 6).p_mutation is None  # pySOT's 1/dim


def test_ga_population_search_improves_and_checkpoints() -> None:
    space = SearchSpace()
    opt = PopulationOptimizer(space, OptimizerOptions("ga", popsize=6), seed=0)
    assert isinstance(opt.optimizer, TournamentGA) and opt.optimizer.size == 2
    best = []
    for _ in range(25):
        scores = sphere(unit_matrix(space, opt.ask_population()))
        opt.tell_population(scores)
        best.append(max(scores))
    assert best == sorted(best) and best[-1] > best[0]  # the elite is carried: never worse
    twin = PopulationOptimizer(space, OptimizerOptions("ga", popsize=6), seed=9)
    twin.load_state_dict(opt.state_dict())
    assert twin.ask_population() == opt.ask_population()
    assert opt.recommend() == twin.recommend()


# ----------------------------------------------------------------------------- LHS
@pytest.mark.parametrize("name", ["de", "pso", "ga"])
def test_first_population_is_latin_hypercube(name: str) -> None:
    space = SearchSpace()
    for seed in range(3):
        opt = PopulationOptimizer(space, OptimizerOptions(name, popsize=6), seed=seed)
        u = unit_matrix(space, opt.ask_population())  # log10 scale for λ
        assert u.shape == (6, len(NAMES))
        for column in np.floor(u * 6).T:  # one sample per stratum, per dimension
            assert sorted(column.astype(int)) == list(range(6))


# ----------------------------------------------------------------------------- batching, errors
def test_population_batching_and_checkpoint() -> None:
    space = SearchSpace(active=("lam_x", "p_z", "p_x"), fixed=HypParaSet(p_w=0.1))
    opt = PopulationOptimizer(space, OptimizerOptions("pso"), seed=5)
    pop = opt.ask_population()
    assert all(h.p_w == 0.1 and h.lam_z == 0.0 for h in pop)
    with pytest.raises(RuntimeError):
        opt.ask_population()  # never more than popsize asks before telling (ng#1461)
    with pytest.raises(RuntimeError):
        opt.state_dict()
    with pytest.raises(ValueError):
        opt.tell_population([0.0])
    opt.tell_population([0.5, float("nan"), 0.1, 0.2, 0.3, 0.4])
    state = opt.state_dict()
    twin = PopulationOptimizer(space, OptimizerOptions("pso"), seed=99)
    twin.load_state_dict(state)
    assert twin.ask_population() == opt.ask_population()


def test_optimizer_config_errors_are_one_line() -> None:
    for options, field in (
        (OptimizerOptions("de", popsize=3), "search.popsize"),
        (OptimizerOptions("pso", popsize=0), "search.popsize"),
        (OptimizerOptions("cma"), "search.optimizer"),
        (OptimizerOptions("ga", popsize=1), "search.popsize"),
        (OptimizerOptions("ga", p_cross=1.5), "search.p_cross"),
        (OptimizerOptions("ga", tournament=0), "search.tournament"),
        (OptimizerOptions("de", CR=1.5), "search.CR"),
    ):
        with pytest.raises(ConfigError) as err:
            PopulationOptimizer(SearchSpace(), options)
        assert err.value.field == field and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        PopulationOptimizer(SearchSpace(lam_bounds=(1e-3, 1e-6)), OptimizerOptions("de"))
    assert err.value.field == "search.lam_bounds"
    with pytest.raises(ConfigError):
        DERand1Bin(popsize=3)
