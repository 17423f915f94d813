"""The method table: one row per method, mean ± std over seeds and trials, and the cost spent.

Also the per-seed views the paired statistics build on (``selected_by_seed``, ``by_seed``):
methods are paired per seed because the dataset split and label noise follow the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import STATUS_ERROR, TAG_SEED
from raytune_periodic.tracking import is_finite

if TYPE_CHECKING:
    from raytune_periodic.report.compare import ExperimentData, TrialData

NO_SEED = "?"  #: the seed of a trial run without the seed tag

TABLE_COLUMNS = (
    "method",
    "search",
    "n_trials",
    "n_diverged",
    "n_errors",
    "n_seeds",
    "sel_val_f1_mean",
    "sel_val_f1_std",
    "sel_test_f1_mean",
    "sel_test_f1_std",
    "sel_test_f1_iqm",
    "best_val_f1",
    "val_f1_mean",
    "val_f1_std",
    "test_f1_mean",
    "test_f1_std",
    "final_test_f1_mean",
    "final_test_f1_std",
    "final_test_f1_iqm",
    "gap_mean",
    "gap_std",
    "final_train_loss_mean",
    "final_val_loss_mean",
    "final_val_loss_penalised_mean",
    "trial_seconds",
    "passes",
    "t_ori_per_seed",
)


def seed_of(trial: TrialData) -> str:
    return trial.tags.get(TAG_SEED, NO_SEED)


def scored(trials: Sequence[TrialData]) -> list[TrialData]:
    """The trials that count in the scores: all but those that ended in ``error``."""
    return [t for t in trials if t.status != STATUS_ERROR]


def selected_by_seed(trials: Sequence[TrialData]) -> dict[str, TrialData]:
    """Per seed, the scored trial with the highest ``best_val_f1`` (the search's pick)."""
    best: dict[str, TrialData] = {}
    for t in scored(trials):
        score = t.summary.get("best_val_f1", math.nan)
        if not is_finite(score):
            continue
        seed = seed_of(t)
        if seed not in best or score > best[seed].summary["best_val_f1"]:
            best[seed] = t
    return {s: best[s] for s in sorted(best, key=seed_sort_key)}


def by_seed(trials: Sequence[TrialData], key: str) -> dict[str, list[float]]:
    """Per seed, the finite values of summary metric ``key`` over the scored trials."""
    out: dict[str, list[float]] = {}
    for t in scored(trials):
        value = t.summary.get(key, math.nan)
        if is_finite(value):
            out.setdefault(seed_of(t), []).append(float(value))
    return {s: out[s] for s in sorted(out, key=seed_sort_key)}


def seed_sort_key(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def iqm(values: Any) -> float:
    """Interquartile mean (25 % trimmed mean, as rliable's IQM); NaN when empty."""
    stats = require("scipy.stats")
    values = [v for v in values if is_finite(v)]
    return float(stats.trim_mean(values, 0.25)) if values else math.nan


def method_table(data: ExperimentData) -> Any:
    """One row per method (a pandas DataFrame with ``TABLE_COLUMNS``).

    ``val_f1``/``test_f1``/``gap`` are the mean and sample std (ddof=1; NaN for one trial) of
    the trials' ``best_val_f1``/``test_f1_at_best``/``final_gap``, over the trials that did not
    end in ``error``; ``best_val_f1`` is their max. ``trial_seconds`` and ``passes`` sum over
    all trials (the compute spent, failed trials included). ``*_iqm`` is the interquartile mean.

    ``sel_*`` is the result of the method as a search: for each seed (``rp.seed``) the trial
    with the highest ``best_val_f1`` is selected and its ``best_val_f1``/``test_f1_at_best``
    taken; mean and sample std over seeds. This is the fair head-to-head number, because every
    method spends the same budget (trials x periods) per seed.
    """
    pd = require("pandas")
    return pd.DataFrame([_row(m, pd) for m in data.methods], columns=list(TABLE_COLUMNS))


def _row(method: Any, pd: Any) -> dict[str, Any]:
    ok = scored(method.trials)

    def col(key: str, trials: Sequence[TrialData] = ok) -> Any:
        return pd.Series([t.summary.get(key, math.nan) for t in trials], dtype=float)

    best, test, gap, final = (
        col(k) for k in ("best_val_f1", "test_f1_at_best", "final_gap", "final_test_f1")
    )
    chosen = list(selected_by_seed(ok).values())
    sel_val = pd.Series([t.summary["best_val_f1"] for t in chosen], dtype=float)
    sel_test = pd.Series([t.summary.get("test_f1_at_best", math.nan) for t in chosen], dtype=float)
    seeds = {seed_of(t) for t in method.trials}
    return {
        "method": method.name,
        "search": method.search,
        "n_trials": len(method.trials),
        "n_diverged": sum(t.status == "diverged" for t in method.trials),
        "n_errors": len(method.trials) - len(ok),
        "n_seeds": len(sel_val),
        "sel_val_f1_mean": sel_val.mean(),
        "sel_val_f1_std": sel_val.std(),
        "sel_test_f1_mean": sel_test.mean(),
        "sel_test_f1_std": sel_test.std(),
        "sel_test_f1_iqm": iqm(sel_test),
        "best_val_f1": best.max(),
        "val_f1_mean": best.mean(),
        "val_f1_std": best.std(),
        "test_f1_mean": test.mean(),
        "test_f1_std": test.std(),
        "final_test_f1_mean": final.mean(),
        "final_test_f1_std": final.std(),
        "final_test_f1_iqm": iqm(final),
        "gap_mean": gap.mean(),
        "gap_std": gap.std(),
        # the papers' own loss numbers (the Tiny-ImageNet paper's table): plain cross-entropy
        # at the last epoch end; *_penalised adds the penalty terms, as Keras' val_loss does
        "final_train_loss_mean": col("final_train_loss").mean(),
        "final_val_loss_mean": col("final_val_loss").mean(),
        "final_val_loss_penalised_mean": col("final_val_loss_penalised").mean(),
        "trial_seconds": col("trial_seconds", method.trials).sum(),
        "passes": col("total_passes", method.trials).sum(),
        # Table 5's cost unit: trainings of the original network; a period-engine trial is
        # one, surrogate methods report theirs (surrogate work by FLOPs)
        "t_ori_per_seed": sum(t.summary.get("cost_t_ori", 1.0) for t in method.trials)
        / max(len(seeds), 1),
    }


MD_HEADER = (
    "method",
    "search",
    "trials",
    "diverged",
    "errors",
    "seeds",
    "selected val F1",
    "selected test F1",
    "test F1 (all)",
    "final test F1",
    "gap",
    "train / val loss",
    "seconds",
    "passes",
    "T_ori/seed",
)


def render_table(df: Any, fmt: str = "md") -> str:
    """The method table as markdown (mean ± std, 3 decimals) or CSV (every column, raw)."""
    if fmt == "csv":
        return str(df.to_csv(index=False))
    if fmt != "md":
        raise ConfigError("format", f"unknown table format {fmt!r}; valid: md, csv")
    lines = ["| " + " | ".join(MD_HEADER) + " |", "|" + "---|" * len(MD_HEADER)]
    for row in df.to_dict("records"):
        lines.append("| " + " | ".join(table_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def table_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one method row under ``MD_HEADER`` (mean ± std, 3 decimals)."""
    return [
        str(row["method"]),
        str(row["search"]),
        str(row["n_trials"]),
        str(row["n_diverged"]),
        str(row["n_errors"]),
        str(row["n_seeds"]),
        _pm(row["sel_val_f1_mean"], row["sel_val_f1_std"]),
        _pm(row["sel_test_f1_mean"], row["sel_test_f1_std"]),
        _pm(row["test_f1_mean"], row["test_f1_std"]),
        _pm(row["final_test_f1_mean"], row["final_test_f1_std"]),
        _pm(row["gap_mean"], row["gap_std"]),
        f"{_num(row['final_train_loss_mean'])} / {_num(row['final_val_loss_mean'])}",
        _num(row["trial_seconds"], ".1f"),
        _num(row["passes"], ".0f"),
        _num(row["t_ori_per_seed"], ".2f"),
    ]


def _num(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if is_finite(x) else "–"


def _pm(mean: float, std: float) -> str:
    if not is_finite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if is_finite(std) else f"{mean:.3f}"
