"""Experiment tracking: the MLflow run tree (layout in docs/MLFLOW.md).

This package module holds the dependency-free record helpers (trial summaries, the schedule
CSV, param flattening); ``MlflowStore`` lives in ``tracking.mlflow_store`` and is imported on
first access, so ``import raytune_periodic.tracking`` stays free of MLflow (~1.5 s to import).
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from raytune_periodic.protocol.mlflow_layout import (  # noqa: F401  (re-exported)
    COST_KEYS,
    SCHEDULE_ARTIFACT,
    SUMMARY_KEYS,
    VALUE_PREFIX,
    default_tracking_uri,
)

if TYPE_CHECKING:
    from raytune_periodic.tracking.mlflow_store import MlflowStore

__all__ = [
    "COST_KEYS",
    "SUMMARY_KEYS",
    "MlflowStore",
    "default_tracking_uri",
    "flatten",
    "is_finite",
    "metric_key",
    "own_passes",
    "schedule_csv",
    "sqlite_path",
    "summarize",
    "yaml_text",
]

SCHEDULE_HEAD = ("step", "period", "epoch")
SCHEDULE_TAIL = ("train_loss", "val_loss", "train_f1", "val_f1")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def __getattr__(name: str) -> Any:
    if name == "MlflowStore":
        from raytune_periodic.tracking.mlflow_store import MlflowStore

        return MlflowStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :]).split("?")[0]).resolve()


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow rejects in metric/param keys replaced by ``_``."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:250]


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` strings (lists as their repr), keys sanitised."""
    out: dict[str, str] = {}
    for key, val in params.items():
        name = f"{prefix}{key}"
        if isinstance(val, Mapping) and val:
            out.update(flatten(val, f"{name}."))
        else:
            out[metric_key(name)] = str(val)[:6000]
    return out


def is_finite(x: object) -> bool:
    """A finite real number; MLflow stores ±inf as ±float max, so those count as infinite."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    return math.isfinite(x) and abs(x) < sys.float_info.max


def summarize(records: Sequence[Mapping[str, float]], n_exploits: int = 0) -> dict[str, float]:
    """The trial summary metrics from per-step metric dicts (each with ``step``).

    ``best_val_f1``: max ``full_val_f1`` over epoch ends (max ``val_f1`` when no epoch ended);
    ``test_f1_at_best``: ``test_f1`` at the first epoch end reaching that best;
    ``final_val_f1``: the last epoch end's ``full_val_f1`` (else the last ``val_f1``);
    ``final_test_f1``: the last epoch end's ``test_f1`` (no early stopping: shows overfitting);
    ``final_gap``: the last step's ``gap``; ``trial_seconds``: sum of ``period_seconds``;
    ``total_passes``: the passes this trial ran (see ``own_passes``); ``n_periods``: steps.
    Losses at the last epoch (the Tiny-ImageNet paper's Table 1): ``final_train_loss`` = the last
    step's ``train_loss`` (mean over its passes, penalties included, as Keras' ``loss``);
    ``final_val_loss`` = the last epoch end's ``full_val_loss`` (plain cross-entropy of the whole
    validation split, else the last ``val_loss``); ``final_val_loss_penalised`` = that plus the
    step's ``full_val_penalty`` (Keras' ``val_loss`` adds the weight penalties), when logged.
    Non-finite values are ignored; a metric that cannot be computed is left out.
    """
    recs = sorted(records, key=lambda r: r.get("step", 0))
    out: dict[str, float] = {"n_periods": float(len(recs)), "n_exploits": float(n_exploits)}
    ends = [r for r in recs if is_finite(r.get("full_val_f1"))]
    if ends:
        best = max(ends, key=lambda r: r["full_val_f1"])
        out["best_val_f1"] = best["full_val_f1"]
        out["final_val_f1"] = ends[-1]["full_val_f1"]
        if is_finite(ends[-1].get("test_f1")):
            out["final_test_f1"] = ends[-1]["test_f1"]
        if is_finite(best.get("test_f1")):
            out["test_f1_at_best"] = best["test_f1"]
    else:
        vals = [r["val_f1"] for r in recs if is_finite(r.get("val_f1"))]
        if vals:
            out["best_val_f1"] = max(vals)
        if recs and is_finite(recs[-1].get("val_f1")):
            out["final_val_f1"] = recs[-1]["val_f1"]
    if recs and is_finite(recs[-1].get("gap")):
        out["final_gap"] = recs[-1]["gap"]
    out.update(_final_losses(recs))
    seconds = [r["period_seconds"] for r in recs if is_finite(r.get("period_seconds"))]
    out["trial_seconds"] = float(sum(seconds))
    out["total_passes"] = own_passes(recs)
    for key in COST_KEYS:
        vals = [r[key] for r in recs if is_finite(r.get(key))]
        if vals:
            out[key.replace("/", "_")] = vals[-1]
    return out


def _final_losses(recs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``final_train_loss``, ``final_val_loss`` and ``final_val_loss_penalised`` (see
    ``summarize``)."""
    out: dict[str, float] = {}
    if recs and is_finite(recs[-1].get("train_loss")):
        out["final_train_loss"] = recs[-1]["train_loss"]
    ends = [r for r in recs if is_finite(r.get("full_val_loss"))]
    if ends:
        out["final_val_loss"] = ends[-1]["full_val_loss"]
        if is_finite(ends[-1].get("full_val_penalty")):
            out["final_val_loss_penalised"] = out["final_val_loss"] + ends[-1]["full_val_penalty"]
    elif recs and is_finite(recs[-1].get("val_loss")):
        out["final_val_loss"] = recs[-1]["val_loss"]
    return out


def own_passes(records: Sequence[Mapping[str, float]]) -> float:
    """Forward passes this trial ran, from the cumulative ``passes`` counter of its steps.

    ``passes`` follows the checkpoint, so after a restore from another trial's checkpoint (a
    PBT exploit) it jumps; such a step (and the first) counts ``passes / (period + 1)``, the
    passes per period of its lineage; a step that directly follows the previous period counts
    the difference.
    """
    total, prev_period, prev_passes = 0.0, math.nan, math.nan
    for rec in sorted(records, key=lambda r: r.get("step", 0)):
        passes, period = rec.get("passes", math.nan), rec.get("period", math.nan)
        if not (is_finite(passes) and is_finite(period)):
            continue
        if period == prev_period + 1 and passes > prev_passes:
            total += passes - prev_passes
        else:
            total += passes / (period + 1)
        prev_period, prev_passes = period, passes
    return total


def schedule_csv(records: Sequence[Mapping[str, float]]) -> str:
    """``schedule.csv``: one row per step: step, period, epoch, each value/*, losses and F1s."""
    recs = sorted(records, key=lambda r: r.get("step", 0))
    values = sorted({k for r in recs for k in r if k.startswith(VALUE_PREFIX)})
    cols = [*SCHEDULE_HEAD, *values, *SCHEDULE_TAIL]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for rec in recs:
        row = [rec.get(c, "") for c in cols]
        writer.writerow([_int_if(c, v) for c, v in zip(cols, row)])
    return buf.getvalue()


def _int_if(col: str, val: object) -> object:
    return int(val) if col in ("step", "period") and is_finite(val) else val  # type: ignore[arg-type]


def yaml_text(config: Mapping[str, Any]) -> str:
    """``config`` as YAML (tuples as lists, other objects as their ``str``)."""
    import yaml

    return str(yaml.safe_dump(_plain(config), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)
