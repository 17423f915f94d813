"""``export``: the model a search selected, pulled from MLflow alone (no Ray storage needed).

For one method and seed of an experiment's invocation, the selected trial is the one ``compare``
reports (``table.selected_by_seed``: the highest ``best_val_f1`` among the trials that did not
error). ``export_model`` downloads into ``out``:

- ``model_best/`` (and ``model_last/`` when logged): MLflow PyTorch models
  (``mlflow.pytorch.load_model(out / "model_best")`` works), each with
  ``extra_files/state_dict.pt`` + ``rp_model.json`` (``tracking.models.load_model_dir`` rebuilds
  the model from those, loading the weights weights-only);
- ``config.yaml`` (the invocation's experiment config), ``schedule.csv`` (the trial's values and
  metrics per period), ``rp_spec.json`` (the trial's run spec), ``selection.json`` (experiment,
  invocation, method, seed, run and trial ids, the summary metrics, the model URIs).

``register`` adds ``model/best`` to the MLflow Model Registry as a new version of a registered
model, tagged with the method, seed, run and headline metrics.

``export_agent`` downloads a ``ppo_shared`` method's agent (the method run's artifact
``agent/seed<s>``) — a folder a later experiment names as ``warm_start`` (keeps learning) or as a
``ppo`` controller's ``agent_checkpoint`` (acts only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    CONFIG_ARTIFACT,
    MODEL_ARTIFACTS,
    SCHEDULE_ARTIFACT,
    SPEC_ARTIFACT,
)
from raytune_periodic.report.table import seed_of, selected_by_seed

#: summary metrics copied into selection.json and the registry tags
HEADLINE = ("best_val_f1", "test_f1_at_best", "final_val_f1", "final_test_f1", "final_gap")


@dataclass
class Exported:
    """What ``export_model`` wrote: the folder, the selected run and its model folders."""

    out: Path
    run_id: str
    trial_id: str
    models: dict[str, Path]
    selection: dict[str, Any]
    registered: str | None = None


def select_trial(data: Any, method: str, seed: int | str) -> Any:
    """The trial ``compare`` selects for ``method`` and ``seed``; one-line ConfigErrors when the
    method or seed is unknown or no trial is selectable."""
    by_name = {m.name: m for m in data.methods}
    if method not in by_name:
        raise ConfigError(
            "method", f"no method {method!r} in {data.experiment_name!r}; found: {sorted(by_name)}"
        )
    trials = by_name[method].trials
    seeds = sorted({seed_of(t) for t in trials})
    if str(seed) not in seeds:
        raise ConfigError("seed", f"method {method!r} has no trials at seed {seed}; seeds: {seeds}")
    chosen = selected_by_seed(trials).get(str(seed))
    if chosen is None:
        mine = [t for t in trials if seed_of(t) == str(seed)]
        states = sorted({t.status for t in mine})
        raise ConfigError(
            "seed",
            f"method {method!r} seed {seed}: no selectable trial ({len(mine)} trials, status "
            f"{'/'.join(states)}, none with a finite best_val_f1)",
        )
    return chosen


def export_model(
    experiment: str,
    method: str,
    seed: int | str,
    out: str | Path,
    *,
    tracking_uri: str | None = None,
    invocation_id: str | None = None,
    register: str | None = None,
) -> Exported:
    """Download the selected trial's models, config, schedule and spec into ``out``."""
    from raytune_periodic.report.compare import load_experiment
    from raytune_periodic.report.replay import client_for
    from raytune_periodic.tracking.models import read_model_info

    data = load_experiment(tracking_uri, experiment, invocation_id)
    trial = select_trial(data, method, seed)
    client = client_for(data.tracking_uri)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"best": _model_folder(client, trial.run_id, "best", out)}
    listed = {f.path for f in client.list_artifacts(trial.run_id, "model")}
    if MODEL_ARTIFACTS["last"] in listed:
        models["last"] = _model_folder(client, trial.run_id, "last", out)
    for path in models.values():
        read_model_info(path)  # our layout, this version (one-line error otherwise)
    _copy(client, data.invocation_run_id, CONFIG_ARTIFACT, out)
    _copy(client, trial.run_id, SCHEDULE_ARTIFACT, out)
    _copy(client, trial.run_id, SPEC_ARTIFACT, out)
    selection = {
        "experiment": experiment,
        "invocation_id": data.invocation_id,
        "method": method,
        "seed": str(seed),
        "run_id": trial.run_id,
        "trial_id": trial.trial_id,
        "status": trial.status,
        "metrics": {k: trial.summary[k] for k in HEADLINE if _finite(trial.summary.get(k))},
        "model_uris": {k: f"runs:/{trial.run_id}/{MODEL_ARTIFACTS[k]}" for k in models},
    }
    result = Exported(out, trial.run_id, trial.trial_id, models, selection)
    if register:
        result.registered = register_model(client, register, selection)
        selection["registered"] = result.registered
    (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    return result


def export_agent(
    experiment: str,
    method: str,
    seed: int | str,
    out: str | Path,
    *,
    tracking_uri: str | None = None,
    invocation_id: str | None = None,
) -> Path:
    """Download the shared PPO agent of ``method`` at ``seed`` into ``out`` (an agent folder)."""
    from raytune_periodic.protocol.mlflow_layout import AGENT_ARTIFACT
    from raytune_periodic.report.compare import load_experiment
    from raytune_periodic.report.replay import client_for
    from raytune_periodic.rl.agent import read_agent_meta

    data = load_experiment(tracking_uri, experiment, invocation_id)
    by_name = {m.name: m for m in data.methods}
    if method not in by_name or by_name[method].run_id is None:
        raise ConfigError("method", f"no method {method!r} in {experiment!r}: {sorted(by_name)}")
    client = client_for(data.tracking_uri)
    run_id = by_name[method].run_id
    name = f"{AGENT_ARTIFACT}/seed{seed}"
    if name not in {f.path for f in client.list_artifacts(run_id, AGENT_ARTIFACT)}:
        raise ConfigError("method", f"method {method!r} has no agent artifact {name!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", f"{out} is not empty: export the agent into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".download"
    got = Path(client.download_artifacts(run_id, name, str(tmp)))
    for item in got.iterdir():
        item.rename(out / item.name)
    for leftover in sorted(tmp.rglob("*"), reverse=True):
        leftover.rmdir()
    tmp.rmdir()
    read_agent_meta(out, "agent")  # our agent layout (one-line error otherwise)
    return out


def _model_folder(client: Any, run_id: str, kind: str, out: Path) -> Path:
    from raytune_periodic.tracking.models import download_model

    target = out / f"model_{kind}"
    if target.exists():
        raise ConfigError("out", f"{target} exists: export into a new or empty folder")
    tmp = out / f".download_{kind}"
    folder = download_model(client, run_id, kind, tmp)
    folder.rename(target)
    tmp.rmdir()
    return target


def _copy(client: Any, run_id: str, name: str, out: Path) -> None:
    """Download artifact ``name`` of the run into ``out`` when the run has it."""
    if any(f.path == name for f in client.list_artifacts(run_id)):
        client.download_artifacts(run_id, name, str(out))


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def register_model(client: Any, name: str, selection: dict[str, Any]) -> str:
    """A new version of registered model ``name`` from the selected run's ``model/best``;
    returns ``name/version``."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc) and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise ConfigError("register", str(exc).splitlines()[0]) from None
    run = client.get_run(selection["run_id"])
    tags = {k: str(selection[k]) for k in ("experiment", "method", "seed", "run_id")}
    tags |= {k: f"{v:.6g}" for k, v in selection["metrics"].items()}
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{MODEL_ARTIFACTS['best']}",
        run_id=selection["run_id"],
        tags=tags,
    )
    return f"{name}/{version.version}"
