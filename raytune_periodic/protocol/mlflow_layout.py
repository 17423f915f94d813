"""The MLflow layout (docs/MLFLOW.md): invocation run → method runs → trial runs.

Every run carries ``rp.kind`` and ``rp.invocation_id``; method runs ``rp.method``/``rp.search``;
trial runs ``rp.trial_id``, ``rp.status`` and the trial's seed, controller, dataset and model.
Per-period values are step metrics ``value/<group>``; summaries are plain metrics (names below).
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow's default).

    The one default of every command (run, compare, replay, gradcam, mlflow-sync, the API).
    """
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# ---------------------------------------------------------------- run kinds (``rp.kind``)
KIND_INVOCATION, KIND_METHOD, KIND_TRIAL = "invocation", "method", "trial"

# ---------------------------------------------------------------- tags
TAG_PREFIX = "rp."
TAG_KIND = "rp.kind"
TAG_INVOCATION = "rp.invocation_id"
TAG_METHOD = "rp.method"
TAG_SEARCH = "rp.search"
TAG_TRIAL = "rp.trial_id"
TAG_STATUS = "rp.status"  #: trial runs: running | ok | diverged | error
TAG_SEED = "rp.seed"
TAG_REPLICATE = "rp.replicate"
TAG_CONTROLLER = "rp.controller"
TAG_DATASET = "rp.dataset"
TAG_MODEL = "rp.model"
TAG_LAST_DONOR = "rp.last_donor"  #: PBT: the trial whose checkpoint was exploited last
TAG_STORAGE_PATH = "rp.storage_path"  #: invocation runs: the Tune storage of the experiment
TAG_CHECKPOINT_PATH = "rp.checkpoint_path"  #: trial runs: the trial's last Tune checkpoint

STATUS_RUNNING = "running"
STATUS_ERROR = "error"  #: besides records.STATUS_OK / STATUS_DIVERGED

# ---------------------------------------------------------------- params
PARAM_METHOD, PARAM_SEARCH, PARAM_SEED = "method", "search", "seed"

# ---------------------------------------------------------------- metrics
VALUE_PREFIX = "value/"  #: ``value/<group>``: the value a controller set for a period
#: cumulative cost counters some methods report per step (surrogate HPO); the last value is kept
COST_KEYS = ("cost/t_ori", "cost/original_trainings", "cost/surrogate_trainings", "cost/cpu_s")
#: summary metrics ``finish_trial`` writes on every trial run
SUMMARY_KEYS = (
    "cost_t_ori",
    "cost_original_trainings",
    "cost_surrogate_trainings",
    "cost_cpu_s",
    "best_val_f1",
    "test_f1_at_best",
    "final_gap",
    "final_val_f1",
    "final_test_f1",
    "final_train_loss",
    "final_val_loss",
    "final_val_loss_penalised",
    "trial_seconds",
    "total_passes",
    "n_periods",
    "n_exploits",
)
EXPLOITED = "exploited"  #: step metric: 1 at the first step after a PBT exploit
EXPLOIT_DONOR_PERIOD = "exploit_donor_period"

# ---------------------------------------------------------------- artifacts
SCHEDULE_ARTIFACT = "schedule.csv"
PBT_EVENTS_ARTIFACT = "pbt_events.csv"
CONFIG_ARTIFACT = "config.yaml"
AGENT_ARTIFACT = "agent"
#: trial runs: the run spec the trial trained (JSON), logged at every trial's end
SPEC_ARTIFACT = "rp_spec.json"
#: trial runs: MLflow PyTorch models (``mlflow.pytorch``, pt2 graph) of the best-validation-epoch
#: and the last weights; each folder's ``extra_files/`` holds MODEL_WEIGHTS_FILE, MODEL_INFO_FILE
MODEL_ARTIFACTS = {"best": "model/best", "last": "model/last"}
MODEL_WEIGHTS_FILE = "state_dict.pt"  #: plain state dict, loadable with weights_only=True
MODEL_INFO_FILE = "rp_model.json"  #: spec, values in force, class names, input shape, layout
MODEL_LAYOUT = 1  #: version of the model artifact layout (export refuses others)
TAG_MODELS = "rp.models"  #: trial runs: the model artifacts logged, e.g. ``best,last``


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow ``search_runs`` filter matching every ``tag = value`` of ``tags``."""

    def quote(value: str) -> str:
        return "'" + str(value).replace("'", "\\'") + "'"

    return " and ".join(f"tags.`{key}` = {quote(val)}" for key, val in tags.items())
