"""The core imports and trains with the heavy integrations blocked from import."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = r"""
import sys, importlib.machinery
BLOCKED = ("ray", "mlflow", "nevergrad", "optuna", "gymnasium", "pandas", "matplotlib")
class Block(importlib.machinery.PathFinder):
    # the path finder, blind to the blocked packages: as if they were not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [Block if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
try:
    import ray
    raise SystemExit("blocker failed")
except ModuleNotFoundError:
    pass
import raytune_periodic
import raytune_periodic.regularizers, raytune_periodic.controllers, raytune_periodic.models
import raytune_periodic.data, raytune_periodic.training
from raytune_periodic.training import build_engine
engine = build_engine({"dataset": "iris", "model": {"name": "mlp", "hidden": [8]},
                       "train": {"period_length": 2, "periods": 2, "batch_size": 16}})
print(len(engine.run()), "periods")
loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
assert not loaded, loaded
"""


def test_core_works_with_heavy_dependencies_blocked() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 periods" in out.stdout
