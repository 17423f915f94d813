"""Schedule replay: a trial's per-period values, read back from MLflow, as a fixed controller.

A trial run stores the regularizer values in force in each period as the step metrics
``value/<group>`` (docs/MLFLOW.md). ``export_schedule`` turns them, in step order, into the
``schedule`` controller's list of ``{group: value}`` dicts (a PBT trial's steps keep counting
across exploits, so its schedule is the timeline the trial really followed); ``replay_config``
wraps that as a method entry for an experiment config, and ``replay`` runs it with the bare
engine on a run spec (a new seed, model, dataset…) without Ray.

``trial_run_spec`` gives the full run spec of a trial run from MLflow alone: the run's
``rp_spec.json`` artifact (exact; logged at every trial's end), else, for runs from before it was
logged, the Tune trial's ``params.json`` when its directory is found (see ``trial_dir``), else the
run's flattened MLflow params unflattened (lists are stored as their Python repr).
"""

from __future__ import annotations

import ast
import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    KIND_INVOCATION,
    SPEC_ARTIFACT,
    TAG_INVOCATION,
    TAG_KIND,
    TAG_STORAGE_PATH,
    TAG_TRIAL,
    VALUE_PREFIX,
    tag_filter,
)
from raytune_periodic.tracking import default_tracking_uri, is_finite, sqlite_path

#: trial-run params that are not part of the run spec (mlflow_callback adds them)
_EXTRA_PARAMS = ("method", "search", "seed")


def client_for(tracking_uri: str | None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (a missing SQLite file is a ConfigError)."""
    mlflow = require("mlflow")
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create an empty database
        raise ConfigError("tracking_uri", f"no MLflow database at {db}")
    return mlflow.MlflowClient(tracking_uri=uri)


def get_trial_run(client: Any, run_id: str) -> Any:
    """The MLflow run ``run_id``, which must be a raytune-periodic trial run."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise ConfigError(
            "run_id", f"no MLflow run {run_id!r}: {str(exc).splitlines()[0]}"
        ) from None
    kind = run.data.tags.get(TAG_KIND)
    if kind != "trial":
        raise ConfigError(
            "run_id", f"run {run_id} is a {kind or 'non-raytune-periodic'} run, not a trial"
        )
    return run


# ----------------------------------------------------------------------------- schedules
def export_schedule(run_id: str, tracking_uri: str | None = None) -> list[dict[str, float]]:
    """The trial's per-period values ``[{group: value}, …]`` in step order.

    A group missing at a step (or non-finite there) keeps its previous value; steps before a
    group's first value leave it out of that row.
    """
    client = client_for(tracking_uri)
    run = get_trial_run(client, run_id)
    keys = sorted(k for k in run.data.metrics if k.startswith(VALUE_PREFIX))
    if not keys:
        raise ConfigError("run_id", f"trial run {run_id} has no value/<group> metrics to replay")
    by_step: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            if is_finite(m.value):
                by_step.setdefault(int(m.step), {})[key.removeprefix(VALUE_PREFIX)] = m.value
    schedule: list[dict[str, float]] = []
    current: dict[str, float] = {}
    for step in sorted(by_step):
        current = {**current, **by_step[step]}
        schedule.append(dict(current))
    return schedule


def replay_config(
    schedule: Sequence[Mapping[str, float]], hold_last: bool = True
) -> dict[str, Any]:
    """A method entry (``methods: {NAME: <this>}``) that replays ``schedule`` as a fixed
    controller; merge it with any other method options (model, regularizers…)."""
    rows = [{str(k): float(v) for k, v in row.items()} for row in schedule]
    return {"controller": {"type": "schedule", "schedule": rows, "hold_last": bool(hold_last)}}


def replay_spec(
    spec: Mapping[str, Any],
    schedule: Sequence[Mapping[str, float]],
    *,
    seed: int | None = None,
    periods: int | None = None,
) -> dict[str, Any]:
    """``spec`` with its controller replaced by the schedule, ``train.periods`` = the schedule's
    length (or ``periods``) and, if given, ``train.seed`` = ``seed`` (the dataset keeps its own
    seed when the spec names one, so the data split can stay the original's)."""
    out = json.loads(json.dumps(dict(spec)))
    out["controller"] = replay_config(schedule)["controller"]
    train = dict(out.get("train") or {})
    train["periods"] = int(periods if periods is not None else len(schedule))
    if seed is not None:
        train["seed"] = int(seed)
    out["train"] = train
    return out


def replay(
    spec: Mapping[str, Any],
    schedule: Sequence[Mapping[str, float]],
    *,
    seed: int | None = None,
    periods: int | None = None,
) -> list[Any]:
    """Run ``schedule`` with the bare engine on ``spec`` (see ``replay_spec``); the records."""
    from raytune_periodic.training import build_engine

    engine = build_engine(replay_spec(spec, schedule, seed=seed, periods=periods))
    try:
        return list(engine.run())
    finally:
        engine.controller.close()


# ----------------------------------------------------------------------------- trial specs
def invocation_storage(client: Any, run: Any) -> Path | None:
    """The Tune storage directory of the trial's invocation (tag ``rp.storage_path``)."""
    inv_id = run.data.tags.get(TAG_INVOCATION)
    if not inv_id:
        return None
    filt = tag_filter({TAG_KIND: KIND_INVOCATION, TAG_INVOCATION: inv_id})
    found = client.search_runs([run.info.experiment_id], filt, max_results=1)
    path = found[0].data.tags.get(TAG_STORAGE_PATH) if found else None
    return Path(path) if path else None


def trial_dir(client: Any, run: Any) -> Path | None:
    """The Tune trial directory of a trial run, or None when it cannot be found.

    Tune names it ``<storage>/<tuner run name>/<Trainable>_<trial_id>[_<n>_<values>…]``; the
    trial id is unique within an invocation's storage directory.
    """
    storage = invocation_storage(client, run)
    trial_id = run.data.tags.get(TAG_TRIAL)
    if storage is None or not trial_id or not storage.is_dir():
        return None
    pattern = glob.escape(str(storage)) + "/*/*_" + glob.escape(trial_id)
    hits = sorted({*glob.glob(pattern), *glob.glob(pattern + "_*")})
    dirs = [Path(h) for h in hits if os.path.isdir(h)]
    return dirs[0] if len(dirs) == 1 else None


def trial_run_spec(client: Any, run: Any) -> dict[str, Any]:
    """The run spec of a trial run: its ``rp_spec.json`` artifact, else its Tune ``params.json``
    when found, else rebuilt from the MLflow params (exact for specs whose lists print as Python
    literals)."""
    from raytune_periodic.training.spec import trial_spec

    if any(f.path == SPEC_ARTIFACT for f in client.list_artifacts(run.info.run_id)):
        text = Path(client.download_artifacts(run.info.run_id, SPEC_ARTIFACT)).read_text()
        return dict(json.loads(text))
    tdir = trial_dir(client, run)
    if tdir is not None and (tdir / "params.json").is_file():
        config = json.loads((tdir / "params.json").read_text())
        if "rp" in config:
            return trial_spec(config)
    return unflatten_params(run.data.params)


def unflatten_params(params: Mapping[str, str]) -> dict[str, Any]:
    """``{"dataset.name": "digits", "train.lr": "0.1"}`` → the nested spec, values parsed."""
    spec: dict[str, Any] = {}
    for key, text in params.items():
        if key in _EXTRA_PARAMS:
            continue
        node = spec
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _literal(text)
    return spec


def _literal(text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(text, text)
    return value
