"""A trial's best-validation-epoch weights, kept by the trial worker and written into each
checkpoint in a safe format (torch + json only: imported by the Ray worker, no MLflow).

"Best" is the rule ``tracking.summarize`` (and so ``compare``'s ``test_f1_at_best``) uses: the
first epoch-end evaluation whose ``full_val_f1`` is the trial's maximum (a later equal value does
not replace it; non-finite values never count). The weights are copied (to the CPU) right after
that evaluation, before the rest of the period trains on (the engine's
``epoch_eval_listeners``), so the logged model is exactly the one that scored ``best_val_f1`` and
``test_f1_at_best``. An engine without listeners gets only its last weights logged.

Checkpoint files (written by ``PeriodTrainable.save_checkpoint`` through ``save``):

- ``rp_best_model.pt`` / ``rp_last_model.pt``: plain state dicts (weights-only loadable);
- ``rp_models.json``: the owner trial, the best epoch's F1/period/values, the last period's
  values, the model's input shape, class count and class names, and whether the best covers the
  trial's whole timeline (``complete``).

A PBT exploit restores a *donor's* checkpoint into the trial. Its own best survives in the worker's
memory, or, when the exploit runs in another worker, in ``<trial folder>/rp_best/best.pt`` of
Tune's storage (written at each checkpoint whose best changed; read back by ``restore``).
``complete`` is false only for a trial exploited in another worker before it stored any best.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import weakref
from collections.abc import Mapping
from typing import Any

import torch

from raytune_periodic.protocol.trial_results import trial_folder

BEST_FILE = "rp_best_model.pt"
LAST_FILE = "rp_last_model.pt"
META_FILE = "rp_models.json"
STORED_DIR = "rp_best"  #: in the trial's folder of Tune's storage: its best so far (exploits)
STORED_FILE = "best.pt"
LOG_MODELS_KEY = "log_models"  #: ``config["rp"]`` key: selected | all | none
LOG_MODELS_CHOICES = ("selected", "all", "none")
#: ``rp_models.json`` ``builder`` kind of a surrogate search's original network (its method's
#: options rebuild it: ``surrogate.original.rebuild_original``); absent: the run spec does
SURROGATE_BUILDER = "surrogate_original"


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def class_names(data: Any) -> list[str]:
    """The dataset's class names when it has them (``classes``), else ``"0"``..``"C-1"``."""
    for obj in (data, getattr(data, "train", None)):
        names = getattr(obj, "classes", None)
        if names is not None and len(names) == data.num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(int(data.num_classes))]


class BestWeights:
    """The best epoch of one trial's timeline (see the module docstring)."""

    def __init__(self, trial_id: str, complete: bool = True) -> None:
        self.trial_id = trial_id
        self.complete = complete
        self.f1: float | None = None
        self.period: int | None = None
        self.values: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self._engine_ref: weakref.ref[Any] | None = None
        self.stored_f1: float | None = None  #: the best written to the trial's storage folder

    def offer(self, f1: Any, engine: Any) -> None:
        """An epoch-end ``full_val_f1`` of ``engine``: keep its weights if it is a new best."""
        self.offer_model(f1, engine.period, engine.regularizers.values(), engine.model)

    def offer_model(
        self, f1: Any, period: int, values: Mapping[str, float], model: torch.nn.Module
    ) -> None:
        """``offer`` for a trainable without an engine (the surrogate searches' original)."""
        if f1 is None or not math.isfinite(float(f1)):
            return
        if self.f1 is None or float(f1) > self.f1:
            self.f1, self.period = float(f1), int(period)
            self.values = {k: float(v) for k, v in values.items()}
            self.state = _cpu_state(model)

    def attach(self, engine: Any) -> None:
        """Watch ``engine``'s epoch-end evaluations (this tracker replaces any other one on it).

        The engine holds the listener and the tracker only a weak reference back: no reference
        cycle keeps a replaced engine (a reused actor's previous trial) alive until the next
        garbage collection."""
        self._engine_ref = weakref.ref(engine)
        listeners = getattr(engine, "epoch_eval_listeners", None)
        if listeners is None:
            return  # an engine without epoch-end evaluations: only last weights
        listeners[:] = [f for f in listeners if not isinstance(f, _Offer)] + [_Offer(self)]

    @property
    def engine(self) -> Any:
        """The engine attached last (None once it is gone)."""
        ref = getattr(self, "_engine_ref", None)
        return None if ref is None else ref()

    # ------------------------------------------------------------------ checkpoint files
    def save(self, directory: str, engine: Any) -> None:
        """Write the best and last weights and ``rp_models.json`` into ``directory``."""
        last = {"period": int(engine.period) - 1, "values": engine.regularizers.values()}
        self.write(directory, engine.model, engine.data, last)

    def write(
        self,
        directory: str,
        model: torch.nn.Module,
        data: Any,
        last: Mapping[str, Any],
        builder: Mapping[str, Any] | None = None,
    ) -> None:
        """``save`` for any trainable: ``last`` holds the last period and its values;
        ``builder`` (``rp_models.json``) tells a reader how to rebuild a model that the run spec
        alone does not describe (``tracking.models.build_model``)."""
        if self.state is not None:
            torch.save(self.state, os.path.join(directory, BEST_FILE))
        torch.save(_cpu_state(model), os.path.join(directory, LAST_FILE))
        meta = {
            "trial_id": self.trial_id,
            "complete": self.complete,
            "best_val_f1": self.f1,
            "best_period": self.period,
            "best_values": self.values,
            "last_period": int(last["period"]),
            "last_values": {k: float(v) for k, v in last["values"].items()},
            "input_shape": [int(x) for x in data.input_shape],
            "num_classes": int(data.num_classes),
            "class_names": class_names(data),
        }
        if builder is not None:
            meta["builder"] = dict(builder)
        with open(os.path.join(directory, META_FILE), "w") as fh:
            json.dump(meta, fh)

    @classmethod
    def load(cls, directory: str, trial_id: str) -> BestWeights | None:
        """The tracker saved in ``directory`` if ``trial_id`` wrote it (else None)."""
        meta = read_meta(directory)
        if meta is None or meta.get("trial_id") != trial_id:
            return None
        out = cls(trial_id, bool(meta.get("complete", True)))
        path = os.path.join(directory, BEST_FILE)
        if meta.get("best_val_f1") is not None and os.path.isfile(path):
            out.f1, out.period = float(meta["best_val_f1"]), int(meta["best_period"])
            out.values = dict(meta.get("best_values") or {})
            out.state = torch.load(path, map_location="cpu", weights_only=True)
        return out


