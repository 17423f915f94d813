"""Ranks over seeds and the critical-difference view (Demšar 2006), through autorank.

With at least ``MIN_METHODS`` methods and ``MIN_SEEDS`` seeds that every one of them has a
value for, each seed ranks the methods (1 = best); autorank's non-parametric path runs the
Friedman test over the seeds and Nemenyi's post-hoc test, whose critical difference (CD) is the
smallest gap in mean rank that is significant at α = 0.05.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raytune_periodic._imports import require
from raytune_periodic.report.stats import ALPHA, METRICS, seed_values

if TYPE_CHECKING:
    from raytune_periodic.report.compare import ExperimentData

MIN_METHODS, MIN_SEEDS = 3, 5


@dataclass
class RankResult:
    metric: str
    label: str
    n_seeds: int
    mean_ranks: dict[str, float]  #: best first
    omnibus: str  #: the test over all methods (autorank's choice: friedman)
    p_value: float
    posthoc: str  #: nemenyi
    cd: float  #: critical difference in mean rank (NaN when autorank gives none)
    left_out: list[str] = field(default_factory=list)  #: methods with too few seeds
    result: Any = field(default=None, repr=False)  #: autorank's RankResult, for the diagram

    def summary(self) -> str:
        ranks = ", ".join(f"{m} {r:.2f}" for m, r in self.mean_ranks.items())
        cd = f"; Nemenyi CD {self.cd:.2f}" if math.isfinite(self.cd) else ""
        out = f"; without {', '.join(self.left_out)} (too few seeds)" if self.left_out else ""
        return (
            f"mean rank by {self.label} over {self.n_seeds} seeds (1 = best): {ranks}; "
            f"{self.omnibus} p={self.p_value:.2g}{cd}{out}"
        )


def seed_matrix(data: ExperimentData, key: str) -> tuple[Any, list[str]]:
    """Seeds × methods: each method's per-seed value of ``key`` (mean over a seed's trials),
    on the seeds every method has; methods with fewer than ``MIN_SEEDS`` seeds are left out
    (returned second) rather than shrinking everyone's seeds."""
    pd = require("pandas")
    columns, left_out = {}, []
    for method in data.methods:
        values = seed_values(method, key)
        if len(values) >= MIN_SEEDS:
            columns[method.name] = pd.Series({s: sum(v) / len(v) for s, v in values.items()})
        elif method.trials:
            left_out.append(method.name)
    return pd.DataFrame(columns).dropna(), left_out


def rank_view(data: ExperimentData, key: str = "sel_test_f1") -> RankResult | str:
    """The rank comparison of ``key``, or why there is none (a sentence)."""
    frame, left_out = seed_matrix(data, key)
    label = METRICS[key][0]
    n_methods, n_seeds = frame.shape[1], frame.shape[0]
    if n_methods < MIN_METHODS or n_seeds < MIN_SEEDS:
        return (
            f"no rank view for {label}: it needs at least {MIN_METHODS} methods with "
            f"{MIN_SEEDS} seeds in common (here {n_methods} methods with {n_seeds} common "
            "seeds" + (f"; fewer seeds: {', '.join(left_out)})" if left_out else ")")
        )
    autorank = require("autorank")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # autorank prints its test choice
            res = autorank.autorank(frame, alpha=ALPHA, verbose=False, force_mode="nonparametric")
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        return f"no rank view for {label}: autorank failed ({exc})"
    ranks = res.rankdf["meanrank"].sort_values()
    return RankResult(
        metric=key,
        label=label,
        n_seeds=n_seeds,
        mean_ranks={str(m): float(r) for m, r in ranks.items()},
        omnibus=str(res.omnibus),
        p_value=float(res.pvalue),
        posthoc=str(res.posthoc),
        cd=float(res.cd) if res.cd is not None else math.nan,
        left_out=left_out,
        result=res,
    )


def rank_figure(rank: RankResult) -> Any:
    """autorank's critical-difference diagram on a matplotlib Figure (no pyplot state)."""
    figure, autorank = require("matplotlib.figure"), require("autorank")
    fig = figure.Figure(figsize=(7.0, 2.4 + 0.3 * len(rank.mean_ranks)), layout="constrained")
    ax = fig.subplots()
    with contextlib.redirect_stdout(io.StringIO()):
        autorank.plot_stats(rank.result, allow_insignificant=True, ax=ax)
    ax.set_title(f"Critical difference: {rank.label} ({rank.omnibus} p={rank.p_value:.2g})")
    return fig
