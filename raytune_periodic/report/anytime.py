"""Anytime curves: the best validation F1 a method has found so far vs the compute it spent.

Per method and seed, the trials of that seed run side by side (Tune runs them concurrently;
PBT in lockstep), so the curve advances one round at a time: after round ``r`` every trial has
run its first ``r + 1`` periods, the compute spent is the sum over the trials and the score is
the best full-validation F1 (epoch ends; the period's mini-batch ``val_f1`` for a trial that
never ended an epoch) any of them reached. Compute comes in three units: forward passes, T_ori
(trainings of the original network: ``cost_t_ori`` of the trial, 1 for a period-engine trial)
and seconds (``period_seconds``); passes and T_ori are spread evenly over a trial's periods.
Over seeds: the mean curve on a common grid, with a 95 % percentile bootstrap band
(``scipy.stats.bootstrap``, seeds resampled) where a method has 2+ seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raytune_periodic._imports import require
from raytune_periodic.report.table import seed_of
from raytune_periodic.tracking import is_finite

if TYPE_CHECKING:
    from raytune_periodic.report.compare import MethodData, TrialData

UNITS = {
    "passes": "forward passes (all trials of a seed)",
    "t_ori": "T_ori (trainings of the original network)",
    "seconds": "seconds (sum over the trials of a seed)",
}
GRID_POINTS = 120
BAND_RESAMPLES = 2_000


@dataclass
class SeedCurve:
    """One method on one seed: cumulative cost per round (one array per unit) and best score."""

    seed: str
    cost: dict[str, Any]
    best: Any


def _trial_rounds(trial: TrialData) -> tuple[list[float], dict[str, list[float]]]:
    """Per step of the trial (in order): its score and its cost in each unit."""
    hist = trial.history
    full = hist.get("full_val_f1", {})
    score_of = full if any(is_finite(v) for v in full.values()) else hist.get("val_f1", {})
    steps = sorted(set(hist.get("val_f1", {})) | set(full) | set(hist.get("period_seconds", {})))
    n = max(len(steps), 1)
    passes = trial.summary.get("total_passes", math.nan)
    t_ori = trial.summary.get("cost_t_ori", 1.0)
    seconds = hist.get("period_seconds", {})
    per_second = trial.summary.get("trial_seconds", math.nan) / n
    scores = [score_of.get(s, math.nan) for s in steps]
    cost = {
        "passes": [passes / n] * len(steps),
        "t_ori": [t_ori / n] * len(steps),
        "seconds": [seconds[s] if is_finite(seconds.get(s)) else per_second for s in steps],
    }
    return scores, cost


def seed_curves(method: MethodData) -> list[SeedCurve]:
    """The anytime curve of ``method`` on each of its seeds (every trial counts: compute spent
    by a trial that later failed was spent)."""
    np = require("numpy")
    groups: dict[str, list[TrialData]] = {}
    for trial in method.trials:
        groups.setdefault(seed_of(trial), []).append(trial)
    curves = []
    for seed, trials in groups.items():
        rounds = [_trial_rounds(t) for t in trials]
        length = max((len(s) for s, _ in rounds), default=0)
        if length == 0:
            continue
        scores = np.full((len(rounds), length), np.nan)
        cost = {u: np.zeros((len(rounds), length)) for u in UNITS}
        for i, (sc, co) in enumerate(rounds):
            scores[i, : len(sc)] = sc
            for unit in UNITS:
                cost[unit][i, : len(sc)] = np.nan_to_num(co[unit])
        best = np.fmax.accumulate(np.nanmax(np.where(np.isnan(scores), -np.inf, scores), 0))
        best = np.where(np.isinf(best), np.nan, best)
        curves.append(SeedCurve(seed, {u: c.sum(0).cumsum() for u, c in cost.items()}, best))
    return curves


def on_grid(curves: Sequence[SeedCurve], unit: str) -> tuple[Any, Any] | None:
    """(grid, values): each seed's step curve sampled on a common cost grid (NaN before the
    seed's first score; past its last round a seed keeps the best it found)."""
    np = require("numpy")
    ends = [c.cost[unit][-1] for c in curves if c.cost[unit].size and c.cost[unit][-1] > 0]
    if not ends:
        return None
    grid = np.linspace(0.0, max(ends), GRID_POINTS)
    values = np.full((len(curves), grid.size), np.nan)
    for i, curve in enumerate(curves):
        idx = np.searchsorted(curve.cost[unit], grid, side="right") - 1
        values[i, idx >= 0] = curve.best[idx[idx >= 0]]
    return grid, values


def mean_band(values: Any, rng_seed: int = 0) -> tuple[Any, Any, Any]:
    """Mean over seeds (rows) where every seed has a value, and its 95 % bootstrap band."""
    np, stats = require("numpy"), require("scipy.stats")
    full = ~np.isnan(values).any(axis=0)
    mean = np.full(values.shape[1], np.nan)
    low, high = mean.copy(), mean.copy()
    mean[full] = values[:, full].mean(axis=0)
    if values.shape[0] >= 2 and full.any():
        res = stats.bootstrap(
            (values[:, full],),
            np.mean,
            axis=0,
            method="percentile",
            n_resamples=BAND_RESAMPLES,
            rng=np.random.default_rng(rng_seed),
        )
        low[full], high[full] = res.confidence_interval
    return mean, low, high


def anytime_figure(methods: Sequence[MethodData], colors: dict[str, str]) -> Any:
    """Three panels (passes, T_ori, seconds): per method the mean best-so-far validation F1
    over seeds with its bootstrap band."""
    from raytune_periodic.report.plots import _empty, _figure

    fig, axes = _figure(len(UNITS), 5.5, 3.8)
    curves = {m.name: seed_curves(m) for m in methods}
    for ax, (unit, label) in zip(axes, UNITS.items()):
        drawn = False
        for method in methods:
            sampled = on_grid(curves[method.name], unit) if curves[method.name] else None
            if sampled is None:
                continue
            grid, values = sampled
            mean, low, high = mean_band(values)
            n = values.shape[0]
            color = colors[method.name]
            ax.plot(grid, mean, color=color, label=f"{method.name} ({n} seed{'s' * (n > 1)})")
            ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
            drawn = True
        ax.set(xlabel=label, ylabel="best validation F1 so far")
        if drawn:
            ax.legend(fontsize="small")
        else:
            _empty(ax, "no scores")
    fig.suptitle("Anytime: best validation F1 found vs compute (mean over seeds, 95 % band)")
    return fig