class _Offer:
    """The engine's listener: hands each epoch-end ``full_val_f1`` to its tracker."""

    def __init__(self, tracker: BestWeights) -> None:
        self.tracker = tracker

    def __call__(self, engine: Any, fields: dict[str, float]) -> None:
        self.tracker.offer(fields.get("full_val_f1"), engine)


def read_meta(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return dict(json.load(fh))


# ---------------------------------------------------------------------- trainable hooks
def _mode(trainable: Any) -> str:
    return str(trainable.config.get("rp", {}).get(LOG_MODELS_KEY, "selected"))


def track(trainable: Any) -> None:
    """Before a ``step``: make sure the trial's tracker watches the current engine (a new
    tracker when the actor now serves another trial or the engine was rebuilt)."""
    if _mode(trainable) == "none":
        return
    tracker: BestWeights | None = getattr(trainable, "_rp_best", None)
    engine = trainable.engine
    if tracker is None or tracker.trial_id != trainable.trial_id:
        tracker = BestWeights(trainable.trial_id, complete=int(engine.period) == 0)
        trainable._rp_best = tracker
    if tracker.engine is not engine:
        tracker.attach(engine)


def save(trainable: Any, checkpoint_dir: str) -> None:
    """In ``save_checkpoint``: the tracker's files next to the engine state, and the best
    also in the trial's own folder of Tune's storage when it changed (see ``restore``)."""
    if _mode(trainable) == "none":
        return
    track(trainable)
    tracker: BestWeights = trainable._rp_best
    tracker.save(checkpoint_dir, trainable.engine)
    where = _stored_where(trainable)
    if where is None or tracker.state is None or tracker.f1 == tracker.stored_f1:
        return
    fs, folder = where
    buf = io.BytesIO()
    meta = {"trial_id": tracker.trial_id, "complete": tracker.complete, "f1": tracker.f1}
    meta |= {"period": tracker.period, "values": tracker.values}
    torch.save({"meta": json.dumps(meta), "state": tracker.state}, buf)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f".{STORED_FILE}.{os.getpid()}")
    with fs.open_output_stream(tmp) as out:
        out.write(buf.getvalue())
    fs.move(tmp, posixpath.join(folder, STORED_FILE))  # whole or not at all
    tracker.stored_f1 = tracker.f1


def restore(trainable: Any, checkpoint_dir: str) -> None:
    """In ``load_checkpoint``: the trial's own checkpoint (a crash-resume) restores its tracker;
    a donor's (a PBT exploit) keeps this trial's tracker when it is still in memory, else (the
    trial was exploited in another worker) reads the best its own last checkpoint stored in its
    trial folder; only a trial without any stored best starts a tracker marked incomplete."""
    if _mode(trainable) == "none":
        return
    own = BestWeights.load(checkpoint_dir, trainable.trial_id)
    current: BestWeights | None = getattr(trainable, "_rp_best", None)
    if own is None and (current is None or current.trial_id != trainable.trial_id):
        own = _load_stored(trainable) or BestWeights(trainable.trial_id, complete=False)
    if own is not None:
        trainable._rp_best = own
    trainable._rp_best.attach(trainable.engine)


def _stored_where(trainable: Any) -> tuple[Any, str] | None:
    """(filesystem, folder) of the trial's stored best in Tune's storage."""
    return trial_folder(getattr(trainable, "_storage", None), STORED_DIR)


def _load_stored(trainable: Any) -> BestWeights | None:
    where = _stored_where(trainable)
    if where is None:
        return None
    fs, folder = where
    try:
        with fs.open_input_stream(posixpath.join(folder, STORED_FILE)) as src:
            blob = src.read()
    except (FileNotFoundError, OSError):
        return None
    data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    meta = json.loads(data["meta"])
    if meta.get("trial_id") != trainable.trial_id:
        return None
    out = BestWeights(trainable.trial_id, bool(meta.get("complete", True)))
    out.f1, out.period = float(meta["f1"]), int(meta["period"])
    out.values = dict(meta.get("values") or {})
    out.state = data["state"]
    out.stored_f1 = out.f1
    return out
