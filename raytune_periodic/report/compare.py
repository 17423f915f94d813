"""Pull one invocation's runs out of MLflow and compare its methods.

``load_experiment`` reads the run tree written by ``tracking.MlflowStore`` (docs/MLFLOW.md):
three ``search_runs`` calls (invocations, methods, trials) plus the per-step histories the
report plots, read in bulk (``history.fetch_histories``: a few queries for all trials, not one
call per trial per metric); trials without summary metrics (still running, or the driver died)
get theirs computed from their full history, as ``finish_trial`` would have. Two trial runs
with the same ``rp.trial_id`` (a re-delivered spool, a manual copy) are one trial: the most
complete is kept, with a warning. The table lives in ``report.table`` (re-exported here).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    EXPLOITED,
    KIND_INVOCATION,
    KIND_METHOD,
    KIND_TRIAL,
    STATUS_ERROR,
    STATUS_RUNNING,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_METHOD,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_TRIAL,
    VALUE_PREFIX,
    tag_filter,
)
from raytune_periodic.report.history import fetch_histories
from raytune_periodic.report.table import (  # noqa: F401  (re-exported)
    TABLE_COLUMNS,
    method_table,
    render_table,
)
from raytune_periodic.tracking import (
    COST_KEYS,
    SUMMARY_KEYS,
    default_tracking_uri,
    is_finite,
    sqlite_path,
    summarize,
)

#: per-step metrics loaded for every trial (plus each ``value/<name>``): the F1 curves, and
#: what the anytime curves need (the full-validation F1 at epoch ends, the seconds per period)
PLOT_KEYS = ("val_f1", "train_f1", "full_val_f1", "period_seconds", "train_loss", "full_val_loss")
#: per-step metrics loaded to compute the summary of a trial that has none
SUMMARY_INPUTS = (
    "period",
    "passes",
    "val_f1",
    "gap",
    "period_seconds",
    "full_val_f1",
    "test_f1",
    "train_loss",
    "val_loss",
    "full_val_loss",
    "full_val_penalty",
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
    #: what the reader should know about the data (duplicated trial runs, ...), one line each
    messages: list[str] = field(default_factory=list)

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
    messages: list[str] = []
    for trial in _trials(client, _search(client, eid, KIND_TRIAL, inv_id), messages):
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
        messages=messages,
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


def _trials(client: Any, runs: Sequence[Any], messages: list[str]) -> list[TrialData]:
    """The trial runs, de-duplicated by trial id, with their histories read in bulk."""
    runs = _dedupe(runs, messages)
    wanted = {run.info.run_id: _history_keys(run) for run in runs}
    histories = fetch_histories(client, wanted)
    return [_trial(run, histories.get(run.info.run_id, {})) for run in runs]


def _trial_key(run: Any) -> tuple[str, str]:
    return run.data.tags.get(TAG_METHOD, "?"), run.data.tags.get(TAG_TRIAL, run.info.run_name)


def _completeness(run: Any) -> tuple[int, int, float]:
    """Finished before running (``error`` ranks below a finished ``ok``/``diverged``), then
    more periods logged."""
    status = run.data.tags.get(TAG_STATUS, STATUS_RUNNING)
    rank = {STATUS_RUNNING: 0, STATUS_ERROR: 1}.get(status, 2)
    metrics = run.data.metrics
    steps = metrics.get("n_periods", metrics.get("period", -1.0))
    return int("n_periods" in metrics), rank, float(steps) if is_finite(steps) else -1.0


def _dedupe(runs: Sequence[Any], messages: list[str]) -> list[Any]:
    """One run per trial id: the most complete (the earliest of equals); warns for the rest."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        groups.setdefault(_trial_key(run), []).append(run)
    kept = []
    for (method, trial_id), group in groups.items():
        best = max(group, key=_completeness)  # max keeps the first of equals: start order
        kept.append(best)
        if len(group) > 1:
            others = ", ".join(r.info.run_id for r in group if r is not best)
            status = best.data.tags.get(TAG_STATUS, STATUS_RUNNING)
            msg = (
                f"trial {trial_id} of {method} has {len(group)} runs: kept run "
                f"{best.info.run_id} ({status}), ignored {others}"
            )
            warnings.warn(msg, UserWarning, stacklevel=4)
            messages.append(msg)
    return kept


def _history_keys(run: Any) -> list[str]:
    metrics = run.data.metrics
    keys = {k for k in metrics if k.startswith(VALUE_PREFIX)} | set(PLOT_KEYS)
    if "n_periods" not in metrics:
        keys |= set(SUMMARY_INPUTS) | {EXPLOITED}
    return sorted(keys & set(metrics))


def _trial(run: Any, history: dict[str, dict[int, float]]) -> TrialData:
    tags, metrics = dict(run.data.tags), dict(run.data.metrics)
    if "n_periods" in metrics:
        summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    else:
        steps = sorted({s for h in history.values() for s in h})
        records = [{k: h[s] for k, h in history.items() if s in h} | {"step": s} for s in steps]
        summary = summarize(records, n_exploits=len(history.get(EXPLOITED, {})))
    return TrialData(
        run_id=run.info.run_id,
        trial_id=tags.get(TAG_TRIAL, run.info.run_name),
        method=tags.get(TAG_METHOD, "?"),
        status=tags.get(TAG_STATUS, STATUS_RUNNING),
        params=dict(run.data.params),
        tags=tags,
        summary=summary,
        history={k: v for k, v in history.items() if k in PLOT_KEYS or k.startswith(VALUE_PREFIX)},
    )
