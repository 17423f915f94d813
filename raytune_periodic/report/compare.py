"""Pull one invocation's runs out of MLflow and compare its methods (mean ± std over trials).

``load_experiment`` reads the run tree written by ``tracking.MlflowStore`` (docs/MLFLOW.md):
three ``search_runs`` calls (invocations, methods, trials) plus one ``get_metric_history`` per
plotted metric per trial; trials without summary metrics (still running, or the driver died)
get theirs computed from their full history, as ``finish_trial`` would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_METHOD,
    TAG_SEARCH,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
    VALUE_PREFIX,
    tag_filter,
)
from raytune_periodic.tracking import (
    COST_KEYS,
    SUMMARY_KEYS,
    default_tracking_uri,
    is_finite,
    sqlite_path,
    summarize,
)

#: per-step metrics loaded for every trial (plus each ``value/<name>``)
PLOT_KEYS = ("val_f1", "train_f1")
#: per-step metrics loaded to compute the summary of a trial that has none
SUMMARY_INPUTS = (
    "period",
    "passes",
    "val_f1",
    "gap",
    "period_seconds",
    "full_val_f1",
    "test_f1",
    *COST_KEYS,
)


@dataclass
class TrialData:
    """One trial run: tags, params, summary metrics and per-step histories."""

    run_id: str
    trial_id: str
    method: str
    status: str  #: rp.status: running | ok | diverged | error
    params: dict[str, str]
    tags: dict[str, str]
    summary: dict[str, float]
    #: metric name → {step: value}; non-finite values (NaN, ±inf) are NaN
    history: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def value_names(self) -> list[str]:
        return sorted(
            k.removeprefix(VALUE_PREFIX) for k in self.history if k.startswith(VALUE_PREFIX)
        )


@dataclass
class MethodData:
    """One method run and its trials."""

    name: str
    search: str
    run_id: str | None
    params: dict[str, str]
    trials: list[TrialData] = field(default_factory=list)


@dataclass
class ExperimentData:
    """One invocation of an experiment: its methods, in the order they were started."""

    experiment_name: str
    experiment_id: str
    tracking_uri: str
    invocation_id: str
    invocation_run_id: str
    invocation_params: dict[str, str]
    methods: list[MethodData]

    @property
    def trials(self) -> list[TrialData]:
        return [t for m in self.methods for t in m.trials]


def load_experiment(
    tracking_uri: str | None, experiment_name: str, invocation_id: str | None = None
) -> ExperimentData:
    """Load the latest invocation of ``experiment_name`` (or ``invocation_id``, or a unique
    prefix of it) with its method runs, trial runs and per-period histories."""
    mlflow = require("mlflow")
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create an empty database
        raise ConfigError("tracking_uri", f"no MLflow database at {db}")
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(
            "experiment",
            f"no MLflow experiment named {experiment_name!r} at {uri}; "
            f"found: {', '.join(names) or 'none'}",
        )
    eid = exp.experiment_id
    invocation = _pick_invocation(_search(client, eid, KIND_INVOCATION), invocation_id)
    inv_id = invocation.data.tags[TAG_INVOCATION]
    methods: dict[str, MethodData] = {}
    for run in _search(client, eid, KIND_METHOD, inv_id):
        name = run.data.tags.get(TAG_METHOD, run.info.run_name)
        search = run.data.tags.get(TAG_SEARCH, "")
        methods[name] = MethodData(name, search, run.info.run_id, dict(run.data.params))
    for run in _search(client, eid, KIND_TRIAL, inv_id):
        trial = _trial(client, run)
        if trial.method not in methods:  # its method run is missing: keep the trial anyway
            methods[trial.method] = MethodData(trial.method, "", None, {})
        methods[trial.method].trials.append(trial)
    for method in methods.values():
        method.trials.sort(key=lambda t: t.trial_id)
    return ExperimentData(
        experiment_name=experiment_name,
        experiment_id=eid,
        tracking_uri=uri,
        invocation_id=inv_id,
        invocation_run_id=invocation.info.run_id,
        invocation_params=dict(invocation.data.params),
        methods=list(methods.values()),
    )


def _search(client: Any, eid: str, kind: str, invocation_id: str | None = None) -> list[Any]:
    tags = (
        {TAG_KIND: kind}
        if invocation_id is None
        else {TAG_KIND: kind, TAG_INVOCATION: invocation_id}
    )
    filt = tag_filter(tags)
    order = "DESC" if kind == KIND_INVOCATION else "ASC"
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [eid], filt, max_results=1000, order_by=[f"start_time {order}"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _pick_invocation(runs: Sequence[Any], invocation_id: str | None) -> Any:
    ids = [r.data.tags.get(TAG_INVOCATION, "") for r in runs]
    if not runs:
        raise ConfigError("invocation", "no raytune-periodic invocation runs in this experiment")
    if invocation_id is None:
        return runs[0]
    hits = [r for r, i in zip(runs, ids) if i == invocation_id]
    hits = hits or [r for r, i in zip(runs, ids) if i.startswith(invocation_id)]
    if len(hits) != 1:
        what = "is ambiguous" if hits else "not found"
        raise ConfigError("invocation", f"{invocation_id!r} {what}; found: {', '.join(ids)}")
    return hits[0]


def _trial(client: Any, run: Any) -> TrialData:
    tags, metrics = dict(run.data.tags), dict(run.data.metrics)
    has_summary = "n_periods" in metrics
    keys = {k for k in metrics if k.startswith(VALUE_PREFIX)} | set(PLOT_KEYS)
    if not has_summary:
        keys |= set(SUMMARY_INPUTS) | {"exploited"}
    history: dict[str, dict[int, float]] = {}
    for key in sorted(keys & set(metrics)):
        points = client.get_metric_history(run.info.run_id, key)
        history[key] = {m.step: m.value if is_finite(m.value) else math.nan for m in points}
    if has_summary:
        summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    else:
        steps = sorted({s for h in history.values() for s in h})
        records = [{k: h[s] for k, h in history.items() if s in h} | {"step": s} for s in steps]
        summary = summarize(records, n_exploits=len(history.get("exploited", {})))
    return TrialData(
        run_id=run.info.run_id,
        trial_id=tags.get(TAG_TRIAL, run.info.run_name),
        method=tags.get(TAG_METHOD, "?"),
        status=tags.get(TAG_STATUS, "running"),
        params=dict(run.data.params),
        tags=tags,
        summary=summary,
        history={k: v for k, v in history.items() if k in PLOT_KEYS or k.startswith(VALUE_PREFIX)},
    )


# ----------------------------------------------------------------------------- the table
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
    "best_val_f1",
    "val_f1_mean",
    "val_f1_std",
    "test_f1_mean",
    "test_f1_std",
    "final_test_f1_mean",
    "final_test_f1_std",
    "gap_mean",
    "gap_std",
    "trial_seconds",
    "passes",
    "t_ori_per_seed",
)


def method_table(data: ExperimentData) -> Any:
    """One row per method (a pandas DataFrame with ``TABLE_COLUMNS``).

    ``val_f1``/``test_f1``/``gap`` are the mean and sample std (ddof=1; NaN for one trial) of
    the trials' ``best_val_f1``/``test_f1_at_best``/``final_gap``, over the trials that did not
    end in ``error``; ``best_val_f1`` is their max. ``trial_seconds`` and ``passes`` sum over
    all trials (the compute spent, failed trials included).

    ``sel_*`` is the result of the method as a search: for each seed (``rp.seed``) the trial
    with the highest ``best_val_f1`` is selected and its ``best_val_f1``/``test_f1_at_best``
    taken; mean and sample std over seeds. This is the fair head-to-head number, because every
    method spends the same budget (trials x periods) per seed.
    """
    pd = require("pandas")
    rows = []
    for method in data.methods:
        scored = [t for t in method.trials if t.status != "error"]

        def col(key: str, trials: Sequence[TrialData] = scored) -> Any:
            return pd.Series([t.summary.get(key, math.nan) for t in trials], dtype=float)

        best, test, gap = col("best_val_f1"), col("test_f1_at_best"), col("final_gap")
        final_test = col("final_test_f1")
        sel_val, sel_test = _selected(scored, pd)
        rows.append(
            {
                "method": method.name,
                "search": method.search,
                "n_trials": len(method.trials),
                "n_diverged": sum(t.status == "diverged" for t in method.trials),
                "n_errors": len(method.trials) - len(scored),
                "n_seeds": len(sel_val),
                "sel_val_f1_mean": sel_val.mean(),
                "sel_val_f1_std": sel_val.std(),
                "sel_test_f1_mean": sel_test.mean(),
                "sel_test_f1_std": sel_test.std(),
                "best_val_f1": best.max(),
                "val_f1_mean": best.mean(),
                "val_f1_std": best.std(),
                "test_f1_mean": test.mean(),
                "test_f1_std": test.std(),
                "final_test_f1_mean": final_test.mean(),
                "final_test_f1_std": final_test.std(),
                "gap_mean": gap.mean(),
                "gap_std": gap.std(),
                "trial_seconds": col("trial_seconds", method.trials).sum(),
                "passes": col("total_passes", method.trials).sum(),
                # Table 5's cost unit: trainings of the original network; a period-engine
                # trial is one, surrogate methods report theirs (surrogate work by FLOPs)
                "t_ori_per_seed": sum(t.summary.get("cost_t_ori", 1.0) for t in method.trials)
                / max(len({t.tags.get(TAG_SEED, "?") for t in method.trials}), 1),
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _selected(trials: Sequence[TrialData], pd: Any) -> tuple[Any, Any]:
    """Per seed, the best-validation trial's (val F1, test F1), as two Series over seeds."""
    best: dict[str, TrialData] = {}
    for t in trials:
        score = t.summary.get("best_val_f1", math.nan)
        if not is_finite(score):
            continue
        seed = t.tags.get(TAG_SEED, "?")
        if seed not in best or score > best[seed].summary["best_val_f1"]:
            best[seed] = t
    chosen = [best[s] for s in sorted(best)]
    val = pd.Series([t.summary["best_val_f1"] for t in chosen], dtype=float)
    test = pd.Series([t.summary.get("test_f1_at_best", math.nan) for t in chosen], dtype=float)
    return val, test


_MD_HEADER = (
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
    lines = ["| " + " | ".join(_MD_HEADER) + " |", "|" + "---|" * len(_MD_HEADER)]
    for row in df.to_dict("records"):
        cells = [
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
            _num(row["trial_seconds"], ".1f"),
            _num(row["passes"], ".0f"),
            _num(row["t_ori_per_seed"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if is_finite(x) else "–"


def _pm(mean: float, std: float) -> str:
    if not is_finite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if is_finite(std) else f"{mean:.3f}"
