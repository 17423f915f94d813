"""Trial models in MLflow: the best-validation-epoch and last weights of a trial as MLflow
PyTorch models on its run, and their safe loading (docs/MLFLOW.md, "Models").

Driver side, at a trial's end, ``log_trial_models`` copies the weight files the trial wrote into
its checkpoint (``tracking/best_weights.py``) to a local staging folder and queues one
``log_models`` write on the store's write path (the writer thread; spooled with the folder kept
while the server is down, like ``log_artifacts_dir``). Applying it rebuilds the model from the run
spec, loads the state dict and saves each as an MLflow model (``mlflow.pytorch.save_model`` in
the ``pt2`` graph format, with signature, input example and two extra files) uploaded to
``model/best`` and ``model/last`` (``protocol/mlflow_layout.MODEL_ARTIFACTS``):

- ``extra_files/state_dict.pt``: the plain state dict (``torch.load(weights_only=True)``);
- ``extra_files/rp_model.json``: layout version, run spec, regularizer values in force, input
  shape, class names, the epoch's F1 and period.

Every reader in this package (``load_model_dir``: export, Grad-CAM) rebuilds the model from the
spec and loads ``state_dict.pt`` weights-only; nothing unpickles a model. ``mlflow.pytorch.
load_model`` works on the folders too (MLflow's torch.export loader).

Which trials (``mlflow.log_models``): ``selected`` (default) logs a trial whose ``best_val_f1`` is
at least that of every trial of its seed that finished before it in this driver, so the trial
``compare`` selects per seed always has its models (a few earlier ones do too, ~ln(trials) per
seed); ``all`` logs every trial; ``none`` logs no weights. The spec (``rp_spec.json``) is logged
for every trial in every mode: ``replay --run`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.protocol.mlflow_layout import (
    MODEL_ARTIFACTS,
    MODEL_INFO_FILE,
    MODEL_LAYOUT,
    MODEL_WEIGHTS_FILE,
    SPEC_ARTIFACT,
    TAG_MODELS,
)
from raytune_periodic.tracking import is_finite, summarize
from raytune_periodic.tracking.best_weights import (
    BEST_FILE,
    LAST_FILE,
    META_FILE,
    SURROGATE_BUILDER,
    read_meta,
)

_log = logging.getLogger(__name__)

EXTRA_DIR = "extra_files"  #: where ``mlflow.pytorch.save_model`` puts ``extra_files``
_WEIGHT_FILES = {"best": BEST_FILE, "last": LAST_FILE}
#: per store: {seed: best_val_f1 of the best trial logged so far} (``selected`` mode)
_RUNNING_BEST: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------- driver: queue
@contextlib.contextmanager
def _as_directory(checkpoint: Any) -> Iterator[str]:
    """A local directory of ``checkpoint``: a path, or a ``ray.tune.Checkpoint`` (downloaded
    from remote storage by ``as_directory``)."""
    if hasattr(checkpoint, "as_directory"):
        with checkpoint.as_directory() as path:
            yield str(path)
    else:
        yield str(checkpoint)


def wants_models(
    store: Any, mode: str, seed: object, records: Sequence[Mapping[str, float]] | None
) -> bool:
    """Whether a trial's models are logged under ``mode`` (see the module docstring)."""
    if mode == "all":
        return True
    if mode != "selected":
        return False
    score = summarize(records or []).get("best_val_f1", math.nan)
    if not is_finite(score):
        return False
    best = _RUNNING_BEST.setdefault(store, {})
    key = str(seed)
    if key in best and score < best[key]:
        return False
    best[key] = float(score)
    return True


def log_trial_models(
    store: Any,
    run_id: str,
    checkpoint: Any,
    spec: Mapping[str, Any],
    *,
    mode: str = "selected",
    seed: object = None,
    records: Sequence[Mapping[str, float]] | None = None,
    status: str = "ok",
) -> list[str]:
    """Log a finished trial's spec and, when ``mode`` wants them, its best and last weights as
    MLflow models (queued; returns the model kinds queued, e.g. ``["best", "last"]``).

    ``checkpoint``: the trial's last checkpoint (a directory or a ``ray.tune.Checkpoint``);
    ``records``: its per-step metrics (the ``selected`` rule reads ``best_val_f1`` from them);
    ``status``: errored trials log no weights. Nothing here assumes a Tune trial.
    """
    text = json.dumps(dict(spec), indent=1, sort_keys=True, default=str)
    store._log_metrics({"op": "log_text", "run": run_id, "text": text, "path": SPEC_ARTIFACT})
    if checkpoint is None or status == "error" or not wants_models(store, mode, seed, records):
        return []
    staging = Path(store.spool.path).parent / "models" / uuid.uuid4().hex
    with _as_directory(checkpoint) as directory:
        if read_meta(directory) is None:
            return []  # a trainable that writes no weights
        staging.mkdir(parents=True)
        kinds = []
        for name in (META_FILE, *_WEIGHT_FILES.values()):
            src = Path(directory) / name
            if src.is_file():
                shutil.copyfile(src, staging / name)
                kinds += [k for k, f in _WEIGHT_FILES.items() if f == name]
    store._log_metrics(
        {"op": "log_models", "run": run_id, "dir": str(staging), "spec": json.loads(text)}
    )
    return kinds


