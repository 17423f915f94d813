"""A training process keeps freed memory for the next step (glibc malloc thresholds,
``training/process.py``): after the first periods, a period of the MLP the Tune overhead bench
trains no longer page-faults its working set in again; the user's own malloc settings and the
opt-out are respected. Each case runs in a fresh interpreter (malloc state is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and "glibc" in os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, TypeError):
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")

PROBE = """
import json, resource
from raytune_periodic.training import build_engine
from raytune_periodic.training.process import keep_freed_memory, prepare_process
prepare_process(1)
spec = {"dataset": {"name": "digits", "train_size": 500}, "model": {"name": "mlp",
        "hidden": [512, 512]}, "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"batch_size": 64, "period_length": 40, "periods": 6, "eval_every_epochs": 0}}
engine = build_engine(spec)
engine.run(2)  # warm-up: the working set is faulted in once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
engine.run(4)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": keep_freed_memory(), "faults_per_period": faults / 4}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RP_MALLOC"))}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_training_process_reuses_freed_memory() -> None:
    tuned = _probe()
    # glibc's defaults gave 10,000-100,000 minor faults per period of this MLP in a fresh
    # process (docs/BENCHMARKS.md); kept memory: a few stray pages
    assert tuned["applied"] and tuned["faults_per_period"] < 1000, tuned


@pytest.mark.parametrize("env", [{"RP_MALLOC": "default"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_opt_out_and_the_users_own_settings_leave_malloc_alone(env: dict[str, str]) -> None:
    assert _probe(**env)["applied"] is False
