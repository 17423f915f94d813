"""A user's own package, outside this repo: a controller named by import path and a model
registered through an entry point, run through the Python API and through the CLI on a real
local Ray + SQLite MLflow; MLflow shows the values the user's controller set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

USER_NETS = '''
from torch import nn


def build_tiny(input_shape, num_classes, hidden=16):
    """The user's own MLP (flattened input, one hidden layer)."""
    size = 1
    for d in input_shape:
        size *= int(d)
    return nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
'''
USER_CTRL = '''
from raytune_periodic.controllers import Controller


class StepController(Controller):
    """Dropout ``step * (period % 3)`` for every group: a schedule anyone can check."""

    def __init__(self, step=0.1):
        super().__init__()
        self.step = float(step)

    def controlled(self):
        return sorted(self.bounds)

    def decide(self, state):
        return {g: self.step * (state.period % 3) for g in self.bounds}
'''


def write_user_package(root: Path) -> None:
    """``rp_userpkg`` (not installed: shipped to Ray's workers) with an entry point."""
    pkg = root / "rp_userpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_NETS))
    (pkg / "ctrl.py").write_text(textwrap.dedent(USER_CTRL))
    info = root / "rp_userpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rp_userpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[raytune_periodic.models]\ntiny_user = rp_userpkg.nets:build_tiny\n"
    )


def user_config(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "seeds": [0],
        "budget": {"periods": 4, "trials": 1},
        "base": {
            "dataset": {"name": "digits", "train_size": 150},
            "model": {"name": "tiny_user", "hidden": 8},  # the entry point
            "regularizers": [{"kind": "dropout", "where": "head"}],
            "train": {"period_length": 2, "batch_size": 32, "val_batches": 1},
        },
        "methods": {
            "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
            "USER": {"controller": {"type": "rp_userpkg.ctrl:StepController", "step": 0.2}},
        },
        "tune": {"checkpoint_every": 2, "verbose": 0, "num_cpus": 2},
    }


def dropout_schedule(uri: str, name: str) -> dict[str, list[float]]:
    """``value/dropout`` per step of each method's trial run, read back from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`rp.kind` = 'trial'")
    out = {}
    for run in runs:
        hist = client.get_metric_history(run.info.run_id, "value/dropout")
        out[run.data.tags["rp.method"]] = [m.value for m in sorted(hist, key=lambda m: m.step)]
    return out


EXPECTED = {"BL": [0.0] * 4, "USER": [0.0, 0.2, 0.4, 0.0]}


def assert_schedule(found: dict[str, list[float]]) -> None:
    assert sorted(found) == sorted(EXPECTED)
    for method, values in EXPECTED.items():
        assert found[method] == pytest.approx(values), method


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "userland"
    write_user_package(root)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(tmp_path)  # the user works outside this repo
    from raytune_periodic.models import MODELS

    MODELS._entry_points = None  # re-read entry points with the user's folder on the path
    yield root
    MODELS.remove("tiny_user")  # a loaded entry point stays registered: forget it
    MODELS._entry_points = None


def test_user_plugins_through_the_python_api(user_dir: Path, tmp_path: Path) -> None:
    import ray

    import raytune_periodic as rp

    uri = f"sqlite:///{tmp_path / 'api.db'}"
    cfg = rp.load(user_config("plugins-api"))
    assert cfg.plugins["models"] == {"tiny_user": "rp_userpkg.nets:build_tiny"}
    assert cfg.plugins["controllers"]["rp_userpkg.ctrl:StepController"]
    try:
        outcome = rp.run(cfg, mlflow_uri=uri, storage_path=tmp_path / "ray")
    finally:
        ray.shutdown()
    assert outcome.ok
    assert_schedule(dropout_schedule(uri, "plugins-api"))
    table = rp.compare("plugins-api", tracking_uri=uri)
    assert sorted(table["method"]) == ["BL", "USER"]


def test_user_plugins_through_the_cli(user_dir: Path, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(user_config("plugins-cli")))
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "PYTHONPATH": str(user_dir), "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "raytune_periodic.cli"]
    run = subprocess.run(
        [*cmd, "run", str(path), "--storage-path", str(tmp_path / "ray")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[USER s0] trials 1/1 done, 0 running, 0 errored | periods 4/4" in run.stdout
    assert "Current best trial" not in run.stdout  # Tune's per-line config dump is off
    assert_schedule(dropout_schedule(uri, "plugins-cli"))
    # compare reads the same store through $MLFLOW_TRACKING_URI, no --mlflow-uri anywhere
    cmp = subprocess.run(
        [*cmd, "compare", "plugins-cli", "--format", "csv"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "USER" in cmp.stdout and "BL" in cmp.stdout


def test_a_controller_defined_in_main_is_refused_at_validate() -> None:
    from raytune_periodic.config import validate_config
    from raytune_periodic.controllers import CONTROLLERS, ConstantController
    from raytune_periodic.errors import ConfigError

    cls = type("MainController", (ConstantController,), {"__module__": "__main__"})
    CONTROLLERS.add("mine", cls)
    try:
        cfg = user_config("main-ctrl")
        cfg["base"]["model"] = {"name": "mlp"}
        cfg["methods"]["USER"] = {"controller": {"type": "mine"}}
        with pytest.raises(ConfigError, match="Ray workers cannot import it") as err:
            validate_config(cfg)
        assert "\n" not in str(err.value)
    finally:
        CONTROLLERS.remove("mine")


def test_a_controller_registered_by_hand_reaches_the_trials(user_dir: Path) -> None:
    """``CONTROLLERS.add`` in the driver: the plan carries its import path to the workers."""
    from rp_userpkg.ctrl import StepController  # type: ignore[import-not-found]

    from raytune_periodic.config import validate_config
    from raytune_periodic.controllers import CONTROLLERS
    from raytune_periodic.registry import install_plugins

    CONTROLLERS.add("step", StepController)
    try:
        cfg = user_config("by-hand")
        cfg["methods"]["USER"]["controller"]["type"] = "step"
        plan = validate_config(cfg)
        assert plan.plugins["controllers"] == {"step": "rp_userpkg.ctrl:StepController"}
        CONTROLLERS.remove("step")  # a fresh worker: the name is unknown until installed
        install_plugins(plan.plugins)
        assert CONTROLLERS.get("step") is StepController
    finally:
        CONTROLLERS.remove("step")