#: one torch.export at a time in this process: torch saves and restores its process-global
#: "compiling"/"exporting" flags around each export, so two overlapping exports (two stores'
#: writer threads, e.g. two searches run from threads of one process) can leave both flags set
#: for good; every later ``torch.compile`` is then a no-op and eager code that asks
#: ``torch.compiler.is_compiling()`` (torch.optim) takes its compiled-mode paths
_EXPORT = threading.Lock()

# ---------------------------------------------------------------------- first-export cost
_WARM = threading.Lock()
_warm_started = False


def warm_up_in_background() -> None:
    """Import, once per process and on a daemon thread, what the first pt2 export needs:
    ``torch.export``/``torch._dynamo`` and ``mlflow.pytorch`` (~1.5-2.6 s of CPU, measured in
    bench/tune_overhead.py). Called when a search opens its first trial that will log models,
    so the imports overlap the trials' start-up instead of delaying the first model write."""
    global _warm_started
    with _WARM:
        if _warm_started:
            return
        _warm_started = True

    def warm() -> None:
        try:
            import mlflow.pytorch  # noqa: F401
            import torch.export._trace  # noqa: F401 - the heavy part of the first export
        except Exception:  # noqa: BLE001 - only a head start: the real export reports errors
            _log.debug("model export warm-up failed", exc_info=True)

    threading.Thread(target=warm, name="rp-model-export-warmup", daemon=True).start()


