"""The "RBF-based" comparator of the surrogate paper's Table 5 (Ilievski et al. 2017, its ref. 13).

A *traditional* surrogate (eq. 1: ``acc_v = f(λ)``): every evaluation trains the original network
with fixed values, and a cubic radial basis function with a linear tail, fitted to all
(values → validation score) pairs so far, proposes the next values — HORD's scheme with pySOT's
DYCORS candidate search:

- the first ``n_init = 2(d + 1)`` points are a Latin hypercube sample of the unit box (HORD uses a
  symmetric Latin hypercube);
- each later point is the best of ``n_candidates`` (100·d) candidates made by perturbing the best
  point so far: each coordinate with probability ``min(20/d, 1)·(1 − ln(n − n_init + 1) /
  ln(budget − n_init))`` (at least one), by N(0, σ²), σ starting at 0.2 of the box, halved after
  ``max(5, d)`` evaluations without improvement and doubled (up to 0.2) after 3 improving ones;
- a candidate's score is ``w·V_s + (1 − w)·V_d``: ``V_s`` its RBF prediction and ``V_d`` minus its
  distance to every point evaluated or pending, both scaled to [0, 1]; ``w`` cycles through
  0.3, 0.5, 0.8, 0.95 (exploration to exploitation); the lowest score wins.

Cost: ``budget`` (Table 5's MaxTime = 40) trainings of the original: MaxTime·T_ori. The unit box is
the optimizers' (log10 for λ, §2.3). Minimises the told loss; points may be asked while others are
pending (parallel evaluations). numpy and scipy only; pickles (a searcher's checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from raytune_periodic.surrogate.ga import latin_hypercube
from raytune_periodic.surrogate.sparseness import HypParaSet, SearchSpace

WEIGHTS = (0.3, 0.5, 0.8, 0.95)
SIGMA_MAX, SIGMA_MIN = 0.2, 0.2 * 0.5**6


def fit_rbf(points: np.ndarray, losses: np.ndarray) -> Any:
    """The cubic RBF with a linear tail through ``(points, losses)`` (a tiny smoothing keeps
    repeated points solvable)."""
    from scipy.interpolate import RBFInterpolator

    return RBFInterpolator(points, losses, kernel="cubic", degree=1, smoothing=1e-8)


class RBFSearch:
    """HORD/DYCORS over ``space``'s active names: ``ask(key)``, then ``tell(key, loss)``."""

    def __init__(
        self,
        space: SearchSpace,
        budget: int = 40,
        seed: int = 0,
        n_init: int | None = None,
        n_candidates: int | None = None,
    ) -> None:
        self.space, self.names = space, list(space.active)
        d = len(self.names)
        self.budget = int(budget)
        self.n_init = min(int(n_init or 2 * (d + 1)), self.budget)
        self.n_candidates = int(n_candidates or 100 * d)
        self.rng = np.random.default_rng(seed)
        self.initial = latin_hypercube(self.n_init, d, self.rng)
        self.points: list[np.ndarray] = []
        self.losses: list[float] = []
        self.pending: dict[Hashable, np.ndarray] = {}
        self.asked = 0
        self.sigma, self.fails, self.successes = SIGMA_MAX, 0, 0

    # ------------------------------------------------------------------ proposing
    def _perturb_probability(self) -> float:
        d, n = len(self.names), len(self.points)
        span = max(self.budget - self.n_init, 2)
        decay = 1.0 - math.log(max(n - self.n_init, 0) + 1) / math.log(span)
        return min(20.0 / d, 1.0) * max(decay, 0.0)

    def candidates(self) -> np.ndarray:
        """DYCORS candidates around the best point so far (each moves in >= 1 coordinate)."""
        d = len(self.names)
        best = self.points[int(np.argmin(self.losses))]
        mask = self.rng.random((self.n_candidates, d)) < self._perturb_probability()
        mask[np.arange(self.n_candidates), self.rng.integers(0, d, self.n_candidates)] = True
        steps = self.rng.normal(0.0, self.sigma, (self.n_candidates, d)) * mask
        return np.clip(best + steps, 0.0, 1.0)

    def _propose(self) -> np.ndarray:
        cands = self.candidates()
        known = np.array(self.points + list(self.pending.values()))
        dist = np.linalg.norm(cands[:, None, :] - known[None, :, :], axis=2).min(axis=1)
        pred = fit_rbf(np.array(self.points), np.array(self.losses))(cands)
        w = WEIGHTS[(len(self.points) - self.n_init) % len(WEIGHTS)]
        score = w * _scaled(pred) + (1 - w) * (1.0 - _scaled(dist))
        score[dist < 1e-6] = np.inf  # never re-propose a known point
        return cands[int(np.argmin(score))]

    def ask(self, key: Hashable) -> HypParaSet:
        """The next setting to evaluate, remembered as pending under ``key``."""
        if self.asked < self.n_init:
            point = self.initial[self.asked]
        elif len(self.points) < len(self.names) + 2:  # too few results for a fit yet
            point = self.rng.random(len(self.names))
        else:
            point = self._propose()
        self.asked += 1
        self.pending[key] = point
        return self.space.complete(self.space.from_unit(dict(zip(self.names, point, strict=True))))

    # ------------------------------------------------------------------ learning
    def tell(self, key: Hashable, loss: float) -> None:
        """The loss of the setting asked under ``key`` (non-finite: the worst told so far + 1)."""
        point = self.pending.pop(key)
        if not math.isfinite(loss):
            loss = max((v for v in self.losses if math.isfinite(v)), default=0.0) + 1.0
        improved = not self.losses or loss < min(self.losses) - 1e-3 * abs(min(self.losses))
        self.points.append(point)
        self.losses.append(float(loss))
        if len(self.points) <= self.n_init:
            return
        self.successes, self.fails = (self.successes + 1, 0) if improved else (0, self.fails + 1)
        if self.fails >= max(5, len(self.names)):
            self.sigma, self.fails = max(self.sigma / 2, SIGMA_MIN), 0
        if self.successes >= 3:
            self.sigma, self.successes = min(self.sigma * 2, SIGMA_MAX), 0

    def forget(self, key: Hashable) -> None:
        """Drop a pending point whose evaluation will never report."""
        self.pending.pop(key, None)

    def best(self) -> HypParaSet:
        point = self.points[int(np.argmin(self.losses))]
        return self.space.complete(self.space.from_unit(dict(zip(self.names, point, strict=True))))


def _scaled(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.zeros_like(values) if hi - lo < 1e-12 else (values - lo) / (hi - lo)


__all__ = ["RBFSearch", "fit_rbf"]
