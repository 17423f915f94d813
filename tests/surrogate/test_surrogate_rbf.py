"""Table 5's RBF-based comparator: HORD's cubic RBF + DYCORS over full trainings (ref. 13)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from raytune_periodic.surrogate.rbf import RBFSearch, fit_rbf
from raytune_periodic.surrogate.sparseness import HypParaSet, SearchSpace

SPACE = SearchSpace(active=("lam_z", "lam_v", "p_z", "p_v"))


def loss_of(hyp: HypParaSet) -> float:
    u = SPACE.to_unit(hyp)
    return float(sum((v - 0.7) ** 2 for v in u.values()))


def test_cubic_rbf_with_linear_tail_interpolates() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((12, 2))
    y = x @ np.array([1.0, -2.0]) + 0.5
    assert np.allclose(fit_rbf(x, y)(x), y, atol=1e-5)
    assert np.allclose(fit_rbf(x, y)(np.array([[0.3, 0.4]])), [0.3 - 0.8 + 0.5], atol=1e-4)


def test_rbf_search_starts_with_a_latin_hypercube_then_improves() -> None:
    search = RBFSearch(SPACE, budget=30, seed=1)
    assert search.n_init == 2 * (4 + 1)
    first = [search.ask(i) for i in range(search.n_init)]
    u = np.array([[SPACE.to_unit(h)[k] for k in SPACE.active] for h in first])
    for column in np.floor(u * search.n_init).T:
        assert sorted(column.astype(int)) == list(range(search.n_init))
    for i, hyp in enumerate(first):
        search.tell(i, loss_of(hyp))
    initial_best = min(search.losses)
    for i in range(search.n_init, 30):
        hyp = search.ask(i)
        assert hyp.p_x == hyp.lam_w == 0  # inactive names stay at the fixed values
        search.tell(i, loss_of(hyp))
    assert min(search.losses) < initial_best / 2
    assert loss_of(search.best()) == pytest.approx(min(search.losses))


def test_pending_points_are_avoided_and_failures_tolerated() -> None:
    search = RBFSearch(SPACE, budget=20, seed=2)
    for i in range(search.n_init):
        search.tell(i, loss_of(search.ask(i)))
    a, b = search.ask("a"), search.ask("b")  # two evaluations running at once
    assert a != b and set(search.pending) == {"a", "b"}
    search.tell("a", float("nan"))  # a diverged training counts as the worst so far
    assert search.losses[-1] == pytest.approx(max(search.losses[:-1]) + 1)
    search.forget("b")
    twin = pickle.loads(pickle.dumps(search))  # a Tune searcher checkpoint
    assert twin.ask("c") == search.ask("c")