@contextlib.contextmanager
def _no_requirement_scan() -> Iterator[None]:
    """MLflow checks a model's pip requirements against the environment by scanning every
    installed distribution (~1.3 s the first time in a process). Ours are this process's own
    torch and MLflow versions, so the check cannot fail: skipped for the duration of a save."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    original = getattr(environment, name, None)
    if original is None:  # another MLflow version: nothing to skip
        yield
        return
    setattr(environment, name, lambda *a, **k: None)
    try:
        yield
    finally:
        setattr(environment, name, original)


# ---------------------------------------------------------------------- writer: apply
def apply_log_models(client: Any, run_id: str, op: Mapping[str, Any]) -> None:
    """The ``log_models`` write (the store's writer thread, or a spool replay): build, save and
    upload each model in the staging folder, tag the run, remove the folder."""
    staging = Path(op["dir"])
    if not staging.is_dir():
        return  # delivered before (a replay after the folder was removed)
    meta = json.loads((staging / META_FILE).read_text())
    logged = []
    for kind, name in _WEIGHT_FILES.items():
        if not (staging / name).is_file():
            continue
        state = torch.load(staging / name, map_location="cpu", weights_only=True)
        out = staging / kind
        shutil.rmtree(out, ignore_errors=True)  # a retried write
        save_model_dir(out, kind, state, meta, op["spec"])
        client.log_artifacts(run_id, str(out), MODEL_ARTIFACTS[kind])
        logged.append(kind)
    client.set_tag(run_id, TAG_MODELS, ",".join(logged))
    shutil.rmtree(staging, ignore_errors=True)


def model_info(kind: str, meta: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``rp_model.json`` of a ``best``/``last`` model from the checkpoint's ``rp_models.json``."""
    return {
        "layout": MODEL_LAYOUT,
        "kind": kind,
        "trial_id": meta.get("trial_id"),
        "val_f1": meta.get("best_val_f1") if kind == "best" else None,
        "period": meta.get("best_period") if kind == "best" else meta.get("last_period"),
        "values": meta.get("best_values") if kind == "best" else meta.get("last_values"),
        "complete": meta.get("complete", True),
        "input_shape": meta["input_shape"],
        "num_classes": meta["num_classes"],
        "class_names": meta["class_names"],
        "spec": dict(spec),
        **({"builder": meta["builder"]} if meta.get("builder") else {}),
    }


def save_model_dir(
    path: Path, kind: str, state: Mapping[str, Any], meta: Mapping[str, Any], spec: Any
) -> None:
    """Write one MLflow PyTorch model folder (pt2) with the state dict and ``rp_model.json``."""
    mlflow_pytorch = require("mlflow.pytorch")
    infer_signature = require("mlflow.models").infer_signature

    info = model_info(kind, meta, spec)
    model = build_model(info, state)
    side = path.parent / f"{kind}_extra"
    side.mkdir(exist_ok=True)
    torch.save(dict(state), side / MODEL_WEIGHTS_FILE)
    (side / MODEL_INFO_FILE).write_text(json.dumps(info, indent=1, default=str))
    extra = [str(side / MODEL_WEIGHTS_FILE), str(side / MODEL_INFO_FILE)]
    example = torch.zeros((2, *info["input_shape"]))  # batch 2: the batch dim stays dynamic
    with torch.no_grad():
        logits = model(example)
    try:
        with _EXPORT, _no_requirement_scan(), warnings.catch_warnings():
            # the surrogate's sparse head keeps its last z/x for eq. 4's penalty; export only
            # notes it (those attributes are not part of the exported graph's outputs)
            warnings.filterwarnings("ignore", message=".*assigned during export")
            mlflow_pytorch.save_model(
                model,
                str(path),
                signature=infer_signature(example.numpy(), logits.numpy()),
                input_example=example.numpy(),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                extra_files=extra,
                serialization_format="pt2",
            )
    except Exception as exc:  # noqa: BLE001 - torch.export refused the model: weights only
        _log.warning("model %s: no MLflow pt2 flavor (%s); logging the weights only", kind, exc)
        shutil.rmtree(path, ignore_errors=True)
        (path / EXTRA_DIR).mkdir(parents=True)
        for file in extra:
            shutil.copyfile(file, path / EXTRA_DIR / Path(file).name)


# ---------------------------------------------------------------------- readers
def build_model(info: Mapping[str, Any], state: Mapping[str, Any]) -> torch.nn.Module:
    """The model of ``rp_model.json`` ``info`` with ``state`` loaded, in eval mode; a state dict
    that does not fit the spec's model is a one-line ConfigError. A surrogate search's original
    (``builder``) is rebuilt from its method's options, the rest from the run spec."""
    from raytune_periodic.regularizers import insert_regularizers
    from raytune_periodic.training.spec import parse_run_spec

    builder = info.get("builder") or {}
    if builder.get("kind") == SURROGATE_BUILDER:
        from raytune_periodic.surrogate.fc_head import sparse_head
        from raytune_periodic.surrogate.original import rebuild_original

        name = str(builder["options"].get("model"))
        model = rebuild_original(builder, info["input_shape"], int(info["num_classes"]))
        set_values = sparse_head(model).set_values
    elif builder:
        raise ConfigError("model", f"unknown model builder {builder.get('kind')!r}")
    else:
        from raytune_periodic.models import build_model as build

        spec = parse_run_spec(info["spec"])
        opts = dict(spec.model)
        name = opts.pop("name")
        model = build(name, tuple(info["input_shape"]), int(info["num_classes"]), **opts)
        set_values = insert_regularizers(model, spec.regularizers).set_values
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError("model", f"weights do not fit model {name!r} ({first})") from None
    if info.get("values"):
        set_values({k: float(v) for k, v in info["values"].items()})
    return model.eval()


def read_model_info(path: str | Path) -> dict[str, Any]:
    """``rp_model.json`` of a downloaded model folder; a missing file or another layout version
    is a one-line ConfigError."""
    file = Path(path) / EXTRA_DIR / MODEL_INFO_FILE
    if not file.is_file():
        raise ConfigError("model", f"{path}: no {EXTRA_DIR}/{MODEL_INFO_FILE} (not our model)")
    info = dict(json.loads(file.read_text()))
    if info.get("layout") != MODEL_LAYOUT:
        raise ConfigError(
            "model",
            f"{path}: model layout {info.get('layout')!r}, this version reads {MODEL_LAYOUT}",
        )
    return info


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a downloaded model folder, rebuilt from its spec with the state dict loaded
    weights-only (no unpickling), and its ``rp_model.json``."""
    info = read_model_info(path)
    state = torch.load(
        Path(path) / EXTRA_DIR / MODEL_WEIGHTS_FILE, map_location="cpu", weights_only=True
    )
    return build_model(info, state), info


def download_model(client: Any, run_id: str, kind: str, dst: str | Path) -> Path:
    """Download the trial run's ``model/<kind>`` folder into ``dst``; a run without it is a
    one-line ConfigError."""
    if kind not in MODEL_ARTIFACTS:
        raise ConfigError("model", f"model kind must be one of {sorted(MODEL_ARTIFACTS)}")
    artifact = MODEL_ARTIFACTS[kind]
    listed = {f.path for f in client.list_artifacts(run_id, artifact.split("/")[0])}
    if artifact not in listed:
        raise ConfigError(
            "model",
            f"run {run_id} has no {artifact} artifact (its models were not logged: "
            "mlflow.log_models: none, a trial the selected rule skipped, or a run from before "
            "models were logged)",
        )
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact, str(dst)))
