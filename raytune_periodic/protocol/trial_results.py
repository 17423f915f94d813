"""What a trial sends to Tune and writes into its checkpoints (the trainable ↔ driver protocol).

A Tune result is a flat dict. Beside the metrics of the iteration's last period (``val_f1``,
``gap``, ...) every trainable reports the keys below; the driver-side MLflow callback reads them.
"""

from __future__ import annotations

import posixpath
from typing import Any

#: the metrics ``tune.metric`` may name (all maximised); ``objective`` is the default
OBJECTIVE = "objective"
FULL_VAL_LAST = "full_val_f1_last"  #: the last full-validation macro-F1 (0.0 before the first)
VAL_F1 = "val_f1"
RANKED_METRICS = (OBJECTIVE, VAL_F1, FULL_VAL_LAST)
WORST_SCORE = 0.0  #: what every ranked metric of a diverged trial becomes (F1 is in [0, 1])

RECORDS = "rp_records"  #: JSON list of every period's metrics in this iteration (+ replays)
STATUS = "rp_status"  #: ``ok`` | ``diverged``
WALL = "rp_wall"  #: wall-clock time at the end of the step (benchmarks measure the gaps)
DONOR_TRIAL = "rp_donor_trial"  #: set once after a PBT exploit: whose checkpoint was restored
DONOR_PERIOD = "rp_donor_period"  #: ... and the donor's last period in it
RESTORE_START = "rp_restore_start"  #: ... and when its checkpoint load began (wall clock)
RESTORE_SECONDS = "rp_restore_seconds"  #: ... and how long the load took in the trial
IN_ACTOR = "rp_exploit_in_actor"  #: ... 1 if in the running actor (no pause), else 0
DONE = "done"  #: Tune's own stop flag
PERIODS = "rp_periods"  #: periods the trial has run (PBT's time attribute; iterations vary)
#: ``ppo_shared``: JSON list, per child ``{"child", "records", "status", "done"}`` — each child is
#: a trial run of its own (trial id ``<tune trial id>-c<k>``)
CHILDREN = "rp_children"
AGENT = "rp_agent"  #: ``ppo_shared``: JSON list of the agent's updates in this iteration

#: files in a trial checkpoint directory
ENGINE_FILE = "engine.pt"  #: the period engine's exact state (``PeriodTrainable``)
SURROGATE_FILE = "surrogate.pt"  #: Algorithm 1's state (the surrogate searches' trainable)
META_FILE = "rp_meta.json"  #: ``{"trial_id", "period"}``: readable without torch
AGENT_DIR = "agent"  #: a learning controller's exported agent, next to the engine state

#: keys inside the engine state a trainable adds to ``PeriodEngine.state_dict()``
STATE_TRIAL_ID = "rp_trial_id"
STATE_FULL_VAL_LAST = "rp_full_val_last"
STATE_HISTORY = "rp_history"  #: only in old checkpoints: history now lives beside them

#: driver state of an experiment (``<storage>/<name>/``)
DRIVER_STATE_FILE = "rp_state.json"

#: test hook: "PERIOD:MARKER" kills the first trial worker that starts period PERIOD (once per
#: marker file) so fault-tolerance tests exercise Tune's restore from the last checkpoint
FAULT_ENV = "RAYTUNE_PERIODIC_INJECT_FAULT"


def trial_folder(storage: Any, name: str) -> tuple[Any, str] | None:
    """(filesystem, path) of folder ``name`` in a trial's own folder of Tune's storage (local,
    NFS or S3): files a trial keeps beside, not inside, its checkpoints (history segments, its
    best model). None without a trial context (a trainable used directly, e.g. in tests)."""
    if storage is None:
        return None
    try:
        return storage.storage_filesystem, posixpath.join(storage.trial_fs_path, name)
    except Exception:  # noqa: BLE001 - no trial context
        return None
